"""The time-frequency domains of the learned-prior methods, each with the one normalisation rule
used both to train its prior and to enhance: UDiffSE's compressed STFT (CompressedSTFT,
normalise_spec) and the VAE-NMF methods' power spectrogram (PowerSTFT, normalise_power, below).

CompressedSTFT's defaults are those of UDiffSE's reference code (Nortier, Sadeghi, Serizel, "Unsupervised speech
enhancement with diffusion-based generative models", ICASSP 2024, after SGMSE+: Richter, Welker,
Lemercier, Lay, Gerkmann, "Speech enhancement and dereverberation with diffusion-based generative
models", IEEE/ACM TASLP 2023): n_fft 510 so that F = 256 bins (a power of two for the U-Net),
hop 128, a periodic Hann window, centred frames, and the amplitude compression
c -> beta |c|^alpha e^{j angle c} with alpha = 0.5, beta = 0.15.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class CompressedSTFT(nn.Module):
    """wav (B, 1, T) or (B, T) <-> compressed complex spectrogram (B, F, N), F = n_fft // 2 + 1.

    A module only so that `.to(device)` moves the window; the window is a non-persistent buffer,
    rebuilt from the arguments, so no checkpoint carries it. `spec` and `wav` also move it to
    their input's device themselves."""

    window: Tensor

    def __init__(self, n_fft: int = 510, hop_length: int = 128, window: str = "hann", alpha: float = 0.5,
                 beta: float = 0.15):
        super().__init__()
        if window != "hann":
            raise ValueError(f"window={window!r}: only 'hann' (periodic) is implemented")
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha={alpha}, beta={beta}: both must be positive for the compression to be invertible")
        self.n_fft, self.hop_length, self.alpha, self.beta = int(n_fft), int(hop_length), float(alpha), float(beta)
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def n_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT of `num_samples` samples."""
        return 1 + int(num_samples) // self.hop_length

    def _window(self, like: Tensor) -> Tensor:
        dtype = like.real.dtype if like.is_complex() else like.dtype
        return self.window.to(device=like.device, dtype=dtype)

    def compress(self, spec: Tensor) -> Tensor:
        """Complex (...,) -> beta |c|^alpha e^{j angle c}, same shape."""
        return torch.polar(self.beta * spec.abs().pow(self.alpha), spec.angle())

    def decompress(self, spec: Tensor) -> Tensor:
        """Inverse of `compress`: (|c| / beta)^(1 / alpha) e^{j angle c}."""
        return torch.polar((spec.abs() / self.beta).pow(1.0 / self.alpha), spec.angle())

    def spec(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) or (B, T) real -> compressed complex spectrogram (B, F, N)."""
        if wav.dim() == 3:
            wav = rearrange(wav, "b 1 t -> b t")
        if wav.dim() != 2:
            raise ValueError(f"expected a waveform (B, 1, T) or (B, T), got shape {tuple(wav.shape)}")
        stft = torch.stft(wav, self.n_fft, self.hop_length, window=self._window(wav), center=True, return_complex=True)
        return self.compress(stft)

    def wav(self, spec: Tensor, length: int) -> Tensor:
        """Compressed complex spectrogram (B, F, N) -> wav (B, 1, length)."""
        if spec.dim() != 3 or spec.shape[1] != self.n_freq:
            raise ValueError(f"expected a spectrogram (B, {self.n_freq}, N), got shape {tuple(spec.shape)}")
        wav = torch.istft(self.decompress(spec), self.n_fft, self.hop_length, window=self._window(spec), center=True,
                          length=int(length))
        return rearrange(wav, "b t -> b 1 t")

    @staticmethod
    def pad_frames(spec: Tensor, multiple: int) -> tuple[Tensor, int]:
        """(..., F, N) -> ((..., F, N'), N): zeros appended on the frame axis up to N', the next
        multiple of `multiple` (the score U-Net halves the frame axis once per level)."""
        frames = spec.shape[-1]
        pad = -frames % int(multiple)
        return (F.pad(spec, (0, pad)) if pad else spec), frames

    @staticmethod
    def crop_frames(spec: Tensor, frames: int) -> Tensor:
        """Undo `pad_frames`: (..., F, N') -> (..., F, frames)."""
        return spec[..., :frames]


def normalise_spec(spec: Tensor) -> tuple[Tensor, Tensor]:
    """spec (..., F, N) complex -> (spec / scale, scale), scale (..., 1, 1) real = the item's
    largest magnitude (at least 1e-8), so that max |spec / scale| = 1 per item.

    Multiply the (processed) spectrogram by `scale` before `CompressedSTFT.wav` to return to the
    input's level."""
    # One rule for training the prior (on clean speech) and for enhancement (on the mixture); the
    # reference code uses two, the clean waveform's peak at training and the compressed noisy
    # spectrogram's largest magnitude at test, so the prior is asked about a scale it never saw.
    # The spectrogram's maximum is the one computable at test; since the compression is
    # homogeneous, dividing by it is still a plain gain on the waveform, scale^(-1/alpha).
    scale = spec.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return spec / scale, scale


def sine_window(n: int) -> Tensor:
    """sin(pi (k + 1/2) / n), k = 0..n-1: its square overlap-adds to a constant at hop n/4."""
    return torch.sin(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n).float()


class PowerSTFT(nn.Module):
    """wav (B, 1, T) or (B, T) <-> complex STFT (B, F, N) and its power |X|^2, for the VAE-prior
    methods: a 64 ms sine window (1024 samples at 16 kHz), hop 256, F = 513, centred frames, as
    in Leglaive, Girin, Horaud, "A variance modeling framework based on variational autoencoders
    for speech enhancement" (MLSP 2018) and Bie et al., "Unsupervised speech enhancement using
    dynamical variational autoencoders" (IEEE/ACM TASLP 2022)."""

    window: Tensor

    def __init__(self, n_fft: int = 1024, hop_length: int = 256):
        super().__init__()
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)
        self.register_buffer("window", sine_window(self.n_fft), persistent=False)

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    def spec(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) or (B, T) -> complex (B, F, N)."""
        if wav.dim() == 3:
            wav = rearrange(wav, "b 1 t -> b t")
        if wav.dim() != 2:
            raise ValueError(f"expected a waveform (B, 1, T) or (B, T), got shape {tuple(wav.shape)}")
        window = self.window.to(device=wav.device, dtype=wav.dtype)
        return torch.stft(wav, self.n_fft, self.hop_length, window=window, center=True, return_complex=True)

    def wav(self, spec: Tensor, length: int) -> Tensor:
        """complex (B, F, N) -> wav (B, 1, length)."""
        window = self.window.to(device=spec.device, dtype=spec.real.dtype)
        wav = torch.istft(spec, self.n_fft, self.hop_length, window=window, center=True, length=int(length))
        return rearrange(wav, "b t -> b 1 t")


def normalise_power(power: Tensor, floor: float = 1e-10) -> tuple[Tensor, Tensor]:
    """power (..., F, N) -> (power / scale clamped at `floor`, scale (..., 1, 1)), scale = the
    item's mean power: one level rule for training a VAE prior and for enhancing with it (the
    per-frame gain of the EM absorbs what remains of the level)."""
    scale = power.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-20)
    return (power / scale).clamp_min(floor), scale
