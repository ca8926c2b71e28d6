"""Invariants of the closed-form least-squares mixing scales (Klement, "Speech Enhancement using Neural Audio Codecs", eq. 1-2)."""

import pytest
import torch

from usedddp.models.components.mixture import least_squares_scales

T = 4000


def streams(batch=3, length=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, length, generator=g), torch.randn(batch, 1, length, generator=g)


def test_recovers_known_scales_per_item():
    s, n = streams()
    a = torch.tensor([0.5, -1.7, 3.0]).view(3, 1, 1)
    b = torch.tensor([-2.0, 0.25, 1.0]).view(3, 1, 1)
    alpha, beta = least_squares_scales(a * s + b * n, s, n)
    assert alpha.shape == beta.shape == (3, 1, 1)
    torch.testing.assert_close(alpha, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(beta, b, atol=1e-4, rtol=1e-4)


def test_scales_minimise_the_residual():
    # For an x that is not in span(s, n), the residual is orthogonal to both streams.
    s, n = streams()
    x = torch.randn(3, 1, T, generator=torch.Generator().manual_seed(7))
    alpha, beta = least_squares_scales(x, s, n)
    residual = x - alpha * s - beta * n
    for stream in (s, n):
        dot = (residual * stream).sum(-1) / (residual.norm(dim=-1) * stream.norm(dim=-1))
        assert dot.abs().max() < 1e-4


def test_silent_noise_gets_zero_scale():
    s, _ = streams()
    n = torch.zeros_like(s)
    a = torch.tensor([0.8, -0.3, 2.0]).view(3, 1, 1)
    alpha, beta = least_squares_scales(a * s, s, n)
    assert torch.all(beta == 0)
    torch.testing.assert_close(alpha, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["in_span", "three_s", "random"])
def test_collinear_streams_are_finite_and_fit(kind):
    # Both branches pass the encoder latent through at initialisation, so s == n (or nearly)
    # is where training starts: the fit must still be right, not merely finite.
    s, _ = streams()
    n = 2 * s
    x = {"in_span": 0.7 * s - 1.3 * n, "three_s": 3 * s, "random": streams(seed=3)[0]}[kind]
    alpha, beta = least_squares_scales(x, s, n)
    assert torch.isfinite(alpha).all() and torch.isfinite(beta).all()
    rec = alpha * s + beta * n
    # The best fit in span(s) is the projection of x onto s.
    proj = (x * s).sum(-1, keepdim=True) / (s * s).sum(-1, keepdim=True) * s
    torch.testing.assert_close(rec, proj, atol=1e-4 * x.abs().max().item(), rtol=0)
    if kind != "random":
        torch.testing.assert_close(rec, x, atol=1e-4 * x.abs().max().item(), rtol=0)


def test_identical_streams_share_the_fit():
    s, _ = streams()
    alpha, beta = least_squares_scales(1.5 * s, s, s.clone())
    torch.testing.assert_close(alpha + beta, torch.full_like(alpha, 1.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(alpha, beta, atol=1e-4, rtol=0)


def test_all_zero_streams_give_finite_zeros():
    z = torch.zeros(2, 1, T)
    alpha, beta = least_squares_scales(z, z, z)
    assert torch.all(alpha == 0) and torch.all(beta == 0)
    # Silent streams but a non-silent input: still finite zeros.
    alpha, beta = least_squares_scales(torch.randn(2, 1, T), z, z)
    assert torch.all(alpha == 0) and torch.all(beta == 0)


def test_gradient_flows_through_scales():
    s, n = streams()
    s.requires_grad_(True)
    n.requires_grad_(True)
    x = (0.5 * s + 0.5 * n).detach() + 0.1 * torch.randn(3, 1, T, generator=torch.Generator().manual_seed(1))
    alpha, beta = least_squares_scales(x, s, n)
    assert alpha.dtype == beta.dtype == torch.float32
    ((x - alpha * s - beta * n) ** 2).mean().backward()
    for t in (s, n):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # The gradient goes through alpha/beta too, not just the explicit product.
    s2 = s.detach().clone().requires_grad_(True)
    alpha2, _ = least_squares_scales(x, s2, n.detach())
    alpha2.sum().backward()
    assert torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0
