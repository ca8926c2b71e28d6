"""Invariants of the reconstruction and adversarial losses."""

import pytest
import torch

from usedddp.losses.adversarial import discriminator_loss, feature_matching_loss, generator_loss
from usedddp.losses.reconstruction import ReconstructionLoss
from usedddp.outputs import DiscriminatorOutput

SR = 16000
T = 4000  # 0.25 s


@pytest.fixture(scope="module")
def loss():
    return ReconstructionLoss(sample_rate=SR, mel_window_lengths=(64, 256), n_mels=(10, 40), stft_window_lengths=(256, 128))


def signals(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / SR
    tone = torch.sin(2 * torch.pi * 440 * t).expand(batch, 1, T)
    return 0.3 * tone + 0.05 * torch.randn(batch, 1, T, generator=g), 0.1 * torch.randn(batch, 1, T, generator=g)


def test_zero_against_itself_and_positive_otherwise(loss):
    x, other = signals()
    same = loss(x, x.clone())
    assert set(same) == {"mel", "stft", "sisdr"}
    assert all(v.shape == () for v in same.values())
    assert same["mel"].abs() < 1e-6 and same["stft"].abs() < 1e-6
    # (SI-SDR of a perfect estimate is -inf: DAC's SISDRLoss has no floor on the residual.)
    diff = loss(other, x)
    assert all(torch.isfinite(v) for v in diff.values())
    assert diff["mel"] > 1e-2 and diff["stft"] > 1e-2
    assert diff["sisdr"] > same["sisdr"]


def test_mel_and_stft_are_level_aware_sisdr_is_not(loss):
    x, noise = signals()
    est = x + noise
    base, louder = loss(est, x), loss(2 * est, x)
    assert louder["mel"] > base["mel"] + 1e-3
    assert louder["stft"] > base["stft"] + 1e-3
    # A pure gain change of an exact estimate is penalised by mel and stft.
    scaled = loss(0.5 * x, x)
    assert scaled["mel"] > 1e-2 and scaled["stft"] > 1e-2
    torch.testing.assert_close(louder["sisdr"], base["sisdr"], atol=1e-3, rtol=0)
    torch.testing.assert_close(loss(-3 * est, x)["sisdr"], base["sisdr"], atol=1e-3, rtol=0)


def test_sisdr_lower_for_closer_estimate(loss):
    x, noise = signals()
    close, far = loss(x + 0.1 * noise, x)["sisdr"], loss(x + noise, x)["sisdr"]
    assert close < far - 5  # 20 dB apart in SNR


def test_gradient_reaches_estimate(loss):
    x, noise = signals()
    est = (x + noise).requires_grad_(True)
    sum(loss(est, x).values()).backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0


# -- adversarial -------------------------------------------------------------------------------


def output(logits, features=None):
    return DiscriminatorOutput(logits=logits, features=features if features is not None else [[] for _ in logits])


def logit_maps(value, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 1, 5, 7), (2, 1, 9, 3)]
    if value is None:
        return [torch.randn(s, generator=g) for s in shapes]
    return [torch.full(s, float(value)) for s in shapes]


def test_discriminator_loss_zero_only_at_optimum():
    assert discriminator_loss(output(logit_maps(1)), output(logit_maps(0))) == 0
    assert discriminator_loss(output(logit_maps(0)), output(logit_maps(0))) > 0
    assert discriminator_loss(output(logit_maps(1)), output(logit_maps(1))) > 0
    assert discriminator_loss(output(logit_maps(None)), output(logit_maps(None, seed=1))) > 0
    # One resolution off is enough.
    real = logit_maps(1)
    real[1] = real[1] + 0.1
    assert discriminator_loss(output(real), output(logit_maps(0))) > 0


def test_generator_loss_zero_when_fakes_scored_real():
    assert generator_loss(output(logit_maps(1))) == 0
    assert generator_loss(output(logit_maps(0))) > 0
    torch.testing.assert_close(generator_loss(output(logit_maps(0))), torch.tensor(2.0))  # two resolutions


def feature_maps(seed=0):
    g = torch.Generator().manual_seed(seed)
    # Two resolutions, each with two layers of (B, C, frames, bins).
    return [[torch.randn(3, 4, 6, 5, generator=g), torch.randn(3, 2, 6, 3, generator=g)] for _ in range(2)]


def clone_maps(maps):
    return [[m.clone() for m in layers] for layers in maps]


def permute_maps(maps, batch_perm=None, frame_perm=None):
    out = []
    for layers in maps:
        new = []
        for m in layers:
            if batch_perm is not None:
                m = m[batch_perm]
            if frame_perm is not None:
                m = m[:, :, frame_perm]
            new.append(m)
        out.append(new)
    return out


def fm(real_maps, fake_maps, paired):
    return feature_matching_loss(output(logit_maps(0), real_maps), output(logit_maps(0), fake_maps), paired=paired)


@pytest.mark.parametrize("paired", [True, False])
def test_feature_matching_zero_for_identical_features(paired):
    maps = feature_maps()
    assert fm(maps, clone_maps(maps), paired) == 0
    assert fm(maps, feature_maps(seed=1), paired) > 0


def test_unpaired_feature_matching_ignores_batch_and_frame_order():
    real, fake = feature_maps(0), feature_maps(1)
    batch_perm, frame_perm = torch.tensor([2, 0, 1]), torch.tensor([5, 3, 1, 0, 2, 4])
    base = fm(real, fake, paired=False)
    for perm in ({"batch_perm": batch_perm}, {"frame_perm": frame_perm}, {"batch_perm": batch_perm, "frame_perm": frame_perm}):
        torch.testing.assert_close(fm(real, permute_maps(fake, **perm), paired=False), base, atol=1e-6, rtol=1e-6)
        # Identical features, shuffled: unpaired still 0 (to rounding), paired is not.
        assert fm(real, permute_maps(real, **perm), paired=False) < 1e-6
        assert fm(real, permute_maps(real, **perm), paired=True) > 0.1


def test_unpaired_feature_matching_sees_mean_shift():
    real = feature_maps(0)
    shifted = [[m + 0.5 for m in layers] for layers in real]
    torch.testing.assert_close(fm(real, shifted, paired=False), torch.tensor(0.5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("paired", [True, False])
def test_real_features_get_no_gradient(paired):
    real = [[m.requires_grad_(True) for m in layers] for layers in feature_maps(0)]
    fake = [[m.requires_grad_(True) for m in layers] for layers in feature_maps(1)]
    loss = fm(real, fake, paired)
    loss.backward()
    assert all(m.grad is None for layers in real for m in layers)
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for layers in fake for m in layers)


def test_scale_anchor_is_zero_at_unit_scales_and_grows_away_from_them():
    from usedddp.losses.reconstruction import scale_anchor_loss

    ones = torch.ones(3, 1, 1)
    assert scale_anchor_loss(ones, ones).item() == pytest.approx(0.0, abs=1e-6)
    assert scale_anchor_loss(2 * ones, ones) > scale_anchor_loss(1.1 * ones, ones) > 0
    assert scale_anchor_loss(0.5 * ones, ones).item() == pytest.approx(scale_anchor_loss(2 * ones, ones).item(), rel=1e-3)


def test_thresholded_sisdr_matches_dac_far_below_the_threshold_and_saturates_at_it(loss):
    from usedddp.losses.reconstruction import thresholded_si_sdr_loss

    x, other = signals()
    estimate = x + 0.3 * other
    assert thresholded_si_sdr_loss(estimate, x, 200.0).item() == pytest.approx(loss(estimate, x)["sisdr"].item(), abs=1e-3)
    # Soft threshold (Wisdom et al. 2020): the loss of x against itself is -max_db, not -inf/-80.
    assert thresholded_si_sdr_loss(x, x.clone(), 30.0).item() == pytest.approx(-30.0, abs=1e-3)
    thresholded = ReconstructionLoss(sample_rate=SR, mel_window_lengths=(64, 256), n_mels=(10, 40),
                                     stft_window_lengths=(256, 128), sisdr_max_db=30.0)
    assert thresholded(x, x.clone())["sisdr"].item() == pytest.approx(-30.0, abs=1e-3)


def test_thresholded_sisdr_gradient_stays_bounded_as_the_error_vanishes():
    """DAC's SI-SDR gradient grows as 1/|error|; the thresholded one shrinks with the error."""
    from usedddp.losses.reconstruction import thresholded_si_sdr_loss

    x, other = signals()

    def grad_norm(eps, max_db):
        est = (x + eps * other).requires_grad_(True)
        loss = thresholded_si_sdr_loss(est, x, max_db)
        loss.backward()
        return est.grad.norm().item()

    assert grad_norm(1e-4, 200.0) > 50 * grad_norm(1e-2, 200.0)  # unthresholded: grows as 1/|e|
    assert grad_norm(1e-4, 30.0) < grad_norm(1e-2, 30.0)  # thresholded: vanishes past 30 dB
