"""Invariants of the fixed-transform codec (model/codec=stft): exact inversion, exact lengths,
bounded masks, the initial x/2 split, float32 spectra under bf16 autocast, and the interface
the generator relies on."""

import warnings

import pytest
import torch

from conftest import SMALL_MODEL, compose_train
from hydra.utils import instantiate
from usedddp.data.datasets import VALIDATION_LEVEL_DB, level_gain
from usedddp.models.build import build_module
from usedddp.models.components.dac_codec import DACCodec
from usedddp.models.components.stft_codec import STFTCodec


def make_codec(**kwargs):
    torch.manual_seed(0)
    return STFTCodec(**{"n_fft": 512, "hop_length": 128, "latent_dim": 64, **kwargs}).eval()


def speech_level(length, batch=2, seed=0):
    wav = torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))
    return wav * level_gain(wav, VALIDATION_LEVEL_DB)  # the level validation and enhance use


@pytest.mark.parametrize("window", ["hann", "sqrt_hann"])
@pytest.mark.parametrize("length", [1, 2, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1000, 4321, 16000])
def test_identity_mask_reconstructs_the_input(window, length):
    codec = make_codec(window=window)
    wav = speech_level(length, seed=length)
    spec = codec.stft(wav)
    assert spec.shape == (2, 257, codec.n_frames(length))
    out = codec.apply_mask(torch.ones_like(spec), spec, length)  # the synthesis decode() runs
    assert out.shape == wav.shape
    torch.testing.assert_close(out, wav, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mask", ["gate", "complex"])
@pytest.mark.parametrize("length", [1, 100, 128, 3200, 4321, 16000])
def test_encode_decode_lengths_and_bound(length, mask):
    codec = make_codec(mask=mask)
    wav = speech_level(length)
    with torch.no_grad():
        z = codec.encode(wav)
        assert z.shape == (2, codec.latent_dim, codec.n_frames(length))
        out = codec.decode(3.0 * torch.randn_like(z), length, reference=wav)  # any latent
        mask = codec.mask(100 * torch.randn_like(z), codec.stft(wav))
    assert out.shape == wav.shape and torch.isfinite(out).all()
    assert mask.abs().max() <= codec.mask_bound


@pytest.mark.parametrize("mask", ["gate", "complex"])
def test_initial_streams_are_half_the_input(mask):
    # Bias at the initial mask 0.5, weights ~0: whatever the latent, both streams start at x/2,
    # so clean + noise = x and the least-squares scales start at 1.
    codec = make_codec(mask=mask)
    wav = speech_level(8000)
    with torch.no_grad():
        out = codec.decode(codec.encode(wav), wav.shape[-1], reference=wav)
    assert (out - 0.5 * wav).pow(2).mean() < 1e-3 * wav.pow(2).mean()


def test_gate_is_a_level_independent_gain_in_its_bound():
    codec = make_codec(mask="gate", mask_bound=1.0)
    wav = speech_level(4000)
    z = 5.0 * torch.randn(2, codec.latent_dim, codec.n_frames(4000), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        spec = codec.stft(wav)
        mask = codec.mask(z, spec)
        louder = codec.mask(z, codec.stft(10.0 * wav))
    assert not mask.is_complex() and 0 <= mask.min() and mask.max() <= 1.0
    # The gate reads the bin's level relative to the item's mean: a 20 dB louder input, the same gain.
    torch.testing.assert_close(louder, mask, atol=1e-4, rtol=1e-4)


def test_decode_needs_the_reference():
    codec = make_codec()
    z = codec.encode(speech_level(1000))
    with pytest.raises(ValueError, match="reference"):
        codec.decode(z, 1000)
    with pytest.raises(ValueError, match="batch"):
        codec.decode(z, 1000, reference=speech_level(1000, batch=1))


def test_stft_codec_meets_the_codec_contract():
    # The contract the branches and the enhance path rely on (codec.Codec): hop, frames, latent.
    from usedddp.models.components.codec import Codec

    codec = STFTCodec(n_fft=256, hop_length=64, latent_dim=32)
    assert isinstance(codec, Codec) and (codec.sample_rate, codec.hop_length, codec.latent_dim) == (16000, 64, 32)
    wav = torch.randn(2, 1, 1000)
    z = codec.encode(wav)
    assert z.shape == (2, 32, codec.n_frames(1000))
    assert codec.decode(z, 1000, reference=wav).shape == wav.shape


def test_spectra_are_float32_under_bf16_autocast():
    codec = make_codec().train()
    wav = speech_level(4000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert codec.stft(wav).dtype == torch.complex64
        z = codec.encode(wav)
        out = codec.decode(z, 4000, reference=wav)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert codec.analysis.weight.grad is not None and codec.synthesis.weight.grad is not None


def test_dac_codec_ignores_the_reference():
    torch.manual_seed(0)
    codec = DACCodec(encoder_dim=4, latent_dim=16, decoder_dim=16).eval()
    wav = speech_level(3200)
    with torch.no_grad():
        z = codec.encode(wav)
        torch.testing.assert_close(codec.decode(z, 3200, reference=wav), codec.decode(z, 3200))


def test_config_builds_the_module_with_the_stft_codec():
    cfg = compose_train(["model=tiny", "model/codec=stft", *SMALL_MODEL]).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_module(cfg)
    assert isinstance(module.generator.codec, STFTCodec)
    wav = speech_level(4000)
    with torch.no_grad():
        out = module.generator(wav)
        alone = module.generator(wav, streams=("clean",))
    assert out.clean.shape == out.noise.shape == out.reconstruction.shape == wav.shape
    # Stacked decoding (each stream masks its own copy of the input) does not mix the streams.
    torch.testing.assert_close(alone.clean, out.clean, atol=1e-5, rtol=1e-5)
    # At initialisation the split is x/2 + x/2 and the reconstruction is the input.
    # (Not exactly: the mask head's small random weights see the quantized latents.)
    error = (out.reconstruction - wav).pow(2).sum() / wav.pow(2).sum()
    assert error < 1e-3, float(error)


def test_bin_floor_gate_ignores_a_fixed_spectral_tilt():
    """gate_level=bin_floor gates each bin on its level over its own floor (an a posteriori SNR):
    a fixed per-bin gain on the input (a tilt, a microphone's response) leaves the mask as it
    was, where item_mean's mask changes (its quiet high bins look like noise)."""
    torch.manual_seed(0)
    spec = 10.0 * torch.randn(2, 257, 40, dtype=torch.cfloat)  # far above the gate's 1e-10 power floor
    tilt = torch.logspace(0, -2, 257).reshape(1, 257, 1)
    masks = {}
    for level in ("bin_floor", "item_mean"):
        codec = STFTCodec(gate_level=level)
        with torch.no_grad():
            codec.synthesis.weight.normal_(std=0.5)  # a trained-looking map: slopes far from 0
        z = torch.randn(2, codec.latent_dim, 40)
        masks[level] = (codec.mask(z, spec), codec.mask(z, spec * tilt))
    assert torch.allclose(*masks["bin_floor"], atol=1e-5)
    assert not torch.allclose(*masks["item_mean"], atol=1e-2)
    with pytest.raises(ValueError, match="gate_level"):
        STFTCodec(gate_level="loudness")


def test_min_gain_is_the_gate_floor_and_keeps_the_initial_split():
    """min_gain bounds the gate below (the spectral floor of Wiener-type gains): whatever the
    latent, no bin is attenuated by more than -20 log10(min_gain) dB, the gate still reaches
    (almost) the bound, and both streams still start at mask_init * x."""
    codec = make_codec(mask="gate", min_gain=0.1)
    wav = speech_level(4000)
    with torch.no_grad():
        spec = codec.stft(wav)
        masks = [codec.mask(s * torch.randn(2, codec.latent_dim, codec.n_frames(4000),
                                            generator=torch.Generator().manual_seed(s)), spec) for s in (1, 100)]
        start = codec.decode(codec.encode(wav), wav.shape[-1], reference=wav)
    assert min(m.min() for m in masks) >= 0.1 - 1e-6 and max(m.max() for m in masks) <= 1.0
    assert masks[1].min() < 0.1 + 1e-3 and masks[1].max() > 1.0 - 1e-3  # the whole range is reachable
    assert (start - 0.5 * wav).pow(2).mean() < 1e-3 * wav.pow(2).mean()
    without = make_codec(mask="gate")
    with torch.no_grad():
        assert without.mask(100 * torch.randn(2, 64, codec.n_frames(4000)), spec).min() < 1e-3
    with pytest.raises(ValueError, match="min_gain"):
        make_codec(mask="gate", min_gain=0.5)  # not below mask_init
    with pytest.raises(ValueError, match="min_gain"):
        make_codec(mask="complex", min_gain=0.1)
