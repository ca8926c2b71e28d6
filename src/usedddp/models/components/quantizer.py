"""Residual vector quantization of a branch's latent (DAC's RVQ, Kumar et al. 2023)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # dac's layers use the deprecated weight_norm
    from dac.nn.quantize import ResidualVectorQuantize


class ResidualQuantizer(nn.Module):
    """DAC's residual vector quantizer (factorised codes, Kumar et al., "High-Fidelity Audio
    Compression with Improved RVQGAN", NeurIPS 2023), or identity when `n_codebooks` is 0 so that
    the cost of quantization can be measured."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int, quantizer_dropout: float = 0.0):
        super().__init__()
        self.n_codebooks = n_codebooks
        self.rvq = (
            ResidualVectorQuantize(input_dim, n_codebooks, codebook_size, codebook_dim, quantizer_dropout)
            if n_codebooks > 0
            else None
        )

    @property
    def codebook_size(self) -> int:
        return int(self.rvq.codebook_size) if self.rvq is not None else 0

    def forward(self, z: torch.Tensor, per_item: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, N) -> (z_q (B, D, N), codes (B, Q, N), commitment loss, codebook loss); the
        losses are () batch means, or (B,) per item with `per_item` (whose mean over any subset
        of the batch is that subset's own loss: batches can be stacked and split)."""
        if self.rvq is None:
            zero = z.new_zeros((z.shape[0],) if per_item else ())
            return z, z.new_zeros((z.shape[0], 0, z.shape[-1]), dtype=torch.long), zero, zero
        # The codebook lookups are distance computations that bf16 makes ambiguous.
        with torch.autocast(z.device.type, enabled=False):
            if per_item:
                return self._per_item(z.float())
            z_q, codes, _, commitment, codebook = self.rvq(z.float())
        return z_q, codes, commitment, codebook

    def _per_item(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """DAC's ResidualVectorQuantize.forward without quantizer dropout, keeping each item's
        loss: dropout draws per batch position, so a stacked batch would drop other items."""
        rvq = self.rvq
        if rvq.training and rvq.quantizer_dropout > 0:
            raise ValueError("per-item RVQ losses need quantizer_dropout=0 in training")
        z_q, residual, commitment, codebook, codes = 0, z, 0, 0, []
        for quantizer in rvq.quantizers:
            z_q_i, commitment_i, codebook_i, indices_i, _ = quantizer(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            commitment, codebook = commitment + commitment_i, codebook + codebook_i
            codes.append(indices_i)
        return z_q, torch.stack(codes, dim=1), commitment, codebook

    def load_release(self, state: dict[str, torch.Tensor]) -> int:
        """Copy the first codebooks of a DAC release quantizer (keys without the `quantizer.`
        prefix) where shapes allow; returns how many."""
        if self.rvq is None or not state:
            return 0
        loaded = 0
        for i, quantizer in enumerate(self.rvq.quantizers):
            prefix = f"quantizers.{i}."
            part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            own = quantizer.state_dict()
            if not part or set(part) != set(own) or any(own[k].shape != part[k].shape for k in own):
                break
            quantizer.load_state_dict(part)
            loaded += 1
        return loaded
