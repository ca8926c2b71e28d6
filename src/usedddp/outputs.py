"""Typed outputs passed between the networks and the losses (neither side imports the other)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class DiscriminatorOutput:
    logits: list[Tensor]  # one (B, 1, frames, bins) score map per resolution
    features: list[list[Tensor]]  # per resolution, the hidden feature maps (B, C, frames, bins)

    def chunk(self, n: int) -> list[DiscriminatorOutput]:
        """Split an output over a batch of n stacked signals into n outputs."""
        logits = [x.chunk(n) for x in self.logits]
        features = [[x.chunk(n) for x in maps] for maps in self.features]
        return [
            DiscriminatorOutput(logits=[x[i] for x in logits], features=[[x[i] for x in maps] for maps in features])
            for i in range(n)
        ]


@dataclass
class StackedDiscriminatorOutput:
    """E discriminator ensembles of one layout over one batch of N signals each, stacked (the
    grouped-convolution path of usedddp.models.components.discriminator.JointEnsembles).

    A resolution's feature maps are held zero-padded to the widest band, every layer side by side
    on the last axis; `column_weights` says which columns are real. Equal, column for column, to E
    DiscriminatorOutput's (see `ensemble`).
    """

    logits: list[Tensor]  # per resolution (N, E, frames, bins)
    features: list[Tensor]  # per resolution (N, E, bands, C, frames, columns): each layer's map, zero-padded
    column_weights: list[Tensor]  # per resolution (bands, columns): 1/width of its map on a real column, 0 on padding
    widths: list[list[list[int]]]  # per resolution, band and layer: the map's real width

    def chunk(self, n: int) -> list[StackedDiscriminatorOutput]:
        """Split an output over n signals stacked on the batch axis into n outputs."""
        logits = [x.chunk(n) for x in self.logits]
        features = [x.chunk(n) for x in self.features]
        return [
            StackedDiscriminatorOutput([x[i] for x in logits], [x[i] for x in features], self.column_weights, self.widths)
            for i in range(n)
        ]

    def ensemble(self, e: int) -> DiscriminatorOutput:
        """Ensemble e's output in DiscriminatorOutput's layout (band-major maps, as DAC's MRD)."""
        features = []
        for maps, widths in zip(self.features, self.widths):
            offsets = [0]
            for width in _padded_widths(widths):
                offsets.append(offsets[-1] + width)
            features.append([maps[:, e, b, :, :, offsets[layer]:offsets[layer] + width]
                             for b, band in enumerate(widths) for layer, width in enumerate(band)])
        return DiscriminatorOutput(logits=[x[:, e : e + 1] for x in self.logits], features=features)


def _padded_widths(widths: list[list[int]]) -> list[int]:
    """Per layer, the widest band's width (the padded width every band's map is held at)."""
    return [max(band[layer] for band in widths) for layer in range(len(widths[0]))]
