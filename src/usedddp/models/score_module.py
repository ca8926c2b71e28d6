"""The LightningModule of a diffusion prior of clean speech (UDiffSE's score model): denoising
score matching on compressed spectrograms of the clean-prior corpus, EMA weights for sampling.

Nortier, Sadeghi, Serizel, "Unsupervised speech enhancement with diffusion-based generative
models" (ICASSP 2024); training as in the reference code: t ~ U(t_min, 1), Adam 1e-4, EMA 0.999.
The tensor maths lives in methods/ (SDE, STFT, samplers) and the backbone in models/components.
"""

from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch
from ema_pytorch import EMA
from torch import Tensor, nn

from usedddp.methods.dsp import CompressedSTFT, normalise_spec
from usedddp.methods.sde import OUVESDE
from usedddp.methods.udiffse import GaussianScore, NetworkScore, prior_sample


def frame_multiple(backbone: nn.Module) -> int:
    """Frames of a spectrogram must be a multiple of this for the backbone (its down-sampling)."""
    return int(getattr(backbone, "divisor", 1))


class ScorePriorModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, sde: OUVESDE, stft: CompressedSTFT, optimizer: Callable,
                 ema_decay: float = 0.999, ema_warmup_steps: int = 100, sample_rate: int = 16000,
                 val_sample_seconds: float = 2.0, val_sample_steps: int = 30, corrector_snr: float = 0.5):
        super().__init__()
        self.backbone, self.sde, self.stft = backbone, sde, stft
        self.optimizer = optimizer
        # ema-pytorch's warm-up: the decay grows as 1 - (1 + step)^(-2/3) up to ema_decay, after
        # ema_warmup_steps of copying the weights (an average over the first random steps is noise).
        self.ema = EMA(backbone, beta=ema_decay, update_after_step=ema_warmup_steps, update_every=1, power=2 / 3,
                       include_online_model=False)
        self.sample_rate = int(sample_rate)
        self.val_sample_seconds, self.val_sample_steps, self.corrector_snr = float(val_sample_seconds), int(val_sample_steps), float(corrector_snr)
        # The per-frequency variance of the normalised clean spectrograms seen in training: the
        # Gaussian-score baseline of the enhance path, fitted on the same prior as the network.
        self.register_buffer("spectrum_sum", torch.zeros(stft.n_fft // 2 + 1, dtype=torch.float64))
        self.register_buffer("spectrum_count", torch.zeros((), dtype=torch.float64))

    @property
    def frame_multiple(self) -> int:
        return frame_multiple(self.backbone)

    def score(self, ema: bool = True) -> NetworkScore:
        return NetworkScore(self.ema.ema_model if ema else self.backbone, self.sde)

    def gaussian_score(self) -> GaussianScore:
        if float(self.spectrum_count) == 0:
            raise ValueError("this prior saw no training batch: no spectrum to fit the Gaussian baseline on")
        return GaussianScore((self.spectrum_sum / self.spectrum_count).float(), self.sde)

    def spectrograms(self, wav: Tensor) -> Tensor:
        """wav (B, 1, T) -> normalised compressed spectrograms (B, F, N), N padded for the backbone."""
        spec, _ = normalise_spec(self.stft.spec(wav))
        return self.stft.pad_frames(spec, self.frame_multiple)[0]

    def loss(self, x0: Tensor, generator: torch.Generator | None = None, ema: bool = False) -> Tensor:
        t = self.sde.sample_t(x0.shape[0], generator=generator, device=x0.device)
        z = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
        return self.sde.dsm_loss(self.score(ema)(self.sde.perturb(x0, t, z), t), x0, t, z)

    def configure_optimizers(self):
        return self.optimizer(self.backbone.parameters())

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x0 = self.spectrograms(batch)
        with torch.no_grad():
            self.spectrum_sum += x0.abs().square().mean(dim=(0, 2)).double()
            self.spectrum_count += 1
        loss = self.loss(x0)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update()

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        # Fixed times and noise per batch: the curve moves with the model, not with the draw.
        g = torch.Generator(device=batch.device).manual_seed(batch_idx)
        x0 = self.spectrograms(batch)
        self.log("val/loss", self.loss(x0, g, ema=True), batch_size=batch.shape[0], prog_bar=True)
        self.log("val/loss_online", self.loss(x0, g, ema=False), batch_size=batch.shape[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Beside the run config (callbacks.RunConfigInCheckpoint): what the enhance path dispatches on.
        checkpoint.setdefault("usedddp", {}).update(stage="prior", method="udiffse")

    @torch.no_grad()
    def sample_waveform(self, seconds: float | None = None, seed: int = 0) -> Tensor:
        """A prior sample (EMA weights), (1, T) on the CPU: what the dashboards play and draw."""
        n = round((seconds or self.val_sample_seconds) * self.sample_rate)
        frames = math.ceil(self.stft.n_frames(n) / self.frame_multiple) * self.frame_multiple
        g = torch.Generator(device=self.device).manual_seed(seed)
        spec = prior_sample(self.score(ema=True), self.sde, (1, self.stft.n_fft // 2 + 1, frames),
                            self.val_sample_steps, self.corrector_snr, g, self.device)
        wav = self.stft.wav(spec[..., : self.stft.n_frames(n)], n)[0]
        return (wav / wav.abs().max().clamp_min(1e-8) * 0.5).float().cpu()
