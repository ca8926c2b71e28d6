"""Map-style datasets for the three training stages and for validation.

Training items are drawn at random but are a pure function of (seed, index): each item
seeds its own torch.Generator, so results do not depend on worker count or order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..audio import CorpusError, audio_info, find_audio_files, load_audio
from .batches import SimulatedBatch, UnpairedBatch, ValidationBatch
from .corpus import AudioCorpus

VALIDATION_LEVEL_DB = -25.0
PEAK_LIMIT = 0.99
# Segments quieter than this RMS (-60 dBFS) count as silence: they are not amplified up to the
# target level, which would turn digital noise floors into loud 'clean' or 'noise' examples.
SILENCE_RMS = 1e-3


def item_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    # SeedSequence decorrelates neighbouring (seed, index) pairs, unlike seed + index.
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform(g: torch.Generator, bounds) -> float:
    lo, hi = map(float, bounds)
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt()


def level_gain(x: Tensor, level_db: float) -> Tensor:
    """Gain that brings the RMS of x to `level_db` dBFS (near-silent x is not boosted past silence)."""
    return 10 ** (level_db / 20) / torch.clamp(rms(x), min=SILENCE_RMS)


def _peak_safe(*xs: Tensor) -> Tensor:
    peak = max(float(x.abs().max()) for x in xs)
    return torch.tensor(min(1.0, PEAK_LIMIT / peak) if peak > 0 else 1.0)


class SimulatedMixtures(Dataset):
    """Stages 1-2: clean + noise mixed at a uniform random SNR, then set to a random level.

    SNR compares the powers of the speech and noise segments; the common gain puts the
    mixture RMS at a uniform random level in `level_db` dBFS, reduced if any of the three
    signals would peak above 0.99. `noisy` is computed as `clean + noise` after scaling, so
    the identity holds exactly.
    """

    def __init__(self, speech: AudioCorpus, noise: AudioCorpus, num_samples: int, snr_db=(-5.0, 15.0),
                 level_db=(-35.0, -15.0), length: int = 100_000, seed: int = 0, speed=None, pitch_hz=None):
        self.speech, self.noise, self.num_samples = speech, noise, num_samples
        self.speed = None if speed is None else tuple(map(float, speed))
        self.pitch_hz = None if pitch_hz is None else tuple(map(float, pitch_hz))
        self.snr_db, self.level_db, self.length, self.seed = tuple(snr_db), tuple(level_db), length, seed

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[torch.Generator, float, float]:
        g = item_generator(self.seed, index, stream=1)
        return g, _uniform(g, self.snr_db), _uniform(g, self.level_db)

    def conditions(self, index: int) -> tuple[float, float]:
        """(snr_db, level_db) drawn for item `index` (the realised values match unless the
        speech segment is silent or the peak limiter lowered the level)."""
        _, snr, level = self._draw(index)
        return snr, level

    def __getitem__(self, index: int) -> SimulatedBatch:
        g, snr, level = self._draw(index)
        clean = self.speech.random_segment(self.num_samples, g, speed=self.speed, pitch_hz=self.pitch_hz)
        noise = self.noise.random_segment(self.num_samples, g, loop=True)
        p_clean = torch.clamp(clean.pow(2).mean(), min=SILENCE_RMS ** 2)
        noise = noise * torch.sqrt(p_clean / (noise.pow(2).mean() * 10 ** (snr / 10) + 1e-20))
        gain = level_gain(clean + noise, level)
        clean, noise = clean * gain, noise * gain
        gain = _peak_safe(clean, noise, clean + noise)
        clean, noise = clean * gain, noise * gain
        return SimulatedBatch(noisy=clean + noise, clean=clean, noise=noise)


class UnpairedNoisy(Dataset):
    """Stage 3: a real noisy crop plus independent clean-prior and noise-prior crops, each
    at its own random level in `level_db` dBFS."""

    def __init__(self, noisy: AudioCorpus, speech: AudioCorpus, noise: AudioCorpus, num_samples: int,
                 level_db=(-35.0, -15.0), length: int = 100_000, seed: int = 0, speed=None, pitch_hz=None):
        self.noisy, self.speech, self.noise, self.num_samples = noisy, speech, noise, num_samples
        self.speed = None if speed is None else tuple(map(float, speed))
        self.pitch_hz = None if pitch_hz is None else tuple(map(float, pitch_hz))
        self.level_db, self.length, self.seed = tuple(level_db), length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> UnpairedBatch:
        g = item_generator(self.seed, index, stream=2)
        out = []
        for corpus, loop in ((self.noisy, False), (self.speech, False), (self.noise, True)):
            prior = corpus is self.speech
            x = corpus.random_segment(self.num_samples, g, loop=loop, speed=self.speed if prior else None,
                                      pitch_hz=self.pitch_hz if prior else None)
            x = x * level_gain(x, _uniform(g, self.level_db))
            out.append(x * _peak_safe(x))
        return UnpairedBatch(*out)


class ValidationClips(Dataset):
    """Fixed clips, cropped to their first `max_samples` and normalised so that noisy is at
    -25 dBFS RMS (the same gain is applied to the clean reference). Loaded lazily; headers
    are checked up front so a bad file fails at setup rather than mid-training."""

    def __init__(self, noisy_files: list[Path], clean_files: list[Path] | None, sample_rate: int,
                 max_samples: int | None = None, names: list[str] | None = None):
        if clean_files is not None and len(clean_files) != len(noisy_files):
            raise ValueError(f"{len(noisy_files)} noisy files but {len(clean_files)} clean files")
        self.noisy_files = [Path(p) for p in noisy_files]
        self.clean_files = None if clean_files is None else [Path(p) for p in clean_files]
        self.sample_rate, self.max_samples = sample_rate, max_samples
        self.names = list(names) if names is not None else [p.name for p in self.noisy_files]
        for p in self.noisy_files + (self.clean_files or []):
            audio_info(p)

    def __len__(self) -> int:
        return len(self.noisy_files)

    def __getitem__(self, index: int) -> ValidationBatch:
        noisy = load_audio(self.noisy_files[index], self.sample_rate)
        clean = None if self.clean_files is None else load_audio(self.clean_files[index], self.sample_rate)
        n = noisy.shape[-1] if clean is None else min(noisy.shape[-1], clean.shape[-1])
        if self.max_samples is not None:
            n = min(n, self.max_samples)
        gain = level_gain(noisy[:, :n], VALIDATION_LEVEL_DB)
        return ValidationBatch(noisy=noisy[:, :n] * gain, clean=None if clean is None else clean[:, :n] * gain,
                               name=[self.names[index]])


def pair_by_relative_path(noisy_root: str | Path, clean_root: str | Path
                          ) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Match files by relative path without extension ('a/b.wav' <-> 'a/b.flac').

    Returns (pairs sorted by noisy path, unmatched noisy, unmatched clean)."""
    noisy_root, clean_root = Path(noisy_root), Path(clean_root)

    def index(root: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in find_audio_files(root):
            key = p.relative_to(root).with_suffix("").as_posix()
            if key in out:
                raise CorpusError(root, f"ambiguous pairing: {out[key].name} and {p.name} share the name {key}")
            out[key] = p
        return out

    noisy, clean = index(noisy_root), index(clean_root)
    pairs = [(noisy[k], clean[k]) for k in sorted(noisy) if k in clean]
    return pairs, [noisy[k] for k in sorted(noisy) if k not in clean], [clean[k] for k in sorted(clean) if k not in noisy]
