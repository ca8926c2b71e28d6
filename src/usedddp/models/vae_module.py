"""The LightningModule of a VAE prior of clean speech (the VAE-NMF methods' prior): the
Itakura-Saito divergence of the clean power spectrogram from the decoder's variance plus a
beta-weighted KL term, on the clean-prior corpus alone.

Loss (Leglaive, Girin, Horaud, "A variance modeling framework based on variational autoencoders
for speech enhancement", MLSP 2018, eq. 9; beta-VAE weighting as in Bie et al., "Unsupervised
speech enhancement using dynamical variational autoencoders", IEEE/ACM TASLP 2022):
    mean over frames of [ sum_f D_IS(|s_ft|^2 | v_ft(z)) + beta * KL(q(z_t | .) || N(0, I)) ],
beta growing linearly from 0 over `beta_warmup_steps` (KL annealing, so that the decoder learns to
use z before the KL term closes it: Bowman et al., "Generating sentences from a continuous
space", CoNLL 2016).
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from einops import rearrange
from torch import Tensor, nn

from usedddp.methods.dsp import PowerSTFT, normalise_power
from usedddp.models.components.vae import flush_denormals, gaussian_kl


def is_divergence_frames(power: Tensor, logvar: Tensor) -> Tensor:
    """sum over F of D_IS(power | exp(logvar)) = P/V - log(P/V) - 1, computed from log V for
    stability: (..., F) -> (...)."""
    log_ratio = torch.log(power) - logvar
    return (torch.exp(log_ratio) - log_ratio - 1).sum(-1)


class VAEPriorModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, stft: PowerSTFT, optimizer: Callable, beta: float = 0.01,
                 beta_warmup_steps: int = 500, sample_rate: int = 16000, val_sample_seconds: float = 2.0):
        super().__init__()
        self.backbone, self.stft, self.optimizer = backbone, stft, optimizer
        self.beta, self.beta_warmup_steps = float(beta), int(beta_warmup_steps)
        self.sample_rate, self.val_sample_seconds = int(sample_rate), float(val_sample_seconds)

    def power(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) -> normalised power spectrograms (B, N, F), frames first."""
        power, _ = normalise_power(self.stft.spec(wav).abs().square())
        return rearrange(power, "b f n -> b n f")

    def beta_at(self, step: int) -> float:
        if self.beta_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.beta_warmup_steps)

    def losses(self, power: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(IS divergence, KL), each the mean over items and frames of its per-frame sum."""
        z, mean, logvar = self.backbone.encode(power, generator)
        return is_divergence_frames(power, self.backbone.decode(z)).mean(), gaussian_kl(mean, logvar).mean()

    def on_fit_start(self) -> None:
        self._denormals = flush_denormals()  # see flush_denormals: a 4x slower step without it
        self._denormals.__enter__()

    def on_fit_end(self) -> None:
        if getattr(self, "_denormals", None) is not None:
            self._denormals.__exit__(None, None, None)
            self._denormals = None

    def configure_optimizers(self):
        return self.optimizer(self.backbone.parameters())

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        is_div, kl = self.losses(self.power(batch))
        beta = self.beta_at(self.global_step)
        loss = is_div + beta * kl
        n = batch.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train/is": is_div, "train/kl": kl, "train/beta": beta}, batch_size=n)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        # A fixed draw per batch and the full beta: the curve moves with the model only.
        g = torch.Generator(device=batch.device).manual_seed(batch_idx)
        is_div, kl = self.losses(self.power(batch), g)
        n = batch.shape[0]
        self.log("val/loss", is_div + self.beta * kl, prog_bar=True, batch_size=n)
        self.log_dict({"val/is": is_div, "val/kl": kl}, batch_size=n)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Beside the run config (callbacks.RunConfigInCheckpoint): what the enhance path dispatches on.
        checkpoint.setdefault("usedddp", {}).update(stage="prior", method="rvae")

    @torch.no_grad()
    def sample_waveform(self, seconds: float | None = None, seed: int = 0) -> Tensor:
        """A prior sample, (1, T) on the CPU, for the dashboards: z ~ N(0, I), s ~ CN(0, v(z)) with
        a random phase (the model has none), inverted by the iSTFT."""
        n = round((seconds or self.val_sample_seconds) * self.sample_rate)
        frames = 1 + n // self.stft.hop_length
        g = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn(1, frames, self.backbone.latent_dim, generator=g, device=self.device)
        var = rearrange(self.backbone.decode(z).exp(), "b n f -> b f n")
        noise = torch.randn(var.shape, dtype=torch.complex64, generator=g, device=self.device)
        wav = self.stft.wav(noise * var.sqrt(), n)[0]
        return (wav / wav.abs().max().clamp_min(1e-8) * 0.5).float().cpu()
