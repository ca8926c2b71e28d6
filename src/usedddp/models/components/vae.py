"""Variational autoencoders of clean-speech power spectrograms: the speech priors of the VAE-NMF
methods (methods/vae_nmf.py).

The generative model is s_t | z ~ CN(0, diag(v_t(z))), z_t ~ N(0, I): the decoder outputs log v.

- `FrameVAE`: z_t and s_t frame by frame, two MLPs (Leglaive, Girin, Horaud, "A variance
  modeling framework based on variational autoencoders for speech enhancement", MLSP 2018).
- `RVAE`: the non-causal recurrent VAE (Leglaive, Girin, Horaud, "A recurrent variational
  autoencoder for speech enhancement", ICASSP 2020): the decoder is a bidirectional LSTM over
  z_{1:T}; the encoder q(z_t | z_{t-1}, x_{1:T}) reads x through a bidirectional LSTM and z_{t-1}
  through a forward LSTM, hence its loop over frames.

Both take power spectrograms (B, T, F) and log-compress them at the input: a fixed transform,
since the power's dynamic range (tens of dB) is more than a linear layer copes with.
Shapes: power (B, T, F), z (B, T, L), log-variance (B, T, F).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from einops import rearrange
from torch import Tensor, nn


@contextmanager
def flush_denormals():
    """Denormal floats flushed to zero on the CPU inside the block (torch's default, off, after it).

    A trained RVAE's saturated LSTM gates make denormal gradients, and CPU arithmetic on them is
    slow: measured 1.0 s against 0.23 s per training step (batch 16, one thread) with the same
    weights. Values below 1.2e-38 are zero to any loss here."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def log_input(power: Tensor, floor: float = 1e-10) -> Tensor:
    return torch.log(power.clamp_min(floor))


def reparameterise(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    return mean + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the last dimension: (..., L) -> (...)."""
    return 0.5 * (mean.square() + logvar.exp() - logvar - 1).sum(-1)


class FrameVAE(nn.Module):
    """power (B, T, F) -> z (B, T, L) -> log-variance (B, T, F), every frame on its own."""

    decoder_parts = ("decoder",)  # the generative model's submodules (VEM fine-tunes the others)

    def __init__(self, n_freq: int = 513, latent_dim: int = 16, hidden: int = 128):
        super().__init__()
        self.n_freq, self.latent_dim = int(n_freq), int(latent_dim)
        self.encoder = nn.Sequential(nn.Linear(n_freq, hidden), nn.Tanh())
        self.enc_mean, self.enc_logvar = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_freq))

    def encode(self, power: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """power (B, T, F) -> (z, mean, logvar), each (B, T, L)."""
        h = self.encoder(log_input(power))
        mean, logvar = self.enc_mean(h), self.enc_logvar(h)
        return reparameterise(mean, logvar, generator), mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        """z (B, T, L) -> log-variance (B, T, F)."""
        return self.decoder(z)


class RVAE(nn.Module):
    """The non-causal RVAE. power (B, T, F) -> z (B, T, L) -> log-variance (B, T, F)."""

    decoder_parts = ("rnn_dec", "dec_out")

    def __init__(self, n_freq: int = 513, latent_dim: int = 16, hidden: int = 128, dense: int = 128):
        super().__init__()
        self.n_freq, self.latent_dim, self.hidden = int(n_freq), int(latent_dim), int(hidden)
        self.rnn_x = nn.LSTM(n_freq, hidden, batch_first=True, bidirectional=True)
        self.rnn_z = nn.LSTMCell(latent_dim, hidden)
        self.enc_dense = nn.Sequential(nn.Linear(2 * hidden + hidden, dense), nn.Tanh())
        self.enc_mean, self.enc_logvar = nn.Linear(dense, latent_dim), nn.Linear(dense, latent_dim)
        self.rnn_dec = nn.LSTM(latent_dim, hidden, batch_first=True, bidirectional=True)
        self.dec_out = nn.Linear(2 * hidden, n_freq)

    def encode(self, power: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """power (B, T, F) -> (z, mean, logvar), each (B, T, L); z_t is drawn before z_{t+1} reads it."""
        gx, _ = self.rnn_x(log_input(power))  # (B, T, 2H)
        batch, frames = power.shape[0], power.shape[1]
        z_t = power.new_zeros(batch, self.latent_dim)
        state = (power.new_zeros(batch, self.hidden), power.new_zeros(batch, self.hidden))
        zs, means, logvars = [], [], []
        for t in range(frames):  # the z recurrence is sequential by definition
            state = self.rnn_z(z_t, state)
            h = self.enc_dense(torch.cat([gx[:, t], state[0]], dim=-1))
            mean, logvar = self.enc_mean(h), self.enc_logvar(h)
            z_t = reparameterise(mean, logvar, generator)
            zs.append(z_t), means.append(mean), logvars.append(logvar)
        stack = lambda xs: rearrange(torch.stack(xs), "t b l -> b t l")  # noqa: E731
        return stack(zs), stack(means), stack(logvars)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, T, L) -> log-variance (B, T, F)."""
        h, _ = self.rnn_dec(z)
        return self.dec_out(h)
