"""The parts shared by the unsupervised methods: compressed STFT, normalisation, IS-NMF, Wiener
estimates, and the raw narrow-band PESQ column."""

import math

import numpy as np
import pytest
import torch

from usedddp.assets import DEMO_ROOT
from usedddp.audio import find_audio_files, load_audio
from usedddp.methods.dsp import CompressedSTFT, normalise_spec
from usedddp.methods.nmf import is_divergence, is_nmf_update, l1_normalise, nmf_init
from usedddp.methods.wiener import posterior_mean, wiener_estimate, wiener_gain
from usedddp.metrics import pesq_nb, pesq_nb_raw, pesq_nb_to_raw


def _complex(*shape, seed=0, dtype=torch.complex64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Compressed STFT


def test_compressed_stft_round_trip():
    stft = CompressedSTFT()
    length = int(1.3 * 16000)
    wav = torch.randn(2, 1, length, generator=torch.Generator().manual_seed(0))
    spec = stft.spec(wav)
    assert spec.shape == (2, 256, stft.n_frames(length)) and spec.is_complex()
    assert torch.equal(stft.spec(wav[:, 0]), spec)  # (B, T) is accepted as (B, 1, T)
    back = stft.wav(spec, length)
    assert back.shape == wav.shape
    torch.testing.assert_close(back, wav, atol=1e-5, rtol=0)


def test_compression_is_the_reference_power_law_and_inverts():
    stft = CompressedSTFT()
    c = _complex(3, 256, 40, seed=1)
    compressed = stft.compress(c)
    torch.testing.assert_close(compressed.abs(), 0.15 * c.abs().sqrt())
    torch.testing.assert_close(compressed.angle(), c.angle())
    torch.testing.assert_close(stft.decompress(compressed), c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stft.compress(stft.decompress(c)), c, rtol=1e-5, atol=1e-6)
    assert torch.hann_window(510, periodic=True).equal(stft.window)
    assert "window" not in stft.state_dict()  # rebuilt from the arguments, never checkpointed


def test_pad_frames_to_a_multiple_and_crop_back():
    stft = CompressedSTFT()
    spec = _complex(2, 256, 163, seed=2)
    padded, frames = stft.pad_frames(spec, 64)
    assert padded.shape == (2, 256, 192) and frames == 163 and padded.dtype == spec.dtype
    assert torch.equal(padded[..., :frames], spec) and not padded[..., frames:].abs().any()
    assert torch.equal(stft.crop_frames(padded, frames), spec)
    same, frames = stft.pad_frames(padded, 64)
    assert same is padded and frames == 192


def test_normalise_spec_per_item():
    spec = _complex(3, 256, 50, seed=3) * torch.tensor([0.01, 1.0, 300.0])[:, None, None]
    normed, scale = normalise_spec(spec)
    assert scale.shape == (3, 1, 1) and not scale.is_complex()
    torch.testing.assert_close(normed.abs().amax(dim=(-2, -1)), torch.ones(3))
    torch.testing.assert_close(scale[:, 0, 0], spec.abs().amax(dim=(-2, -1)))
    torch.testing.assert_close(normed * scale, spec)
    zeros, scale = normalise_spec(torch.zeros(1, 4, 4, dtype=torch.complex64))
    assert scale.item() == pytest.approx(1e-8) and not zeros.abs().any()


# --------------------------------------------------------------------------------------------
# NMF


def _random_power(seed, F=40, T=60, dtype=torch.float64):
    # Power of a complex Gaussian with a low-rank-ish variance, as |X - S|^2 is in UDiffSE.
    g = torch.Generator().manual_seed(seed)
    variance = torch.rand(F, 3, generator=g, dtype=dtype) @ torch.rand(3, T, generator=g, dtype=dtype) + 0.1
    return variance * torch.randn(F, T, dtype=torch.complex128, generator=g).abs().square().to(dtype)


def _divergences(V, exponent, seed, iterations=50, rank=4):
    W, H = nmf_init(*V.shape, rank, generator=torch.Generator().manual_seed(seed), dtype=V.dtype)
    out = [is_divergence(V, W @ H).item()]
    for _ in range(iterations):
        W, H = is_nmf_update(V, W, H, exponent=exponent)
        out.append(is_divergence(V, W @ H).item())
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_is_update_with_exponent_half_never_increases_the_divergence(seed):
    # A theorem (Févotte & Idier 2011): the exponent-1/2 step minimises a majoriser.
    d = _divergences(_random_power(seed), 0.5, seed)
    assert np.all(d[1:] <= d[:-1] * (1 + 1e-6)), np.diff(d).max()
    assert d[-1] < 0.8 * d[0]  # and it does descend (the floor here is ~0.58 per bin, noise power)


@pytest.mark.parametrize("seed", range(3))
def test_is_update_with_exponent_one_decreases_on_these_seeds(seed):
    # Empirical, not a theorem: the plain IS multiplicative update (the reference codes') is not
    # proven monotone; this checks it on fixed draws, in float32 as UDiffSE runs it.
    d = _divergences(_random_power(seed, dtype=torch.float32), 1.0, seed)
    assert np.all(d[1:] <= d[:-1] * (1 + 1e-6)), np.diff(d).max()
    assert d[-1] < _divergences(_random_power(seed, dtype=torch.float32), 0.5, seed)[-1]  # and is faster


def test_is_divergence_batched_and_zero_at_equality():
    V = _random_power(0)
    V_hat = V * 1.5
    batched = is_divergence(torch.stack([V, V]), torch.stack([V_hat, V]))
    assert batched.shape == (2,)
    assert batched[1].item() == pytest.approx(0.0, abs=1e-9)
    assert batched[0].item() == pytest.approx(V.numel() * (1 / 1.5 - math.log(1 / 1.5) - 1))


def test_l1_normalise_keeps_the_product():
    W, H = nmf_init(30, 50, 4, generator=torch.Generator().manual_seed(0), batch_shape=(2,), dtype=torch.float64)
    W = W * torch.tensor([1e-3, 1.0, 7.0, 1e3], dtype=torch.float64)
    Wn, Hn = l1_normalise(W, H)
    torch.testing.assert_close(Wn @ Hn, W @ H, rtol=1e-6, atol=0)
    torch.testing.assert_close(Wn.sum(dim=-2), torch.ones(2, 4, dtype=torch.float64))
    V = _random_power(1, F=30, T=50)
    W, H = is_nmf_update(V, W, H)
    torch.testing.assert_close(W.sum(dim=-2), torch.ones(2, 4, dtype=torch.float64))


def test_nmf_init_shapes_floor_and_seed():
    W, H = nmf_init(256, 100, 4, generator=torch.Generator().manual_seed(0), floor=0.5, batch_shape=(3,))
    assert W.shape == (3, 256, 4) and H.shape == (3, 4, 100)
    assert W.min() >= 0.5 and H.min() >= 0.5 and W.max() < 1
    W2, H2 = nmf_init(256, 100, 4, generator=torch.Generator().manual_seed(0), floor=0.5, batch_shape=(3,))
    assert torch.equal(W, W2) and torch.equal(H, H2)


# --------------------------------------------------------------------------------------------
# Wiener


def test_oracle_variances_give_the_oracle_wiener_filter():
    for dtype in (torch.complex64, torch.complex128):
        S, N = _complex(4, 256, 100, seed=5, dtype=dtype), 3 * _complex(4, 256, 100, seed=6, dtype=dtype)
        X = S + N
        speech_var, noise_var = S.abs().square(), N.abs().square()
        speech, noise = wiener_estimate(X, speech_var, noise_var)
        oracle = speech_var / (speech_var + noise_var) * X
        torch.testing.assert_close(speech, oracle)
        torch.testing.assert_close(noise, noise_var / (speech_var + noise_var) * X)
        assert torch.equal(speech + noise, X)  # bit for bit, not to a tolerance


def test_wiener_edge_cases_and_broadcast():
    X = _complex(2, 8, 5, seed=7)
    zero = torch.zeros(8, 5)
    speech, noise = wiener_estimate(X, zero, zero)  # no variance anywhere: everything is noise
    assert not speech.abs().any() and torch.equal(noise, X)
    assert torch.equal(wiener_gain(torch.ones(8, 5), zero), torch.ones(8, 5))
    speech, noise = wiener_estimate(X, torch.ones(8, 5), torch.ones(8, 5))
    assert speech.shape == X.shape and torch.equal(speech, noise) and torch.equal(speech + noise, X)


def test_posterior_mean():
    samples = _complex(4, 3, 8, 5, seed=8)
    torch.testing.assert_close(posterior_mean(samples), samples.sum(0) / 4)
    assert posterior_mean(samples, dim=1).shape == (4, 8, 5)


# --------------------------------------------------------------------------------------------
# Raw narrow-band PESQ


def _p862_1(raw):
    return 0.999 + 4.0 / (1.0 + math.exp(-1.4945 * raw + 4.6607))


def test_pesq_nb_to_raw_inverts_p862_1():
    for raw in np.linspace(-0.5, 4.5, 41):
        assert pesq_nb_to_raw(_p862_1(raw)) == pytest.approx(raw, abs=1e-9)
    assert math.isnan(pesq_nb_to_raw(float("nan")))
    for outside in (0.999, 0.5, 4.999, 5.0):
        with pytest.raises(ValueError, match="P.862.1"):
            pesq_nb_to_raw(outside)


def test_pesq_nb_raw_on_a_demo_pair():
    clean_file = find_audio_files(DEMO_ROOT / "clean_testset")[0]
    clean = load_audio(clean_file, 16000)[0]
    noisy = load_audio(DEMO_ROOT / "noisy_testset" / clean_file.name, 16000)[0]
    for estimate in (noisy, clean):
        mos, raw = pesq_nb(estimate, clean), pesq_nb_raw(estimate, clean)
        assert _p862_1(raw) == pytest.approx(mos, abs=1e-5)  # the C code maps in float32
        # P.862.1 crosses the identity at raw ~3.37: raw is the higher score below, the lower above.
        assert (raw > mos) == (raw < 3.369), (raw, mos)
    assert pesq_nb_raw(clean, clean) == pytest.approx(4.5, abs=1e-5)  # the P.862 ceiling
    assert pesq_nb_raw(noisy, clean) > pesq_nb(noisy, clean)  # this pair is low quality (raw ~1.7)
    assert math.isnan(pesq_nb_raw(torch.zeros_like(clean), clean))
    with pytest.raises(ValueError, match="8 or 16 kHz"):
        pesq_nb_raw(clean, clean, 44100)
