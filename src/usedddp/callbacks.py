"""Lightning callbacks for the dashboards: the fixed validation clips as audio and spectrograms."""

from __future__ import annotations

import logging
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)

# Streams the generator produces for a clip: logged at every validation.
STREAMS = ("clean", "noise", "reconstruction")
# The clip itself: logged once per logger run (it does not change).
REFERENCES = ("noisy", "reference")


class ValidationMedia(L.Callback):
    """After every validation, logs the first `n_clips` validation clips (the datamodule's fixed
    validation set, in order) to each logger that takes media, at the trainer's global step:

    - audio `media/audio/{clean,noise,reconstruction}`: the generator's clean stream, noise
      stream and reconstruction `alpha * s_hat + beta * n_hat`, every validation;
    - audio `media/audio/{noisy,reference}`: the noisy input and, when the validation set has
      one, the clean reference, once per logger run (they do not change);
    - image `media/spectrogram`: one figure per clip, log-magnitude spectrograms stacked as
      noisy / reference / clean stream / noise stream / reconstruction on one dB scale.

    The streams are the ones `validation_step` computed and returned (no second forward pass).
    wandb: one list per key (a clip each, captioned with its name); TensorBoard: one tag per clip
    (`media/audio/<stream>/<clip>`, `media/spectrogram/<clip>`). Loggers without media (CSV) are
    skipped: the recipe writes the same clips as wav files at the end of each stage. Audio whose
    peak exceeds 0.99 is scaled down to 0.99 rather than clipped. Global rank 0 only; a
    validation at a step already logged (the recipe's end-of-stage validation) is not logged twice.
    """

    def __init__(self, n_clips: int = 2, spectrograms: bool = True, n_fft: int = 512, hop_length: int = 128,
                 top_db: float = 80.0):
        self.n_clips, self.spectrograms = int(n_clips), bool(spectrograms)
        self.n_fft, self.hop_length, self.top_db = int(n_fft), int(hop_length), float(top_db)
        self._last: tuple[int, int] | None = None
        self._references_logged: set[tuple[str, ...]] = set()
        self._clips: list[dict] = []
        self._active = False
        self._warned = False

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._clips = []
        self._active = (not trainer.sanity_checking and self.n_clips > 0 and trainer.is_global_zero
                        and self._media_loggers(trainer) != [] and self._last != (id(trainer), trainer.global_step))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not self._active or len(self._clips) >= self.n_clips:
            return
        if not isinstance(outputs, dict) or not all(isinstance(outputs.get(k), torch.Tensor) for k in STREAMS):
            if not self._warned:
                log.warning("ValidationMedia: validation_step returned no %s streams; no media logged", "/".join(STREAMS))
                self._warned = True
            return
        for i, name in enumerate(batch.name[: self.n_clips - len(self._clips)]):
            clip = {"name": str(name), "noisy": batch.noisy[i]}
            if batch.clean is not None:
                clip["reference"] = batch.clean[i]
            clip.update({stream: outputs[stream][i] for stream in STREAMS})
            self._clips.append({k: v if k == "name" else _playable(v) for k, v in clip.items()})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active or not self._clips:
            return
        self._active = False
        self._last = (id(trainer), trainer.global_step)
        started = time.time()
        clips, sample_rate, step = self._clips, pl_module.sample_rate, trainer.global_step
        images = [self.spectrogram(clip, sample_rate) for clip in clips] if self.spectrograms else []
        for logger in self._media_loggers(trainer):
            key = _run_key(logger)
            with_refs = key not in self._references_logged
            self._references_logged.add(key)
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, clips, images, with_refs, sample_rate, step)
            else:
                self._log_tensorboard(logger, clips, images, with_refs, sample_rate, step)
        self._clips = []
        log.debug("validation media for %d clips in %.2f s", len(clips), time.time() - started)

    @staticmethod
    def _media_loggers(trainer: L.Trainer) -> list[Logger]:
        return [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, TensorBoardLogger))]

    def _log_wandb(self, logger: WandbLogger, clips: list[dict], images: list[np.ndarray], with_refs: bool,
                   sample_rate: int, step: int) -> None:
        import wandb

        names = [clip["name"] for clip in clips]
        payload = {}
        for stream in (REFERENCES if with_refs else ()) + STREAMS:
            have = [clip for clip in clips if stream in clip]
            if have:
                payload[f"media/audio/{stream}"] = [wandb.Audio(clip[stream], sample_rate=sample_rate, caption=clip["name"]) for clip in have]
        if images:
            payload["media/spectrogram"] = [wandb.Image(img, caption=name) for img, name in zip(images, names)]
        logger.log_metrics(payload, step=step)

    def _log_tensorboard(self, logger: TensorBoardLogger, clips: list[dict], images: list[np.ndarray], with_refs: bool,
                         sample_rate: int, step: int) -> None:
        writer = logger.experiment
        for i, clip in enumerate(clips):
            tag = clip["name"].replace("/", "__")
            for stream in (REFERENCES if with_refs else ()) + STREAMS:
                if stream in clip:
                    writer.add_audio(f"media/audio/{stream}/{tag}", torch.from_numpy(clip[stream])[None], step, sample_rate=sample_rate)
            if images:
                writer.add_image(f"media/spectrogram/{tag}", images[i], step, dataformats="HWC")
        writer.flush()

    def spectrogram(self, clip: dict, sample_rate: int) -> np.ndarray:
        """One figure (H, W, 3 uint8) of stacked log-magnitude spectrograms of a clip's signals."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        titles = {"noisy": "noisy input", "reference": "clean reference", "clean": "clean stream",
                  "noise": "noise stream", "reconstruction": "reconstruction"}
        panels = [(titles[k], _log_magnitude(clip[k], self.n_fft, self.hop_length)) for k in REFERENCES + STREAMS if k in clip]
        vmax = max(float(spec.max()) for _, spec in panels)
        duration = len(clip["noisy"]) / sample_rate
        fig = Figure(figsize=(6.4, 0.3 + 1.25 * len(panels)), dpi=80, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        for ax, (title, spec) in zip(axes, panels):
            image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=vmax - self.top_db, vmax=vmax,
                              extent=(0.0, duration, 0.0, sample_rate / 2000))
            ax.set_title(title, fontsize=8, loc="left")
            ax.set_ylabel("kHz", fontsize=7)
            ax.tick_params(labelsize=7)
        axes[-1].set_xlabel(f"s ({clip['name']})", fontsize=7)
        fig.colorbar(image, ax=list(axes), label="dB", shrink=0.6)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _playable(wav: torch.Tensor) -> np.ndarray:
    """1-D float32 numpy, scaled down to a 0.99 peak where louder (so a wav file does not clip)."""
    x = wav.detach().float().cpu().reshape(-1).numpy()
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.abs(x).max()) if x.size else 0.0
    return (x * (0.99 / peak) if peak > 0.99 else x).astype(np.float32)


def _log_magnitude(x: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """(freq, frames) 20 log10 |STFT| with a Hann window (n_fft cut to the clip's length)."""
    wav = torch.from_numpy(x)
    n_fft = max(16, min(n_fft, wav.numel()))
    hop = max(1, min(hop_length, n_fft // 2))
    spec = torch.stft(wav, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    return (20 * torch.log10(spec.clamp_min(1e-6))).numpy()


def _run_key(logger: Logger) -> tuple[str, ...]:
    """Identifies one logger run (one per stage in the recipe): its references are logged once."""
    return type(logger).__name__, str(logger.save_dir), str(logger.name), str(logger.version)


class RunConfigInCheckpoint(L.Callback):
    """Stores the run's resolved config in every checkpoint (`checkpoint["usedddp"]["config"]`),
    so that a .ckpt copied out of its run directory still rebuilds its generator and names its
    priors and test set (usedddp.inference), as audiocraft's solvers and DAC's
    `metadata.kwargs` carry theirs. Plain containers only: torch.load(weights_only=True) reads it."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint.setdefault("usedddp", {})["config"] = self.config


class PriorSampleMedia(L.Callback):
    """After every validation, one sample of a speech prior (`pl_module.sample_waveform()`, e.g.
    the diffusion prior's reverse pass with EMA weights) as audio `media/audio/prior_sample` and a
    log-magnitude spectrogram image `media/spectrogram/prior_sample`, to wandb or TensorBoard:
    what the prior has learned, heard and seen."""

    def __init__(self, seconds: float = 2.0, seed: int = 0, n_fft: int = 512, hop_length: int = 128, top_db: float = 80.0):
        self.seconds, self.seed, self.n_fft, self.hop_length, self.top_db = float(seconds), int(seed), n_fft, hop_length, top_db

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, TensorBoardLogger))]
        if not loggers:
            return
        started = time.perf_counter()
        wav = _playable(pl_module.sample_waveform(self.seconds, self.seed))
        image = self.spectrogram(wav, pl_module.sample_rate)
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.log_metrics({"media/audio/prior_sample": wandb.Audio(wav, sample_rate=pl_module.sample_rate),
                                    "media/spectrogram/prior_sample": wandb.Image(image)}, step=trainer.global_step)
            else:
                logger.experiment.add_audio("media/audio/prior_sample", torch.from_numpy(wav)[None], trainer.global_step,
                                            sample_rate=pl_module.sample_rate)
                logger.experiment.add_image("media/spectrogram/prior_sample", image, trainer.global_step, dataformats="HWC")
        log.info("prior sample logged (%.1f s)", time.perf_counter() - started)

    def spectrogram(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        spec = _log_magnitude(wav, self.n_fft, self.hop_length)
        fig = Figure(figsize=(6.4, 1.8), dpi=80, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        ax = fig.subplots()
        vmax = float(spec.max())
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=vmax - self.top_db, vmax=vmax,
                          extent=(0.0, len(wav) / sample_rate, 0.0, sample_rate / 2000))
        ax.set_title("prior sample", fontsize=8, loc="left")
        ax.set_ylabel("kHz", fontsize=7)
        ax.set_xlabel("s", fontsize=7)
        fig.colorbar(image, ax=ax, label="dB", shrink=0.8)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
