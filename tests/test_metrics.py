"""Known-answer checks of the validation metrics on real demo-corpus speech."""

import numpy as np
import pytest
import torch

from usedddp.assets import DEMO_ROOT
from usedddp.audio import find_audio_files, load_audio
from usedddp.metrics import dnsmos, estoi, pesq_wb, si_sdr


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    return load_audio(find_audio_files(DEMO_ROOT / "clean_testset")[0], 16000)[0, : 3 * 16000]


def test_si_sdr_known_answers(speech):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(speech.shape, generator=g)
    noise = noise - noise.mean()
    clean = speech - speech.mean()
    # Noise orthogonalised to the speech, scaled to 10 dB below it: SI-SDR is exactly 10 dB.
    noise = noise - (noise @ clean) / (clean @ clean) * clean
    noise = noise * (clean.norm() / noise.norm()) * 10 ** (-10 / 20)
    assert si_sdr(clean + noise, clean) == pytest.approx(10.0, abs=1e-3)
    assert si_sdr(0.3 * clean, clean) > 100  # scale-invariant: a scaled copy is perfect
    assert si_sdr(-clean + 0 * noise, clean) > 100


def test_intelligibility_and_quality_order(speech):
    noisy = speech + 0.05 * torch.randn(speech.shape, generator=torch.Generator().manual_seed(1))
    assert estoi(speech, speech, 16000) == pytest.approx(1.0, abs=1e-6)
    assert estoi(noisy, speech, 16000) < 0.95
    assert pesq_wb(speech, speech) > 4.5  # the P.862.2 ceiling is 4.64
    assert pesq_wb(noisy, speech) < pesq_wb(speech, speech)


def test_dnsmos_prefers_clean_speech(speech):
    noisy = speech + 0.1 * torch.randn(speech.shape, generator=torch.Generator().manual_seed(2))
    clean_scores, noisy_scores = dnsmos(speech), dnsmos(noisy)
    assert set(clean_scores) == {"sig", "bak", "ovrl", "p808"}
    assert all(1.0 <= v <= 5.0 for v in clean_scores.values())
    assert noisy_scores["bak"] < clean_scores["bak"] - 0.5  # white noise at this level is clearly audible
    assert np.isnan(dnsmos(torch.zeros(16000))["ovrl"])
