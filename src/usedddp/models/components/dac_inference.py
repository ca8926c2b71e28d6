"""DAC's encoder and decoder rebuilt for fast inference on a CPU, with the same function.

Training keeps DAC's own modules (weight norm, Conv1d, ConvTranspose1d: its release checkpoints
load into them). For inference, `InferenceDAC(codec)` copies a DACCodec and changes how it
computes, not what:

- weight norm folded into plain weights (w = g v / |v|, computed once, not on every call);
- every Conv1d as a Conv2d over (B, C, 1, T) in channels-last memory: oneDNN's channels-last
  kernels run the codec's narrow 1-D convolutions (96-384 channels at 2-16 kHz) several times
  faster than its Conv1d path, in float32 and far more in bfloat16 (AMX);
- every ConvTranspose1d(kernel 2s, stride s) as its polyphase form, one Conv2d of kernel 2 with
  s x the output channels, then interleaved (the transposed convolution is oneDNN's slowest
  layer of the decoder);
- Snake (Ziyin et al., "Neural Networks Fail to Learn Periodic Functions and How to Fix It",
  2020) in place: one allocation instead of four;
- optionally bfloat16 weights and activations (`dtype`), with float32 at the boundaries.

In float32 the outputs equal the training modules' to float rounding (tests/test_fast_inference.py);
bfloat16 is an approximation, measured against the training graph in scripts/benchmark_engines.py.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from usedddp.models.components.codec import Codec
from usedddp.models.components.dac_codec import DACCodec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from dac.nn.layers import Snake1d


class Snake2d(nn.Module):
    """x + sin^2(alpha x) / alpha over (B, C, 1, T), as DAC's snake (same 1e-9 guard)."""

    def __init__(self, snake: Snake1d):
        super().__init__()
        alpha = snake.alpha.detach()  # (1, C, 1)
        self.register_buffer("alpha", rearrange(alpha, "1 c 1 -> 1 c 1 1").clone())
        self.register_buffer("inv_alpha", rearrange((alpha + 1e-9).reciprocal(), "1 c 1 -> 1 c 1 1").clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.alpha * x).square_().mul_(self.inv_alpha).add_(x)


def conv2d_from_1d(conv: nn.Conv1d) -> nn.Conv2d:
    """The Conv2d over (B, C, 1, T) that computes `conv` (zero padding, any stride/dilation/groups)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"cannot convert {conv}: only numeric zero padding is supported")
    out = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), stride=(1, conv.stride[0]),
                    padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0]), groups=conv.groups, bias=conv.bias is not None)
    out.weight.data = rearrange(conv.weight.detach(), "o i k -> o i 1 k").clone()
    if conv.bias is not None:
        out.bias.data = conv.bias.detach().clone()
    return out


class PolyphaseConvTranspose(nn.Module):
    """ConvTranspose1d(kernel 2s, stride s, padding p) over (B, C, 1, T) as a convolution.

    y[i] = sum_j x[j] W[k] with i + p = j s + k. Writing i + p = m s + r (0 <= r < s), only
    j = m (k = r) and j = m - 1 (k = s + r) contribute, so phase r of output frame m is a
    kernel-2 convolution of x padded by one frame each side: u[m, r] = x[m-1] W[s+r] + x[m] W[r].
    The s phases are s x the output channels of one Conv2d, interleaved back in time.
    """

    def __init__(self, conv: nn.ConvTranspose1d):
        super().__init__()
        s, k, p = conv.stride[0], conv.kernel_size[0], conv.padding[0]
        if k != 2 * s or conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0:
            raise ValueError(f"cannot convert {conv}: the polyphase form here needs kernel = 2 x stride, no groups, dilation or output padding")
        self.stride, self.padding = s, p
        weight = conv.weight.detach()  # (in, out, 2s)
        taps = torch.stack([weight[..., s:], weight[..., :s]], dim=-1)  # (in, out, s, 2): tap 0 -> x[m-1], tap 1 -> x[m]
        self.conv = nn.Conv2d(conv.in_channels, s * conv.out_channels, (1, 2), padding=(0, 1), bias=conv.bias is not None)
        self.conv.weight.data = rearrange(taps, "i o r t -> (r o) i 1 t").contiguous()
        if conv.bias is not None:
            self.conv.bias.data = conv.bias.detach().repeat(s)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, 1, N) -> (B, C_out, 1, N s + s - 2p), ConvTranspose1d's length."""
        n = x.shape[-1]
        u = rearrange(self.conv(x), "b (r c) 1 m -> b c 1 (m r)", r=self.stride)
        return u[..., self.padding : self.padding + n * self.stride + self.stride - 2 * self.padding].contiguous(memory_format=torch.channels_last)


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Fold every weight norm of `module` (torch.nn.utils.weight_norm hooks, as DAC builds its
    layers, or parametrizations.weight_norm) into a plain weight, in place."""
    from torch.nn.utils import parametrize

    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
        for hook in list(sub._forward_pre_hooks.values()):
            if type(hook).__name__ == "WeightNorm":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    torch.nn.utils.remove_weight_norm(sub, hook.name)
    return module


def _copy(module: nn.Module) -> nn.Module:
    """A deep copy of a module with torch.nn.utils.weight_norm hooks, which deepcopy refuses after
    a forward pass (the hook leaves the computed weight as a non-leaf attribute). The source's
    attribute is replaced by its detached value; its next forward recomputes it anyway."""
    for sub in module.modules():
        for hook in sub._forward_pre_hooks.values():
            if type(hook).__name__ == "WeightNorm":
                with torch.no_grad():
                    setattr(sub, hook.name, hook.compute_weight(sub))
    return copy.deepcopy(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, Snake1d):
        return Snake2d(module)
    if isinstance(module, nn.ConvTranspose1d):
        return PolyphaseConvTranspose(module)
    if isinstance(module, nn.Conv1d):
        return conv2d_from_1d(module)
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module


class InferenceDAC(Codec):
    """A DACCodec's inference graph (module docstring); the same contract (codec.Codec), no
    gradients.

    encoder_dtype / decoder_dtype: float32 (the training modules' output to rounding) or
    bfloat16. The encoder's output is quantized by the branches, and a code decision near a
    boundary flips under bfloat16 rounding, so a bfloat16 encoder is a separate choice from a
    bfloat16 decoder, whose error stays smooth.

    The whole input runs as one tensor: splitting it into tiles with a receptive field of
    context (tried: 1-5 s tiles, 16 frames of context) was no faster on 2 cores once the
    convolutions are channels-last; the enhance path's chunks already bound memory.
    """

    def __init__(self, codec: DACCodec, encoder_dtype: torch.dtype = torch.float32, decoder_dtype: torch.dtype = torch.float32):
        if not isinstance(codec, DACCodec):
            raise TypeError(f"InferenceDAC rebuilds a DACCodec, not a {type(codec).__name__}")
        super().__init__(codec.sample_rate, codec.hop_length, codec.latent_dim)
        self.encoder_dtype, self.decoder_dtype = encoder_dtype, decoder_dtype
        device = next(codec.parameters()).device
        source = fold_weight_norm(_copy(codec))
        self.encoder = _convert(source.encoder).to(device, encoder_dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.decoder = _convert(source.decoder).to(device, decoder_dtype, memory_format=torch.channels_last).eval().requires_grad_(False)

    def n_frames(self, num_samples: int) -> int:
        return DACCodec.n_frames(self, num_samples)  # the same frame grid

    @staticmethod
    def _run(net: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, C, T) float32 -> net over (B, C, 1, T) channels-last in dtype -> (B, C', T') float32."""
        x = rearrange(x, "b c t -> b c 1 t").to(dtype).contiguous(memory_format=torch.channels_last)
        return rearrange(net(x).float(), "b c 1 t -> b c t").contiguous()

    def encode(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) -> z (B, D, N) float32, N = n_frames(T) (DACCodec.encode's padding)."""
        pad = self.n_frames(wav.shape[-1]) * self.hop_length - wav.shape[-1]
        return self._run(self.encoder, F.pad(wav, (0, pad)), self.encoder_dtype)

    def decode(self, z: Tensor, length: int, reference: Tensor | None = None) -> Tensor:
        """z (B, D, N) -> wav (B, 1, length) float32; `reference` is unused (DACCodec.decode)."""
        wav = self._run(self.decoder, z, self.decoder_dtype)
        if wav.shape[-1] < length:
            raise RuntimeError(f"decoder returned {wav.shape[-1]} samples for {length} requested; encode() pads too little")
        return wav[..., :length]
