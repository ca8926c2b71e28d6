"""Closed-form least-squares mixing scales (Klement, "Speech Enhancement using Neural Audio
Codecs", eq. 1-2)."""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor


def least_squares_scales(x: Tensor, s: Tensor, n: Tensor, ridge: float = 1e-6) -> tuple[Tensor, Tensor]:
    """alpha, beta = argmin ||x - alpha s - beta n||^2 per utterance.

    x, s, n: (B, 1, T) -> alpha, beta: (B, 1, 1). Solves the 2x2 normal equations by Cramer's
    rule with a ridge proportional to the streams' energy, so a silent stream gets scale 0
    and collinear streams share the fit instead of producing inf/NaN.

    Solved in float64: for (nearly) collinear streams, which is where the generator starts
    (both branches pass the encoder latent through), the determinant is of the order of the
    ridge, ~1e-6 of its terms, and float32 cancellation would leave the fit several percent off.
    """
    x, s, n = x.double(), s.double(), n.double()
    ss = reduce(s * s, "b c t -> b 1 1", "sum")
    nn_ = reduce(n * n, "b c t -> b 1 1", "sum")
    sn = reduce(s * n, "b c t -> b 1 1", "sum")
    sx = reduce(s * x, "b c t -> b 1 1", "sum")
    nx = reduce(n * x, "b c t -> b 1 1", "sum")
    eps = ridge * (ss + nn_) + torch.finfo(torch.float32).tiny
    a11, a22 = ss + eps, nn_ + eps
    det = a11 * a22 - sn * sn
    alpha = (a22 * sx - sn * nx) / det
    beta = (a11 * nx - sn * sx) / det
    return alpha.float(), beta.float()
