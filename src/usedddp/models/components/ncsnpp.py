"""An NCSN++-style 2-D U-Net score backbone on complex spectrograms, in plain PyTorch.

After NCSN++ of Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, "Score-Based Generative
Modeling through Stochastic Differential Equations" (ICLR 2021), as used on complex STFTs by
Richter et al., "Speech Enhancement and Dereverberation with Diffusion-Based Generative Models"
(IEEE/ACM TASLP 2023) and by UDiffSE (Nortier, Sadeghi, Serizel, ICASSP 2024).
Not the `sgmse` package's: sgmse 0.1.2 pins numpy<2 and compiles CUDA ops when imported.

x (B, F, T) complex -> real and imaginary parts as 2 channels -> U-Net -> 2 channels -> (B, F, T)
complex, the raw network output (the caller turns it into a score). What it keeps of NCSN++:
Gaussian Fourier features of log t and an MLP for the time embedding; BigGAN-style residual
blocks (GroupNorm, SiLU, the time embedding added after the first conv, 1/sqrt(2) skip
rescaling) that also do the resampling; [1, 3, 3, 1] FIR down/up-sampling by 2 along F and T;
U-Net skips after every block; single-head self-attention at the chosen levels and in the
middle; near-zero init of every residual branch's last layer and of the output conv. What it
drops: the input/output image pyramids ("input_skip"/"output_skip"), which carry few parameters.

F and T must be divisible by 2**(len(channel_mults) - 1); the caller pads T. With the
reference STFT (n_fft 510) F = 256.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Named presets (constructor kwargs). Parameter counts measured (torch 2.11; the Fourier
# frequencies are a buffer, not counted):
#
#   name  channels  channel_mults          res_blocks  attention_levels  groups  parameters
#   tiny  16        (1, 2, 2, 2)           1           ()                8          432,658
#   6m    40        (1, 1, 2, 2, 2, 2, 2)  2           (4,)              10       6,358,322
#   12m   56        (1, 1, 2, 2, 2, 2, 2)  2           (4,)              14      12,444,434
#   28m   84        (1, 1, 2, 2, 2, 2, 2)  2           (4,)              21      27,966,458
#   65m   128       (1, 1, 2, 2, 2, 2, 2)  2           (4,)              32      64,884,482
#
# 65m is the reference NCSN++ layout (7 levels, attention at the 16-bin level for F = 256);
# the smaller GPU sizes are the same layout narrowed to the parameter counts of fast_UdiffSE's
# 28/12/6 M models (Ayilo, Sadeghi, Serizel, Alameda-Pineda, "Diffusion-based Unsupervised
# Audio-visual Speech Enhancement", ICASSP 2025), whose own layouts may differ; GroupNorm has
# min(channels // 4, 32) groups, as in the reference. tiny has 4 levels rather than 3 so the
# middle self-attention runs on (F/8) x (T/8) positions: at F = T = 256 and 3 levels its
# 4096 x 4096 attention took most of the CPU forward time. Needs T divisible by 64 (GPU
# sizes) or 8 (tiny).
SIZES: dict[str, dict] = {
    "tiny": dict(channels=16, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(), groups=8),
    "6m": dict(channels=40, channel_mults=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attention_levels=(4,), groups=10),
    "12m": dict(channels=56, channel_mults=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attention_levels=(4,), groups=14),
    "28m": dict(channels=84, channel_mults=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attention_levels=(4,), groups=21),
    "65m": dict(channels=128, channel_mults=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attention_levels=(4,), groups=32),
}

# Scale of the last layer of every residual branch and of the output conv, relative to the
# default init: blocks start close to the identity and the score close to 0 (so the DSM loss
# starts near E|z|^2 = 1), as with NCSN++'s init_scale = 0; not exactly 0, so that every
# parameter gets a gradient from the first step and none underflows in half precision.
_NEAR_ZERO = 1e-2

# The [1, 3, 3, 1] binomial resampling filter of NCSN++ (Zhang, "Making Convolutional Networks
# Shift-Invariant Again", ICML 2019): anti-aliased halving and doubling.
_FIR = (1.0, 3.0, 3.0, 1.0)


def _groups(requested: int, channels: int) -> int:
    """GroupNorm group count for `channels`: the largest divisor of both (always >= 1)."""
    return math.gcd(max(int(requested), 1), channels)


def _shrink_(layer: nn.Conv2d | nn.Linear, scale: float = _NEAR_ZERO) -> None:
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.zero_()


class _Resample(nn.Module):
    """FIR down- or up-sampling by 2 in both axes, per channel: (B, C, H, W) -> (B, C, H/2, W/2)
    or (B, C, 2H, 2W)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")
        self.mode = mode
        k = torch.tensor(_FIR)
        k = torch.outer(k, k)
        self.register_buffer("kernel", k / k.sum(), persistent=False)  # (4, 4), DC gain 1

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        k = self.kernel.to(x.dtype).expand(c, 1, 4, 4)
        if self.mode == "down":
            return F.conv2d(F.pad(x, (1, 1, 1, 1)), k, stride=2, groups=c)
        # Zero insertion then filtering, as one transposed conv; x4 restores unit DC gain.
        return F.conv_transpose2d(x, 4 * k, stride=2, padding=1, groups=c)


class _ResBlock(nn.Module):
    """Residual block (B, C_in, H, W), temb (B, D) -> (B, C_out, H', W'), H' = H, H/2 or 2H."""

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int, groups: int, dropout: float, resample: str | None = None
    ) -> None:
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(groups, in_ch), in_ch, eps=1e-6)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm1 = nn.GroupNorm(_groups(groups, out_ch), out_ch, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        _shrink_(self.conv1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.resample = _Resample(resample) if resample is not None else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = F.silu(self.norm0(x))
        h, x = self.resample(h), self.resample(x)
        h = self.conv0(h) + rearrange(self.temb(F.silu(temb)), "b c -> b c 1 1")
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return (self.skip(x) + h) / math.sqrt(2.0)


class _AttnBlock(nn.Module):
    """Single-head self-attention over all F x T positions, (B, C, H, W) -> same."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(groups, ch), ch, eps=1e-6)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        _shrink_(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> n b 1 (h w) c", n=3)
        a = F.scaled_dot_product_attention(q, k, v)
        a = rearrange(a, "b 1 (h w) c -> b c h w", h=h, w=w)
        return (x + self.proj(a)) / math.sqrt(2.0)


class _FourierTime(nn.Module):
    """Gaussian Fourier features of log t (Song et al. 2021): (B,) -> (B, 2 n).

    The frequencies are drawn once and kept fixed (a buffer, saved with the weights).
    log t spreads the short early times, where the score changes fastest, over the features.
    """

    def __init__(self, n: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(n) * scale)

    def forward(self, t: Tensor) -> Tensor:
        # t is in (0, 1]; the floor only keeps an accidental t = 0 from producing NaNs.
        arg = 2 * math.pi * torch.log(t.clamp_min(1e-6))[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class NCSNpp(nn.Module):
    """NCSN++-style U-Net: forward(x (B, F, T) complex, t (B,)) -> (B, F, T) complex.

    channels: base width; level i has width channels * channel_mults[i], and there are
    len(channel_mults) levels (len - 1 halvings of F and T). num_res_blocks residual blocks per
    level on the way down (num_res_blocks + 1 on the way up, one per skip). attention_levels:
    indices into channel_mults where self-attention follows the blocks (the middle, at the
    coarsest level, always has one). groups: GroupNorm groups, lowered per layer to the
    largest divisor of the width (gcd) when it does not divide it.
    """

    def __init__(
        self,
        channels: int = 16,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        dropout: float = 0.0,
        fourier_scale: float = 16.0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        attention_levels = tuple(int(a) for a in attention_levels)
        if channels < 1 or not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"need channels >= 1 and positive channel_mults, got {channels}, {channel_mults}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        bad = [a for a in attention_levels if not 0 <= a < len(channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} are not indices into channel_mults {channel_mults}")
        self.levels = len(channel_mults)
        self.divisor = 2 ** (self.levels - 1)
        temb_dim = 4 * channels

        self.time = _FourierTime(channels, fourier_scale)
        self.time_mlp = nn.Sequential(nn.Linear(2 * channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))

        def block(i: int, o: int, resample: str | None = None) -> _ResBlock:
            return _ResBlock(i, o, temb_dim, groups, dropout, resample)

        self.conv_in = nn.Conv2d(2, channels, 3, padding=1)
        skip_ch = [channels]
        ch = channels
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            blocks, attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(ch, channels * mult))
                ch = channels * mult
                if level in attention_levels:
                    attn.append(_AttnBlock(ch, groups))
                skip_ch.append(ch)
            self.down_blocks.append(blocks)
            self.down_attn.append(attn)
            if level < self.levels - 1:
                self.downsample.append(block(ch, ch, "down"))
                skip_ch.append(ch)

        self.mid = nn.ModuleList([block(ch, ch), _AttnBlock(ch, groups), block(ch, ch)])

        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(self.levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skip_ch.pop(), channels * channel_mults[level]))
                ch = channels * channel_mults[level]
            self.up_blocks.append(blocks)
            self.up_attn.append(_AttnBlock(ch, groups) if level in attention_levels else nn.Identity())
            if level > 0:
                self.upsample.append(block(ch, ch, "up"))
        assert not skip_ch

        self.norm_out = nn.GroupNorm(_groups(groups, ch), ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2, 3, padding=1)
        _shrink_(self.conv_out)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, F, T) complex, t (B,) in (0, 1] -> (B, F, T) complex."""
        if not x.is_complex() or x.ndim != 3:
            raise ValueError(f"x must be complex (B, F, T), got {x.dtype} of shape {tuple(x.shape)}")
        n_freq, n_frames = x.shape[-2:]
        if n_freq % self.divisor or n_frames % self.divisor:
            raise ValueError(
                f"NCSNpp with {self.levels} levels needs F and T divisible by {self.divisor}; "
                f"got x of shape (B, F, T) = {tuple(x.shape)} (pad T, or use fewer levels)"
            )
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")

        temb = self.time_mlp(self.time(t.to(self.conv_in.weight.dtype)))
        h = self.conv_in(rearrange(torch.view_as_real(x), "b f t c -> b c f t").to(self.conv_in.weight.dtype))

        skips = [h]
        for level in range(self.levels):
            attn = self.down_attn[level]
            for i, blk in enumerate(self.down_blocks[level]):
                h = blk(h, temb)
                if len(attn):
                    h = attn[i](h)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h, temb)
                skips.append(h)

        h = self.mid[0](h, temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)

        for j in range(self.levels):
            for blk in self.up_blocks[j]:
                h = blk(torch.cat([h, skips.pop()], dim=1), temb)
            h = self.up_attn[j](h)
            if j < self.levels - 1:
                h = self.upsample[j](h, temb)

        out = self.conv_out(F.silu(self.norm_out(h)))
        out = rearrange(out.float(), "b c f t -> b f t c").contiguous()
        return torch.view_as_complex(out)
