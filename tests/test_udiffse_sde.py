"""UDiffSE's OUVE SDE (methods.sde) and NCSN++ backbone (models.components.ncsnpp)."""

import math
import time

import pytest
import torch

from usedddp.methods.sde import OUVESDE
from usedddp.models.components.ncsnpp import SIZES, NCSNpp

TARGETS = {"6m": 6e6, "12m": 12e6, "28m": 28e6, "65m": 65e6}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def quad_variance(sde, t, n=20001):
    """integral_0^t exp(-2 theta (t - s)) g(s)^2 ds by the trapezoid rule, float64."""
    s = torch.linspace(0.0, t, n, dtype=torch.float64)
    return torch.trapezoid(torch.exp(-2 * sde.theta * (t - s)) * sde.g(s) ** 2, s).item()


@pytest.mark.parametrize("params", [{}, {"theta": 0.5, "sigma_min": 0.01, "sigma_max": 1.0}])
def test_std_matches_quadrature(params):
    sde = OUVESDE(**params)
    ts = [0.03, 0.1, 0.25, 0.5, 0.75, 1.0]
    closed = sde.std(torch.tensor(ts, dtype=torch.float64)) ** 2
    for t, v in zip(ts, closed.tolist()):
        assert v == pytest.approx(quad_variance(sde, t), rel=1e-4)
    # float32 agrees with float64 (no cancellation at small t).
    closed32 = sde.std(torch.tensor(ts)) ** 2
    torch.testing.assert_close(closed32.double(), closed, rtol=1e-5, atol=0)


def test_std_zero_at_start_and_increasing():
    sde = OUVESDE()
    assert sde.std(torch.zeros(1)).abs().item() < 1e-7
    t = torch.linspace(0, 1, 1001)
    s = sde.std(t)
    assert (s.diff() > 0).all()
    assert sde.g(torch.zeros(1)).item() == pytest.approx(0.05 * math.sqrt(2 * math.log(10)))
    torch.testing.assert_close(sde.mean_factor(t), torch.exp(-1.5 * t))


def test_sample_t_range_and_drift():
    sde = OUVESDE()
    g = torch.Generator().manual_seed(0)
    t = sde.sample_t(10000, generator=g)
    assert t.shape == (10000,)
    assert t.min() >= 0.03 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.515, abs=0.01)
    x = torch.randn(3, 4, 5, dtype=torch.complex64)
    torch.testing.assert_close(sde.drift(x, t[:3]), -1.5 * x)


def test_perturb_marginal_moments():
    sde = OUVESDE()
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0.05, 0.4, 1.0])
    x0 = torch.tensor([1.0 + 2.0j, -0.5 + 0.1j, 0.3 - 1.0j], dtype=torch.complex64)
    n = 200_000
    x0b = x0[:, None].expand(3, n).reshape(3, n, 1).contiguous()
    z = torch.randn(3, n, 1, dtype=torch.complex64, generator=g)
    xt = sde.perturb(x0b, t, z)
    assert xt.shape == x0b.shape and xt.dtype == torch.complex64
    mean = xt.mean(dim=(1, 2))
    var = (xt - mean[:, None, None]).abs().pow(2).mean(dim=(1, 2))
    m, s = sde.mean_factor(t), sde.std(t)
    torch.testing.assert_close(mean, (m * x0).to(torch.complex64), atol=4 * s.max().item() / n**0.5, rtol=0)
    torch.testing.assert_close(var, s**2, rtol=0.02, atol=0)
    # Real and imaginary parts each carry half of the variance (the CN(0, 1) convention).
    torch.testing.assert_close(xt.real.var(dim=(1, 2)), s**2 / 2, rtol=0.02, atol=0)


def test_dsm_loss_minimal_at_exact_gaussian_score():
    sde = OUVESDE()
    g = torch.Generator().manual_seed(2)
    batch, n_freq, n_frames = 4096, 8, 16
    v = torch.logspace(-2, 0, n_freq)  # per-bin prior variance of x0 ~ CN(0, v)
    x0 = torch.randn(batch, n_freq, n_frames, dtype=torch.complex64, generator=g) * v.sqrt()[None, :, None]
    z = torch.randn(batch, n_freq, n_frames, dtype=torch.complex64, generator=g)
    t = sde.sample_t(batch, generator=g)
    xt = sde.perturb(x0, t, z)
    m2 = sde.mean_factor(t)[:, None, None] ** 2
    s2 = sde.std(t)[:, None, None] ** 2
    var_t = m2 * v[None, :, None] + s2  # marginal variance of x_t per bin
    exact = -xt / var_t

    loss = sde.dsm_loss(exact, x0, t, z)
    for wrong in (0.8 * exact, 1.2 * exact, -xt / (m2 * v.mean() + s2), -xt / s2):
        assert loss < sde.dsm_loss(wrong, x0, t, z)
    # E|std s + z|^2 at the exact score is 1 - std^2 / var_t per element.
    analytic = (1 - s2 / var_t).mean()
    assert loss.item() == pytest.approx(analytic.item(), rel=0.03)
    # The zero score gives E|z|^2 = 1.
    assert sde.dsm_loss(torch.zeros_like(x0), x0, t, z).item() == pytest.approx(1.0, rel=0.01)


def test_dsm_loss_rejects_mismatched_shapes():
    sde = OUVESDE()
    x0 = torch.zeros(2, 4, 4, dtype=torch.complex64)
    with pytest.raises(ValueError):
        sde.dsm_loss(torch.zeros(2, 4, 3, dtype=torch.complex64), x0, torch.ones(2), x0)


def test_ncsnpp_shape_dtype_and_divisibility():
    torch.manual_seed(0)
    net = NCSNpp()
    x = torch.randn(2, 256, 64, dtype=torch.complex64)
    t = torch.tensor([0.1, 0.9])
    with torch.no_grad():
        y = net(x, t)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(torch.view_as_real(y)).all()
    with pytest.raises(ValueError, match=r"divisible by 4.*\(2, 256, 65\)"):
        net(torch.randn(2, 256, 65, dtype=torch.complex64), t)


def test_ncsnpp_output_near_zero_at_init_and_depends_on_t():
    torch.manual_seed(0)
    net = NCSNpp()
    x = torch.randn(1, 32, 32, dtype=torch.complex64)
    with torch.no_grad():
        y0 = net(x, torch.tensor([0.5]))
        assert y0.abs().pow(2).mean().sqrt() < 0.05
        net.conv_out.weight.normal_(0, 0.1)
        a = net(x, torch.tensor([0.05]))
        b = net(x, torch.tensor([0.8]))
        a2 = net(x, torch.tensor([0.05]))
    torch.testing.assert_close(a, a2)
    assert (a - b).abs().max() > 1e-3


def test_ncsnpp_attention_levels_and_bad_config():
    torch.manual_seed(0)
    net = NCSNpp(channels=8, channel_mults=(1, 2), attention_levels=(0, 1), groups=4)
    y = net(torch.randn(1, 16, 8, dtype=torch.complex64), torch.tensor([0.3]))
    assert y.shape == (1, 16, 8)
    with pytest.raises(ValueError):
        NCSNpp(channel_mults=(1, 2), attention_levels=(2,))


@pytest.mark.parametrize("name", ["6m", "12m", "28m", "65m"])
def test_size_presets_parameter_counts(name):
    start = time.perf_counter()
    net = NCSNpp(**SIZES[name])
    if time.perf_counter() - start > 10:
        pytest.skip(f"building {name} took over 10 s on this machine")
    assert abs(n_params(net) / TARGETS[name] - 1) <= 0.15


def test_tiny_preset_size_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = NCSNpp(**SIZES["tiny"])
    assert 2e5 <= n_params(net) <= 6e5
    sde = OUVESDE()
    x0 = torch.randn(2, 32, 16, dtype=torch.complex64)
    t = torch.tensor([0.2, 0.7])
    z = torch.randn_like(x0)
    score = -net(sde.perturb(x0, t, z), t) / sde.std(t)[:, None, None]
    sde.dsm_loss(score, x0, t, z).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not (p.grad != 0).any()]
    assert not missing, missing
