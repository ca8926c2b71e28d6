"""One stream of the generator: a RoFormer over the codec latent, then residual VQ (Klement,
"Speech Enhancement using Neural Audio Codecs", §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn

from usedddp.models.components.quantizer import ResidualQuantizer


@dataclass
class BranchOutput:
    z_q: Tensor  # (B, D, N) quantized latent for the shared decoder
    codes: Tensor  # (B, Q, N)
    commitment: Tensor  # (), or (B,) per item
    codebook: Tensor  # (), or (B,) per item


class RotarySelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rotary: RotaryEmbedding, dropout: float):
        super().__init__()
        self.heads, self.rotary, self.dropout = heads, rotary, dropout
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, h: Tensor) -> Tensor:
        q, k, v = rearrange(self.to_qkv(h), "b n (three heads d) -> three b heads n d", three=3, heads=self.heads)
        q, k = self.rotary.rotate_queries_or_keys(q), self.rotary.rotate_queries_or_keys(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b heads n d -> b n (heads d)"))


class RoFormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int, rotary: RotaryEmbedding, dropout: float):
        super().__init__()
        self.attn_norm, self.ff_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = RotarySelfAttention(dim, heads, rotary, dropout)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.attn(self.attn_norm(h))
        return h + self.ff(self.ff_norm(h))


class RoFormerBranch(nn.Module):
    """z (B, D, N) -> RoFormer (Su et al. 2024) -> RVQ -> z_q (B, D, N).

    The transformer output is added to its input and the output projection starts at zero, so
    at initialisation the branch passes the encoder latent through: with pretrained DAC weights
    both streams start as DAC's reconstruction of the input rather than as noise.
    """

    def __init__(
        self,
        latent_dim: int,
        dim: int = 512,
        depth: int = 4,
        heads: int = 8,
        ff_mult: int = 4,
        dropout: float = 0.0,
        n_codebooks: int = 12,
        codebook_size: int = 1024,
        codebook_dim: int = 8,
        quantizer_dropout: float = 0.0,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"branch dim {dim} is not divisible by heads {heads}")
        rotary = RotaryEmbedding(dim=(dim // heads) // 2)
        self.proj_in = nn.Linear(latent_dim, dim)
        self.blocks = nn.ModuleList([RoFormerBlock(dim, heads, ff_mult, rotary, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, latent_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.quantizer = ResidualQuantizer(latent_dim, n_codebooks, codebook_size, codebook_dim, quantizer_dropout)

    def forward(self, z: Tensor, per_item_losses: bool = False) -> BranchOutput:
        h = self.proj_in(rearrange(z, "b d n -> b n d"))
        for block in self.blocks:
            h = block(h)
        z = z + rearrange(self.proj_out(self.norm(h)), "b n d -> b d n")
        z_q, codes, commitment, codebook = self.quantizer(z, per_item=per_item_losses)
        return BranchOutput(z_q=z_q, codes=codes, commitment=commitment, codebook=codebook)
