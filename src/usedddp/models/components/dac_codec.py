"""The codec adapter: the one place that imports `dac`.

A codec maps a waveform (B, 1, T) to a latent sequence z (B, D, N) and back. Everything
downstream (branches, quantizers, discriminators) only sees this interface, so another codec
can stand in for DAC's convolutional encoder/decoder (stft_codec.STFTCodec does: `decode` takes
the input waveform as `reference=` for codecs that filter it).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

with warnings.catch_warnings():
    # dac builds its layers with the deprecated torch.nn.utils.weight_norm; its release
    # checkpoints store weight_g/weight_v, so we keep that parametrisation.
    warnings.simplefilter("ignore", FutureWarning)
    from dac.model.dac import Decoder, Encoder
    from dac.nn.quantize import ResidualVectorQuantize


class DACCodec(nn.Module):
    """DAC's encoder and decoder (Kumar et al. 2023) with DAC's argument names.

    `weights` is a DAC release file (a dict with `state_dict` and `metadata.kwargs`); when
    given, the encoder and decoder start from it (seed 000: pretrained DAC improves
    convergence). The quantizer of the release is kept in `release_quantizer_state` so the
    branches can copy it where shapes allow.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        encoder_dim: int = 64,
        encoder_rates: tuple[int, ...] = (2, 4, 5, 8),
        latent_dim: int | None = None,
        decoder_dim: int = 1536,
        decoder_rates: tuple[int, ...] = (8, 5, 4, 2),
        weights: str | None = None,
    ):
        super().__init__()
        encoder_rates, decoder_rates = list(encoder_rates), list(decoder_rates)
        if latent_dim is None:
            latent_dim = encoder_dim * 2 ** len(encoder_rates)
        self.sample_rate = sample_rate
        self.latent_dim = latent_dim
        self.hop_length = int(np.prod(encoder_rates))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.encoder = Encoder(encoder_dim, encoder_rates, latent_dim)
            self.decoder = Decoder(latent_dim, decoder_dim, decoder_rates)
        self.apply(_init_weights)
        self.weights = weights
        self.release_quantizer_state: dict[str, torch.Tensor] = {}
        if weights:
            self.load_release(weights)
        else:
            log.warning("codec: no DAC weights given (model.codec.weights=null): encoder and decoder start from random weights")

    def n_frames(self, num_samples: int) -> int:
        # One frame beyond ceil(T / hop): DAC's decoder returns a few samples fewer than
        # frames * hop (8 for the 16 kHz rates), and that shortfall must fall in padding.
        return math.ceil(num_samples / self.hop_length) + 1

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> z (B, D, N) with N = n_frames(T)."""
        pad = self.n_frames(wav.shape[-1]) * self.hop_length - wav.shape[-1]
        return self.encoder(F.pad(wav, (0, pad)))

    def decode(self, z: torch.Tensor, length: int, reference: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, D, N) -> wav (B, 1, length). `reference` (the input waveform, which a masking
        codec such as STFTCodec filters) is accepted for the common interface and not used: DAC's
        decoder synthesises the waveform from the latent alone."""
        wav = self.decoder(z)
        if wav.shape[-1] < length:
            raise RuntimeError(f"decoder returned {wav.shape[-1]} samples for {length} requested; encode() pads too little")
        return wav[..., :length]

    def load_release(self, path: str | Path) -> None:
        state, kwargs = load_dac_release(path)
        if "sample_rate" in kwargs and int(kwargs["sample_rate"]) != self.sample_rate:
            raise ValueError(f"{path}: DAC weights are for {int(kwargs['sample_rate'])} Hz, the model runs at {self.sample_rate} Hz")
        own = {k: v for k, v in state.items() if k.split(".")[0] in ("encoder", "decoder")}
        mismatched = [k for k, v in own.items() if k in self.state_dict() and self.state_dict()[k].shape != v.shape]
        if mismatched:
            raise ValueError(
                f"{path}: DAC weights do not fit this codec configuration ({len(mismatched)} tensors differ in shape, "
                f"e.g. {mismatched[0]}: {tuple(own[mismatched[0]].shape)} vs {tuple(self.state_dict()[mismatched[0]].shape)}); "
                f"the file's kwargs are {kwargs}"
            )
        result = self.load_state_dict(own, strict=False)
        if result.missing_keys:
            raise ValueError(f"{path}: DAC weights lack {len(result.missing_keys)} codec tensors, e.g. {result.missing_keys[0]}")
        self.release_quantizer_state = {k.removeprefix("quantizer."): v for k, v in state.items() if k.startswith("quantizer.")}
        log.info("codec: loaded DAC encoder and decoder (%d tensors) from %s", len(own), path)


def _init_weights(module: nn.Module) -> None:
    # DAC's own initialisation (dac.model.dac.init_weights).
    if isinstance(module, nn.Conv1d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.constant_(module.bias, 0)


def load_dac_release(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a DAC release file without executing pickled code.

    The release format is `{"state_dict": ..., "metadata": {"kwargs": ...}}`; the metadata may
    hold numpy scalars, which `weights_only` loading refuses unless their reconstructors are
    allow-listed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DAC weights file not found: {path}")
    safe = [np.dtype, type(np.dtype(np.int64)), type(np.dtype(np.float64)), type(np.dtype(np.int32)), type(np.dtype(np.float32))]
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar
    safe.append(scalar)
    try:
        with torch.serialization.safe_globals(safe):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a loadable DAC weights file ({type(error).__name__}: {error})") from error
    if not isinstance(package, dict) or "state_dict" not in package:
        raise ValueError(f"{path}: not in DAC's release format (expected a dict with 'state_dict' and 'metadata')")
    kwargs = dict((package.get("metadata") or {}).get("kwargs") or {})
    return package["state_dict"], kwargs


class ResidualQuantizer(nn.Module):
    """DAC's residual vector quantizer (factorised codes, Kumar et al. 2023), or identity when
    `n_codebooks` is 0 so the cost of quantization can be measured."""

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, codebook_dim: int, quantizer_dropout: float = 0.0):
        super().__init__()
        self.n_codebooks = n_codebooks
        self.rvq = (
            ResidualVectorQuantize(input_dim, n_codebooks, codebook_size, codebook_dim, quantizer_dropout)
            if n_codebooks > 0
            else None
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, D, N) -> (z_q (B, D, N), codes (B, Q, N), commitment loss, codebook loss)."""
        if self.rvq is None:
            zero = z.new_zeros(())
            return z, z.new_zeros((z.shape[0], 0, z.shape[-1]), dtype=torch.long), zero, zero
        # The codebook lookups are distance computations that bf16 makes ambiguous.
        with torch.autocast(z.device.type, enabled=False):
            z_q, codes, _, commitment, codebook = self.rvq(z.float())
        return z_q, codes, commitment, codebook

    def load_release(self, state: dict[str, torch.Tensor]) -> int:
        """Copy the first codebooks of a DAC release quantizer where shapes allow; returns how many."""
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
