"""Posterior means of the Gaussian models shared by the unsupervised methods.

With S ~ CN(0, speech_var) and N ~ CN(0, noise_var) independent and X = S + N, E[S | X] is the
Wiener estimate gain * X, gain = speech_var / (speech_var + noise_var); the VAE-NMF methods use it
with a decoder's variance for speech (Leglaive, Girin, Horaud, "A variance modeling framework
based on variational autoencoders for speech enhancement", MLSP 2018), UDiffSE and the VAE
methods average posterior samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


def wiener_gain(speech_var: Tensor, noise_var: Tensor) -> Tensor:
    """speech_var / (speech_var + noise_var), real, broadcast shape; 0 where both are 0."""
    total = speech_var + noise_var
    return speech_var / total.clamp_min(torch.finfo(total.dtype).tiny)


def wiener_estimate(X: Tensor, speech_var: Tensor, noise_var: Tensor) -> tuple[Tensor, Tensor]:
    """X complex (..., F, T), variances real, broadcastable to it -> (speech, noise) like X, with
    speech + noise == X exactly, bit for bit.

    The larger of the two is gain * X and the other the residual: subtracting a value within a
    factor of 2 of X is exact in floating point (Sterbenz's lemma), so the residual carries no
    rounding and the sum gives X back; the plain residual X - gain * X does not (it is off by an ulp in
    a few per cent of bins)."""
    gain = wiener_gain(speech_var, noise_var)
    speech_larger = gain >= 0.5
    # 1 - gain is >= 0.5 where gain < 0.5, whatever its rounding, which is all the lemma needs.
    larger = torch.where(speech_larger, gain, 1 - gain) * X
    smaller = X - larger
    return torch.where(speech_larger, larger, smaller), torch.where(speech_larger, smaller, larger)


def posterior_mean(samples: Tensor, dim: int = 0) -> Tensor:
    """Monte Carlo posterior mean: the mean of the samples along `dim` (removed)."""
    return samples.mean(dim=dim)
