"""The USE-DDP generator: codec encoder -> clean and noise RoFormer branches -> shared decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from usedddp.models.components.branch import BranchOutput, RoFormerBranch
from usedddp.models.components.codec import Codec
from usedddp.models.components.mixture import least_squares_scales

STREAMS = ("clean", "noise")


@dataclass
class GeneratorOutput:
    clean: Tensor  # (B, 1, T) estimated clean speech, s_hat
    noise: Tensor | None  # (B, 1, T) estimated noise, n_hat (None when the noise branch is off)
    branches: dict[str, BranchOutput]
    alpha: Tensor | None = None  # (B, 1, 1)
    beta: Tensor | None = None  # (B, 1, 1)
    reconstruction: Tensor | None = None  # (B, 1, T) alpha * s_hat + beta * n_hat (eq. 2)


class Generator(nn.Module):
    def __init__(self, codec: Codec, clean: RoFormerBranch, noise: RoFormerBranch):
        super().__init__()
        self.codec = codec
        self.branches = nn.ModuleDict({"clean": clean, "noise": noise})

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def forward(self, wav: Tensor, streams: tuple[str, ...] = STREAMS, per_item_losses: bool = False) -> GeneratorOutput:
        """wav (B, 1, T) -> GeneratorOutput; `streams=("clean",)` skips the noise branch (stage 1);
        `per_item_losses`: the branches' VQ losses (B,) per item (see GeneratorOutput.split)."""
        length = wav.shape[-1]
        z = self.codec.encode(wav)
        branches = {name: self.branches[name](z, per_item_losses=per_item_losses) for name in streams}
        # One decoder pass over both streams stacked on the batch axis: the decoder is shared.
        # The input rides along, stacked the same way, for codecs whose synthesis filters it
        # (STFTCodec masks its spectrum); DACCodec ignores it.
        z_q = torch.cat([out.z_q for out in branches.values()])
        reference = wav.repeat(len(branches), 1, 1)
        decoded = dict(zip(branches, self.codec.decode(z_q, length, reference=reference).chunk(len(branches))))
        out = GeneratorOutput(clean=decoded["clean"], noise=decoded.get("noise"), branches=branches)
        if out.noise is not None:
            out.alpha, out.beta = least_squares_scales(wav, out.clean, out.noise)
            out.reconstruction = out.alpha * out.clean + out.beta * out.noise
        return out


def split_output(out: GeneratorOutput, sizes: list[int]) -> list[GeneratorOutput]:
    """A GeneratorOutput over signals stacked on the batch axis (run with per_item_losses) ->
    one per stacked part, each with its own mean VQ losses, as if run alone."""
    def parts(x):
        return [None] * len(sizes) if x is None else x.split(sizes)

    branches = {name: [BranchOutput(z_q, codes, commitment.mean(), codebook.mean()) for z_q, codes, commitment, codebook
                       in zip(parts(b.z_q), parts(b.codes), parts(b.commitment), parts(b.codebook))]
                for name, b in out.branches.items()}
    fields = zip(parts(out.clean), parts(out.noise), parts(out.alpha), parts(out.beta), parts(out.reconstruction))
    return [GeneratorOutput(clean=c, noise=n, alpha=a, beta=b, reconstruction=r, branches={k: v[i] for k, v in branches.items()})
            for i, (c, n, a, b, r) in enumerate(fields)]


def build_generator(codec: Codec, branch: Callable[[int], nn.Module]) -> Generator:
    """The generator of a model config: `branch` (the config's partial RoFormerBranch) builds the
    clean and the noise branch over the codec's latent. The LightningModule and the inference
    path (usedddp.inference) both build it here."""
    return Generator(codec, clean=branch(codec.latent_dim), noise=branch(codec.latent_dim))
