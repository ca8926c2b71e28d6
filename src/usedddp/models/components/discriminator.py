"""Multi-resolution complex-STFT discriminator ensembles (Klement, "Speech Enhancement using
Neural Audio Codecs", §2: an ensemble of STFT discriminators with different window sizes, as in
neural audio codecs)."""

from __future__ import annotations

import warnings

import torch
from einops import rearrange
from torch import Tensor, nn

from usedddp.outputs import DiscriminatorOutput

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from dac.model.discriminator import BANDS, MRD, WNConv2d


class ComplexSTFTDiscriminator(MRD):
    """DAC's multi-band complex-spectrogram discriminator, with the STFT taken in float32 and
    the width configurable.

    DAC computes the STFT through audiotools' AudioSignal, which fails on bf16 inputs under
    mixed precision. DAC fixes 32 channels; fewer make a CPU run affordable (the layer layout
    below is DAC's).
    """

    def __init__(self, window_length: int, hop_factor: float = 0.25, sample_rate: int = 16000, bands: list = BANDS, channels: int = 32):
        super().__init__(window_length, hop_factor=hop_factor, sample_rate=sample_rate, bands=bands)
        if channels != 32:
            ch = channels
            self.band_convs = nn.ModuleList(
                [
                    nn.ModuleList(
                        [
                            WNConv2d(2, ch, (3, 9), (1, 1), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                            WNConv2d(ch, ch, (3, 3), (1, 1), padding=(1, 1)),
                        ]
                    )
                    for _ in self.bands
                ]
            )
            self.conv_post = WNConv2d(ch, 1, (3, 3), (1, 1), padding=(1, 1), act=False)

    def spectrogram(self, x: Tensor) -> list[Tensor]:
        hop = self.stft_params.hop_length
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            # match_stride padding as in audiotools: frames = T / hop.
            pad = (self.window_length - hop) // 2
            x = nn.functional.pad(x, (pad, pad + (-x.shape[-1]) % hop), mode="reflect")
            spec = torch.stft(
                rearrange(x, "b 1 t -> b t"),
                n_fft=self.window_length,
                hop_length=hop,
                window=torch.hann_window(self.window_length, device=x.device),
                center=True,
                return_complex=True,
            )
            spec = spec[..., 2:-2] if spec.shape[-1] > 4 else spec
        spec = rearrange(torch.view_as_real(spec), "b f t c -> b c t f")
        return [spec[..., lo:hi] for lo, hi in self.bands]


class STFTDiscriminatorEnsemble(nn.Module):
    """One ensemble: a complex-STFT discriminator per window length.

    Inputs are DC-removed and peak-normalised (as in DAC's Discriminator.preprocess), so the
    ensemble judges spectral shape, not level: prior corpora are recorded at arbitrary gains.
    """

    def __init__(
        self,
        fft_sizes: tuple[int, ...] = (2048, 1024, 512),
        sample_rate: int = 16000,
        hop_factor: float = 0.25,
        bands: tuple = tuple(BANDS),
        channels: int = 32,
    ):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.discriminators = nn.ModuleList(
                [ComplexSTFTDiscriminator(n, hop_factor, sample_rate, [tuple(b) for b in bands], channels) for n in fft_sizes]
            )

    def forward(self, wav: Tensor) -> DiscriminatorOutput:
        """wav (B, 1, T) -> DiscriminatorOutput."""
        wav = wav - wav.mean(dim=-1, keepdim=True)
        wav = 0.8 * wav / (wav.abs().amax(dim=-1, keepdim=True) + 1e-9)
        maps = [d(wav) for d in self.discriminators]
        return DiscriminatorOutput(logits=[m[-1] for m in maps], features=[m[:-1] for m in maps])
