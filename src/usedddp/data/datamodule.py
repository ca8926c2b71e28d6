"""LightningDataModule for the three USE-DDP training stages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..audio import CorpusError, find_audio_files
from .batches import ValidationBatch, collate_simulated, collate_unpaired, collate_validation
from .corpus import AudioCorpus, pitch_range
from .datasets import (VALIDATION_LEVEL_DB, SimulatedMixtures, UnpairedNoisy, ValidationClips,
                       pair_by_relative_path)
from ..stages import TrainingStage, training_stage as stage_spec

log = logging.getLogger("usedddp.data")


class _ValPlan(NamedTuple):
    noisy: list[Path] | None  # None: simulate mixtures from the priors
    clean: list[Path] | None
    names: list[str] | None
    held_out: list[Path]  # files of noisy_train_dir kept out of stage-3 training
    has_references: bool


def _spread(items: list, k: int) -> list:
    """k items evenly spaced over a sorted list, so that every speaker or condition of a test
    set sorted by name is represented (the first k would often be one speaker)."""
    if k >= len(items):
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _is_dir(path: str | None) -> bool:
    return path is not None and Path(path).is_dir()


class USEDataModule(L.LightningDataModule):
    """Training data: simulated mixtures (stages 1-2) or real noisy + independent prior draws
    (stage 3). `training_stage` (a number or a usedddp.stages spec, the one the module trains)
    may be reassigned between fits; corpora are built once and reused.

    Validation, in order of preference: `val_clips` clips of `val_noisy_dir` (with references
    from `val_clean_dir` when that folder exists); else `val_clips` files held out of
    `noisy_train_dir` (reference-free, excluded from stage-3 training); else `val_clips` fixed
    mixtures simulated from the prior corpora (with references).

    `root` and `domain` are accepted for the data configs: `root` only feeds interpolations
    such as ${data.root}/noisy_trainset, `domain` names the noisy data in log messages.
    """

    def __init__(self, sample_rate: int, segment_seconds: float, batch_size: int, num_workers: int,
                 prior_dir: str, noise_dir: str, noisy_train_dir: str | None,
                 val_noisy_dir: str | None = None, val_clean_dir: str | None = None, val_clips: int = 8,
                 val_max_seconds: float = 4.0, snr_db: tuple = (-5, 15), level_db: tuple = (-35, -15),
                 train_length: int = 100000, min_seconds: float = 0.1, preload: bool = True, seed: int = 0,
                 training_stage: int = 1, root: str | None = None, domain: str | None = None,
                 prior_speed_perturb: tuple | None = None, prior_pitch_hz: tuple | None = None):
        super().__init__()
        # root only serves config interpolation (${data.root}/...); domain labels the noisy data in logs.
        self.root, self.domain = root, domain
        self.sample_rate, self.segment_seconds = int(sample_rate), float(segment_seconds)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.prior_dir, self.noise_dir, self.noisy_train_dir = prior_dir, noise_dir, noisy_train_dir
        self.val_noisy_dir, self.val_clean_dir = val_noisy_dir, val_clean_dir
        self.val_clips, self.val_max_seconds = int(val_clips), float(val_max_seconds)
        # Hydra hands over ListConfig; plain float tuples pickle cheaply into workers.
        self.snr_db, self.level_db = tuple(map(float, snr_db)), tuple(map(float, level_db))
        self.train_length, self.min_seconds = int(train_length), float(min_seconds)
        self.preload, self.seed = bool(preload), int(seed)
        self.training_stage = training_stage
        # Speed perturbation of the clean-prior draws (stages 1-3; not of validation).
        self.prior_speed_perturb = None if prior_speed_perturb is None else tuple(map(float, prior_speed_perturb))
        # PSOLA pitch shift of the clean-prior draws to a median F0 in [lo, hi] Hz (stages 1-3).
        self.prior_pitch_hz = pitch_range(prior_pitch_hz)
        self._corpora: dict[str, AudioCorpus] = {}
        self._val_plan: _ValPlan | None = None
        self._val_set = None

    @property
    def training_stage(self) -> TrainingStage:
        return self._training_stage

    @training_stage.setter
    def training_stage(self, value: int | TrainingStage) -> None:
        self._training_stage = stage_spec(value)

    @property
    def num_samples(self) -> int:
        return round(self.segment_seconds * self.sample_rate)

    @property
    def prior(self) -> AudioCorpus:
        return self._corpus("prior")

    @property
    def noise(self) -> AudioCorpus:
        return self._corpus("noise")

    @property
    def noisy_train(self) -> AudioCorpus:
        return self._corpus("noisy_train")

    @property
    def corpora(self) -> dict[str, AudioCorpus]:
        """The corpora built so far, by role ("prior", "noise", "noisy_train")."""
        return dict(self._corpora)

    @property
    def val_dataset(self):
        if self._val_set is None:
            self._val_set = self._build_validation()
        return self._val_set

    @property
    def has_references(self) -> bool:
        return self._validation_plan().has_references

    def setup(self, stage: str | None = None) -> None:
        # `stage` is Lightning's ("fit", "validate"); what is built depends on the training stage.
        for key in ("prior", "noise", "noisy_train") if self.training_stage.data == "real_noisy" else ("prior", "noise"):
            self._corpus(key)
        if self._val_set is None:
            self._val_set = self._build_validation()

    def _corpus(self, key: str) -> AudioCorpus:
        if key not in self._corpora:
            min_samples = round(self.min_seconds * self.sample_rate)
            if key == "noisy_train":
                if not _is_dir(self.noisy_train_dir):
                    raise CorpusError(f"noisy_train_dir={self.noisy_train_dir}",
                                      "not an existing folder; stage 3 trains on real noisy recordings")
                held_out = self._validation_plan().held_out
                corpus = AudioCorpus(self.noisy_train_dir, self.sample_rate, min_samples, self.preload,
                                     name=f"noisy train ({self.domain})" if self.domain else "noisy train",
                                     exclude=held_out)
            else:
                root, name = (self.prior_dir, "clean prior") if key == "prior" else (self.noise_dir, "noise prior")
                corpus = AudioCorpus(root, self.sample_rate, min_samples, self.preload, name=name)
            log.info(corpus.summary())
            self._corpora[key] = corpus
        return self._corpora[key]

    def _validation_plan(self) -> _ValPlan:
        """Which clips validate (filesystem only, no decoding); cached so that the stage-3
        corpus excludes exactly the held-out files."""
        if self._val_plan is None:
            self._val_plan = self._plan_validation()
        return self._val_plan

    def _plan_validation(self) -> _ValPlan:
        k = self.val_clips
        if _is_dir(self.val_noisy_dir):
            root = Path(self.val_noisy_dir)
            if _is_dir(self.val_clean_dir):
                pairs, unmatched, _ = pair_by_relative_path(root, self.val_clean_dir)
                if not pairs:
                    raise CorpusError(self.val_clean_dir, f"no file matches a file of {root} by relative path")
                if unmatched:
                    log.warning("%d files of %s have no clean reference in %s and are not used for validation",
                                len(unmatched), root, self.val_clean_dir)
                pairs = _spread(pairs, k)
                noisy, clean = [n for n, _ in pairs], [c for _, c in pairs]
            else:
                log.warning("validation is reference-free: val_clean_dir %s",
                            "is not set" if self.val_clean_dir is None else f"{self.val_clean_dir} does not exist")
                noisy, clean = _spread(find_audio_files(root), k), None
            return _ValPlan(noisy, clean, [p.relative_to(root).as_posix() for p in noisy], [], clean is not None)
        if self.val_noisy_dir is not None:
            log.warning("val_noisy_dir %s does not exist; falling back", self.val_noisy_dir)
        if _is_dir(self.noisy_train_dir):
            root = Path(self.noisy_train_dir)
            files = find_audio_files(root)
            k = min(k, len(files) // 2)  # keep at least half of the recordings for training
            if k > 0:
                g = torch.Generator().manual_seed(self.seed)
                held = sorted(files[i] for i in torch.randperm(len(files), generator=g)[:k].tolist())
                log.warning("validation is reference-free: no val_noisy_dir, holding out %d files of %s "
                            "(excluded from stage-3 training)", k, root)
                return _ValPlan(held, None, [p.relative_to(root).as_posix() for p in held], held, False)
        log.info("validation: %d fixed mixtures simulated from the prior corpora", self.val_clips)
        return _ValPlan(None, None, None, [], True)

    def _build_validation(self):
        plan = self._validation_plan()
        max_samples = round(self.val_max_seconds * self.sample_rate)
        if plan.noisy is not None:
            return ValidationClips(plan.noisy, plan.clean, self.sample_rate, max_samples, plan.names)
        # Fixed mixtures at the validation level; the seed differs from the training items'.
        sim = SimulatedMixtures(self.prior, self.noise, max_samples, self.snr_db,
                                (VALIDATION_LEVEL_DB, VALIDATION_LEVEL_DB), self.val_clips, seed=self.seed + 1)
        items = [sim[i] for i in range(len(sim))]
        return [ValidationBatch(noisy=b.noisy, clean=b.clean, name=[f"simulated/{i:03d}"]) for i, b in enumerate(items)]

    def _loader(self, dataset, collate_fn, batch_size: int, train: bool, num_workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, collate_fn=collate_fn,
                          num_workers=num_workers, persistent_workers=num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        if self.training_stage.data == "simulated":
            dataset = SimulatedMixtures(self.prior, self.noise, self.num_samples, self.snr_db, self.level_db,
                                        self.train_length, self.seed, speed=self.prior_speed_perturb,
                                        pitch_hz=self.prior_pitch_hz)
            return self._loader(dataset, collate_simulated, self.batch_size, True, self.num_workers)
        if self.training_stage.data == "real_noisy":
            dataset = UnpairedNoisy(self.noisy_train, self.prior, self.noise, self.num_samples, self.level_db,
                                    self.train_length, self.seed, speed=self.prior_speed_perturb,
                                    pitch_hz=self.prior_pitch_hz)
            return self._loader(dataset, collate_unpaired, self.batch_size, True, self.num_workers)
        raise ValueError(f"training stage {self.training_stage.number}: unknown training data {self.training_stage.data!r}")

    def val_dataloader(self) -> DataLoader:
        if self._val_set is None:
            self._val_set = self._build_validation()
        # A handful of clips: worker processes would cost more than they save.
        return self._loader(self._val_set, collate_validation, 1, False, 0)
