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
