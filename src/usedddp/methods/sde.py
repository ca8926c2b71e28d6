"""The OUVE forward SDE of UDiffSE's clean-speech prior, with its closed-form marginals and DSM loss.

Nortier, Sadeghi, Serizel, "Unsupervised speech enhancement with diffusion-based generative
models" (ICASSP 2024), which trains an unconditional score prior of clean speech in the
compressed complex STFT domain with the Ornstein-Uhlenbeck variance-exploding SDE of Richter,
Welker, Lemercier, Lay, Gerkmann, "Speech Enhancement and Dereverberation with Diffusion-Based
Generative Models" (IEEE/ACM TASLP 2023):

    dx = -theta x dt + g(t) dw,    g(t) = sigma_min (sigma_max/sigma_min)^t sqrt(2 ln(sigma_max/sigma_min)),

with the OU mean fixed at 0 (Richter et al. pull towards the noisy spectrogram y; a prior of
clean speech alone has no y). Started at x0, the marginal at time t is complex Gaussian,

    x_t ~ CN(exp(-theta t) x0, sigma(t)^2),
    sigma(t)^2 = sigma_min^2 ((sigma_max/sigma_min)^(2t) - exp(-2 theta t)) L / (theta + L),
    L = ln(sigma_max/sigma_min).

Complex convention, used for the noise, the loss and every score in the package: z ~ CN(0, 1)
has E|z|^2 = 1 (real and imaginary parts each of variance 1/2, what torch.randn gives for a
complex dtype), and the score of CN(m, s^2) at x is -(x - m) / s^2.

Shapes: t is (B,) real; data are (B, ...) with the batch first, complex (B, F, T) for spectrograms.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor


def _per_item(s: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) with like.ndim dims, in like's real dtype, to scale like per item."""
    pattern = "b -> b" + " 1" * (like.ndim - 1)
    return rearrange(s, pattern).to(like.real.dtype)


class OUVESDE:
    """Ornstein-Uhlenbeck SDE with variance-exploding diffusion, mean 0, on t in [0, 1].

    t_min is the smallest diffusion time used in training and sampling: the score at t -> 0
    diverges for data on a lower-dimensional set, and the reference code trains and stops the
    reverse process at t = 0.03.
    """

    def __init__(
        self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5, t_min: float = 0.03
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if theta < 0:
            raise ValueError(f"theta must be >= 0, got {theta}")
        if not 0 <= t_min < 1:
            raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
        self.theta = float(theta)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.t_min = float(t_min)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)  # L

    def __repr__(self) -> str:
        return (
            f"OUVESDE(theta={self.theta}, sigma_min={self.sigma_min}, "
            f"sigma_max={self.sigma_max}, t_min={self.t_min})"
        )

    def mean_factor(self, t: Tensor) -> Tensor:
        """exp(-theta t): the marginal mean at t is mean_factor(t) * x0. t (B,) -> (B,)."""
        return torch.exp(-self.theta * t)

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t), (B,) -> (B,).

        The prefactor is sigma_min, as in Richter et al. and the UDiffSE reference code (UDiffSE's
        eq. 4 prints sigma_max there); only sigma_min gives the marginal std of std().
        """
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t * math.sqrt(2 * self.log_ratio)

    def std(self, t: Tensor) -> Tensor:
        """Marginal standard deviation sigma(t) of x_t given x0, (B,) -> (B,); sigma(0) = 0.

        Written as exp(-2 theta t) expm1(2 (theta + L) t), the same quantity as
        r^(2t) - exp(-2 theta t), without the cancellation of two numbers near 1 at small t.
        """
        theta, L = self.theta, self.log_ratio
        var = self.sigma_min**2 * torch.exp(-2 * theta * t) * torch.expm1(2 * (theta + L) * t) * L / (theta + L)
        return torch.sqrt(var)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift f(x, t) = -theta x; x (B, ...) real or complex, same shape out. t unused."""
        return -self.theta * x

    def perturb(self, x0: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """x_t = mean_factor(t) x0 + std(t) z; x0, z (B, F, T) (any (B, ...)), t (B,) -> like x0."""
        return _per_item(self.mean_factor(t), x0) * x0 + _per_item(self.std(t), x0) * z

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Training times t ~ U(t_min, 1), shape (batch,), float32."""
        u = torch.rand(batch, generator=generator, device=device)
        return self.t_min + (1.0 - self.t_min) * u

    def dsm_loss(self, score: Tensor, x0: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """Denoising score matching loss, a scalar: mean_b mean_elements |std(t) score + z|^2.

        score: the model's score at (x_t, t) with x_t = perturb(x0, t, z), (B, F, T) complex;
        x0 the clean data (only its shape and dtype are used), z ~ CN(0, 1) the noise drawn for
        x_t (torch.randn_like(x0)), t (B,). The minimiser over score functions is
        -E[z | x_t] / std(t), the score of p_t(x_t) in the CN convention above. The reference
        code sums over elements with a factor 1/2 instead of averaging: a constant scale that
        only changes the loss's units (and, with Adam, nothing).
        """
        if score.shape != x0.shape or z.shape != x0.shape:
            raise ValueError(f"score {tuple(score.shape)}, x0 {tuple(x0.shape)} and z {tuple(z.shape)} must match")
        err = _per_item(self.std(t), x0) * score + z
        per_item = rearrange(err.abs() ** 2, "b ... -> b (...)").mean(dim=1)
        return per_item.mean()
