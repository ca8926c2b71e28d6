"""Clean speech alone: the data of a learned speech prior (UDiffSE's score model), from the same
corpora, levels and bad-file handling as USE-DDP's stages."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import CorpusError, find_audio_files, load_audio
from .corpus import AudioCorpus, pitch_range
from .datasets import SILENCE_RMS, item_generator, rms

log = logging.getLogger("usedddp.data")


class CleanSegments(Dataset):
    """`length` random segments (1, num_samples) of a clean corpus, item i drawn from seed (seed, i):
    the same index gives the same segment in any worker or epoch. Near-silent crops (RMS below
    -60 dBFS) are redrawn: a spectrogram normalised by its peak would turn them into loud noise."""

    def __init__(self, corpus: AudioCorpus, num_samples: int, length: int, seed: int,
                 speed: tuple[float, float] | None = None, retries: int = 8, pitch_hz: tuple[float, float] | None = None):
        self.corpus, self.num_samples, self.length, self.seed = corpus, int(num_samples), int(length), int(seed)
        self.speed, self.retries, self.pitch_hz = speed, int(retries), pitch_hz

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        g = item_generator(self.seed, index)
        for _ in range(self.retries):
            wav = self.corpus.random_segment(self.num_samples, g, loop=True, speed=self.speed, pitch_hz=self.pitch_hz)
            if rms(wav) > SILENCE_RMS:
                break
        return wav


class PriorDataModule(L.LightningDataModule):
    """Training: random segments of the clean-prior corpus (`prior_dir`) only. Validation: the
    first `val_clips` files of `val_clean_dir` (cropped to one segment), else segments of the
    prior drawn with another seed. Batches are waveforms (B, 1, T).

    `val_noisy_dir`, `root`, `domain` and `noise_dir` are kept for the run's record: evaluate
    reads the run's held-out test set from them. The USE-DDP data configs' other keys
    (`noisy_train_dir`, `snr_db`, `level_db`, `val_max_seconds`) are accepted and unused, so
    that experiment=udiffse_prior works over any data= choice by swapping the target."""

    def __init__(self, sample_rate: int, segment_seconds: float, batch_size: int, num_workers: int, prior_dir: str,
                 val_clean_dir: str | None = None, val_noisy_dir: str | None = None, val_clips: int = 8,
                 train_length: int = 100000, min_seconds: float = 0.1, preload: bool = True, seed: int = 0,
                 root: str | None = None, domain: str | None = None, noise_dir: str | None = None,
                 prior_speed_perturb: tuple | None = None, noisy_train_dir: str | None = None,
                 snr_db: tuple | None = None, level_db: tuple | None = None, val_max_seconds: float | None = None,
                 prior_pitch_hz: tuple | None = None):
        super().__init__()
        self.sample_rate, self.segment_seconds = int(sample_rate), float(segment_seconds)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.prior_dir, self.val_clean_dir, self.val_noisy_dir = prior_dir, val_clean_dir, val_noisy_dir
        self.val_clips, self.train_length, self.min_seconds = int(val_clips), int(train_length), float(min_seconds)
        self.preload, self.seed, self.root, self.domain, self.noise_dir = bool(preload), int(seed), root, domain, noise_dir
        self.prior_speed_perturb = None if prior_speed_perturb is None else tuple(map(float, prior_speed_perturb))
        self.prior_pitch_hz = pitch_range(prior_pitch_hz)
        self._prior: AudioCorpus | None = None
        self._val: list[torch.Tensor] | None = None

    @property
    def num_samples(self) -> int:
        return round(self.segment_seconds * self.sample_rate)

    @property
    def prior(self) -> AudioCorpus:
        if self._prior is None:
            self._prior = AudioCorpus(self.prior_dir, self.sample_rate, round(self.min_seconds * self.sample_rate),
                                      self.preload, name="clean prior")
            log.info(self._prior.summary())
        return self._prior

    @property
    def corpora(self) -> dict[str, AudioCorpus]:
        return {"prior": self.prior}

    def setup(self, stage: str | None = None) -> None:
        self.prior
        if self._val is None:
            self._val = self._validation()

    def _validation(self) -> list[torch.Tensor]:
        n = self.num_samples
        if self.val_clean_dir is not None and Path(self.val_clean_dir).is_dir():
            try:
                files = find_audio_files(self.val_clean_dir)[: self.val_clips]
            except CorpusError as error:
                log.warning("validation: %s; using held-out prior segments", error)
            else:
                clips = []
                for path in files:
                    wav = load_audio(path, self.sample_rate)[:, :n]
                    clips.append(torch.nn.functional.pad(wav, (0, n - wav.shape[-1])))
                log.info("validation: %d clean clips of %s", len(clips), self.val_clean_dir)
                return clips
        log.info("validation: %d segments of the clean prior (seed %d)", self.val_clips, self.seed + 1)
        held = CleanSegments(self.prior, n, self.val_clips, self.seed + 1)
        return [held[i] for i in range(len(held))]

    def train_dataloader(self) -> DataLoader:
        dataset = CleanSegments(self.prior, self.num_samples, self.train_length, self.seed, speed=self.prior_speed_perturb,
                                pitch_hz=self.prior_pitch_hz)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:
            self._val = self._validation()
        return DataLoader(self._val, batch_size=self.batch_size, shuffle=False)
