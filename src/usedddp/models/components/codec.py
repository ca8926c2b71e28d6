"""The codec contract: what the branches, the decoder pass and the enhance path may assume.

A codec maps a waveform (B, 1, T) to a latent sequence z (B, D, N) and back (the shape of
audiocraft's CompressionModel, without the quantizer: here each branch quantizes its own
stream). DACCodec (dac_codec.py, DAC's convolutional encoder/decoder) and STFTCodec
(stft_codec.py, a fixed STFT with a learned mask) implement it; nothing downstream depends on
which. Pretrained weights are loaded by functions applied after construction
(dac_codec.load_dac_weights), never by a constructor argument.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from torch import Tensor, nn


class Codec(nn.Module, metaclass=ABCMeta):
    """sample_rate (Hz), hop_length (samples per latent frame) and latent_dim (D) are fixed at
    construction."""

    def __init__(self, sample_rate: int, hop_length: int, latent_dim: int):
        super().__init__()
        self.sample_rate, self.hop_length, self.latent_dim = int(sample_rate), int(hop_length), int(latent_dim)

    @abstractmethod
    def n_frames(self, num_samples: int) -> int:
        """N, the number of latent frames `encode` returns for num_samples samples."""

    @abstractmethod
    def encode(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) -> z (B, latent_dim, n_frames(T))."""

    @abstractmethod
    def decode(self, z: Tensor, length: int, reference: Tensor | None = None) -> Tensor:
        """z (B, latent_dim, N) -> wav (B, 1, length). `reference` (B, 1, T) is the input
        waveform, for codecs whose synthesis filters it (STFTCodec masks its spectrum); a
        synthesising codec ignores it."""


def __getattr__(name: str):
    # Run configs written before the DAC adapter moved to dac_codec.py name
    # usedddp.models.components.codec.DACCodec; they still load.
    if name in ("DACCodec", "load_dac_release"):
        from usedddp.models.components import dac_codec

        return getattr(dac_codec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
