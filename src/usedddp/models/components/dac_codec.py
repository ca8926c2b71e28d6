"""The DAC adapter: DAC's encoder and decoder behind the codec contract (codec.Codec), and the
loading of DAC release weights into a built generator (codec and branch codebooks).

dac is imported here for its codec; the discriminators, the quantizer and the reconstruction
losses take their own parts of it.
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

from usedddp.models.components.codec import Codec
from usedddp.models.components.snake import use_input_saving_snake


class DACCodec(Codec):
    """DAC's encoder and decoder (Kumar et al., "High-Fidelity Audio Compression with Improved
    RVQGAN", NeurIPS 2023) with DAC's argument names, from random weights (DAC's own
    initialisation); load_dac_weights starts them from a release file."""

    def __init__(
        self,
        sample_rate: int = 16000,
        encoder_dim: int = 64,
        encoder_rates: tuple[int, ...] = (2, 4, 5, 8),
        latent_dim: int | None = None,
        decoder_dim: int = 1536,
        decoder_rates: tuple[int, ...] = (8, 5, 4, 2),
    ):
        encoder_rates, decoder_rates = list(encoder_rates), list(decoder_rates)
        if latent_dim is None:
            latent_dim = encoder_dim * 2 ** len(encoder_rates)
        super().__init__(sample_rate, int(np.prod(encoder_rates)), latent_dim)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.encoder = Encoder(encoder_dim, encoder_rates, latent_dim)
            self.decoder = Decoder(latent_dim, decoder_dim, decoder_rates)
        self.apply(_init_weights)
        # The same function and parameters; its backward keeps one tensor per activation, not four.
        use_input_saving_snake(self)

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


def load_dac_weights(generator: nn.Module, path: str | Path) -> dict[str, int]:
    """Start a built generator from a DAC release file: its codec's encoder and decoder (every
    tensor, shapes checked) and, where shapes allow, the first codebooks of each branch's RVQ.
    Returns what was loaded. Refuses a codec that is not DACCodec, another sample rate, or
    other shapes, naming the file."""
    codec = generator.codec
    if not isinstance(codec, DACCodec):
        raise ValueError(f"{path}: DAC release weights fit model/codec=dac16k, not the {type(codec).__name__} of this "
                         "model (drop model.codec.weights, or choose model/codec=dac16k)")
    state, kwargs = load_dac_release(path)
    if "sample_rate" in kwargs and int(kwargs["sample_rate"]) != codec.sample_rate:
        raise ValueError(f"{path}: DAC weights are for {int(kwargs['sample_rate'])} Hz, the model runs at {codec.sample_rate} Hz")
    own = {k: v for k, v in state.items() if k.split(".")[0] in ("encoder", "decoder")}
    current = codec.state_dict()
    mismatched = [k for k, v in own.items() if k in current and current[k].shape != v.shape]
    if mismatched:
        raise ValueError(
            f"{path}: DAC weights do not fit this codec configuration ({len(mismatched)} tensors differ in shape, "
            f"e.g. {mismatched[0]}: {tuple(own[mismatched[0]].shape)} vs {tuple(current[mismatched[0]].shape)}); "
            f"the file's kwargs are {kwargs}"
        )
    result = codec.load_state_dict(own, strict=False)
    if result.missing_keys:
        raise ValueError(f"{path}: DAC weights lack {len(result.missing_keys)} codec tensors, e.g. {result.missing_keys[0]}")
    loaded = {"codec": len(own)}
    log.info("codec: loaded DAC encoder and decoder (%d tensors) from %s", len(own), path)
    quantizer = {k.removeprefix("quantizer."): v for k, v in state.items() if k.startswith("quantizer.")}
    for name, branch in generator.branches.items():
        loaded[f"{name}_codebooks"] = branch.quantizer.load_release(quantizer)
        if loaded[f"{name}_codebooks"]:
            log.info("%s branch: %d codebooks copied from the DAC release quantizer", name, loaded[f"{name}_codebooks"])
    return loaded
