"""The NMF noise model of the unsupervised methods: a noise variance V = W H of rank r, fitted to a
power spectrogram by multiplicative Itakura-Saito updates.

The IS divergence is the negative log-likelihood (up to constants) of a circular complex Gaussian
with variance V_hat given the power V = |N|^2, hence its use for the noise variance of
X = S + N (Févotte, Bertin, Durrieu, "Nonnegative matrix factorization with the Itakura-Saito
divergence: with application to music analysis", Neural Computation 2009). The plain
multiplicative update (exponent 1) is the one of the UDiffSE and VAE-NMF reference codes; it is
not proven monotone for IS. Raised to the power 1/2 it is a majorise-minimise step and never
increases the divergence (Févotte & Idier, "Algorithms for nonnegative matrix factorization with
the beta-divergence", Neural Computation 2011).

Shapes: V (..., F, T), W (..., F, r), H (..., r, T); leading dimensions are batched.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def is_divergence(V: Tensor, V_hat: Tensor) -> Tensor:
    """D_IS(V | V_hat) = sum over (F, T) of V/V_hat - log(V/V_hat) - 1: (..., F, T) -> (...).

    Both must be positive (a zero in V makes it infinite)."""
    ratio = V / V_hat
    return (ratio - torch.log(ratio) - 1).sum(dim=(-2, -1))


def nmf_init(n_freq: int, n_frames: int, rank: int, *, generator: torch.Generator | None = None, floor: float = 1e-10,
             device: torch.device | str | None = None, batch_shape: tuple[int, ...] = (),
             dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Uniform [0, 1) factors clamped at `floor`: W (*batch_shape, F, r), H (*batch_shape, r, T).

    Drawn on the generator's device (so a CPU generator gives the same factors whatever
    `device`), then moved to `device`."""
    batch_shape = tuple(batch_shape)
    draw_on = generator.device if generator is not None else device
    W = torch.rand((*batch_shape, n_freq, rank), generator=generator, device=draw_on, dtype=dtype)
    H = torch.rand((*batch_shape, rank, n_frames), generator=generator, device=draw_on, dtype=dtype)
    return W.clamp_min(floor).to(device), H.clamp_min(floor).to(device)


def l1_normalise(W: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
    """Columns of W scaled to sum to 1 over F, rows of H scaled by the inverse: W H is unchanged.

    Removes the scale ambiguity of the factorisation, so that neither factor drifts to 0 or inf."""
    norm = W.sum(dim=-2)  # (..., r); W is nonnegative
    return W / rearrange(norm, "... r -> ... 1 r"), H * rearrange(norm, "... r -> ... r 1")


def is_nmf_update(V: Tensor, W: Tensor, H: Tensor, *, exponent: float = 1.0, floor: float = 1e-10,
                  normalise: bool = True) -> tuple[Tensor, Tensor]:
    """One multiplicative Itakura-Saito update of W, then of H (with W H recomputed in between),
    each clamped at `floor`; with `normalise`, `l1_normalise` afterwards.

    V (..., F, T) power, W (..., F, r), H (..., r, T) -> (W, H), same shapes. `exponent` 1 is the
    reference codes' update, 0.5 the provably monotone one (module docstring)."""
    Ht = rearrange(H, "... r t -> ... t r")
    V_hat = W @ H
    W = W * (((V * V_hat.pow(-2)) @ Ht) / (V_hat.reciprocal() @ Ht)).pow(exponent)
    W = W.clamp_min(floor)
    Wt = rearrange(W, "... f r -> ... r f")
    V_hat = W @ H
    H = H * ((Wt @ (V * V_hat.pow(-2))) / (Wt @ V_hat.reciprocal())).pow(exponent)
    H = H.clamp_min(floor)
    return l1_normalise(W, H) if normalise else (W, H)


def mixture_nll(V: Tensor, speech_var: Tensor, W: Tensor, H: Tensor, g: Tensor) -> Tensor:
    """The objective of the M-step of the VAE-NMF methods: the negative log-likelihood (up to
    constants) of the power V (F, T) under CN(0, g_t v_r + W H), averaged over the R speech
    variance samples speech_var (R, F, T); g (T,) is the per-frame gain. -> scalar."""
    Vx = g * speech_var + W @ H
    return (torch.log(Vx) + V / Vx).sum(dim=(-2, -1)).mean()


def mixture_mstep(V: Tensor, speech_var: Tensor, W: Tensor, H: Tensor, g: Tensor, *, exponent: float = 0.5,
                  floor: float = 1e-10) -> tuple[Tensor, Tensor, Tensor]:
    """One multiplicative update of W, then H, then g for V (F, T) ~ CN(0, g v_r + W H), pooled over
    the R samples speech_var (R, F, T): the M-step of Leglaive, Girin, Horaud (MLSP 2018, eqs.
    18-20) with the majorise-minimise exponent 1/2 of the reference codes, under which none of
    the three updates increases `mixture_nll` (Févotte & Idier 2011). W's columns are l1-normalised
    between H and g (W H unchanged). -> (W (F, K), H (K, T), g (T,))."""

    def ratios(Vx: Tensor) -> tuple[Tensor, Tensor]:  # sum over r of V Vx^-2 and of Vx^-1
        return (V * Vx.pow(-2)).sum(0), Vx.reciprocal().sum(0)

    num, den = ratios(g * speech_var + W @ H)
    W = (W * ((num @ H.mT) / (den @ H.mT)).pow(exponent)).clamp_min(floor)
    num, den = ratios(g * speech_var + W @ H)
    H = (H * ((W.mT @ num) / (W.mT @ den)).pow(exponent)).clamp_min(floor)
    W, H = l1_normalise(W, H)
    Vx = g * speech_var + W @ H
    num = (V * speech_var * Vx.pow(-2)).sum(dim=(0, 1))
    den = (speech_var * Vx.reciprocal()).sum(dim=(0, 1))
    g = (g * (num / den).pow(exponent)).clamp_min(floor)
    return W, H, g
