"""A folder of audio files that random training segments are drawn from."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from einops import repeat

from ..audio import AudioFileError, CorpusError, audio_info, find_audio_files, load_audio

log = logging.getLogger("usedddp.data")


class AudioCorpus:
    """Usable audio files under `root`, resampled to `sample_rate` mono on load.

    Unusable files (unreadable, shorter than `min_samples`, NaN/Inf) are skipped with one
    warning each and listed in `skipped`, so one bad file does not stop a long training run.
    `exclude` removes files held out elsewhere (e.g. for validation).
    """

    def __init__(self, root: str | Path, sample_rate: int, min_samples: int, preload: bool = True,
                 name: str = "corpus", exclude: Iterable[str | Path] = ()):
        self.root, self.sample_rate, self.min_samples, self.name = Path(root), sample_rate, min_samples, name
        self.skipped: list[tuple[Path, str]] = []
        excluded = {Path(p).resolve() for p in exclude}
        self._files: list[Path] = []
        self._lengths: list[int] = []  # samples at self.sample_rate, from the headers until loaded
        for path in find_audio_files(self.root):
            if path.resolve() in excluded:
                continue
            try:
                frames, sr, _ = audio_info(path)
            except AudioFileError as e:
                self._skip(path, e.problem)
                continue
            n = round(frames * sample_rate / sr)
            if n < max(min_samples, 1):
                self._skip(path, f"too short ({n} samples at {sample_rate} Hz, need {max(min_samples, 1)})")
                continue
            self._files.append(path)
            self._lengths.append(n)
        self._cache: list[torch.Tensor] | None = None
        if preload:
            cache, keep = [], []
            for i, path in enumerate(self._files):
                try:
                    cache.append(load_audio(path, sample_rate))
                    keep.append(i)
                except AudioFileError as e:
                    self._skip(path, e.problem)
            self._files = [self._files[i] for i in keep]
            self._lengths = [w.shape[-1] for w in cache]
            self._cache = cache
        if not self._files:
            reasons = "; ".join(f"{p.name}: {r}" for p, r in self.skipped[:5])
            raise CorpusError(self.root, f"no usable audio file for {name} ({len(self.skipped)} skipped: {reasons})")

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append((path, reason))
        log.warning("%s: skipping %s: %s", self.name, path, reason)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def total_seconds(self) -> float:
        return sum(self._lengths) / self.sample_rate

    def load(self, i: int) -> torch.Tensor:
        """(1, T) waveform of file i."""
        return self._cache[i] if self._cache is not None else load_audio(self._files[i], self.sample_rate)

    def random_segment(self, num_samples: int, generator: torch.Generator, loop: bool = False,
                       speed: tuple[float, float] | None = None) -> torch.Tensor:
        """(1, num_samples) crop of a random file; shorter files are tiled (loop) or zero-padded
        at a random offset. All randomness comes from `generator`, for reproducible items.

        `speed=(lo, hi)`: speed perturbation (Ko et al., "Audio augmentation for speech
        recognition", Interspeech 2015) by a factor drawn uniformly from [lo, hi] in steps of
        0.01: a crop of factor * num_samples samples resampled to num_samples, which moves pitch
        and formants together, so a prior of few voices covers more of them."""
        factor = 1.0
        if speed is not None:
            lo, hi = round(100 * speed[0]), round(100 * speed[1])
            factor = int(torch.randint(lo, hi + 1, (1,), generator=generator)) / 100
        n = round(num_samples * factor)
        while True:
            if not self._files:
                raise CorpusError(self.root, f"every file of {self.name} failed to load")
            i = int(torch.randint(len(self._files), (1,), generator=generator))
            try:
                wav = self.load(i)
            except AudioFileError as e:
                # Only reachable without preload; drop the file so it is reported once per process.
                self._skip(self._files[i], e.problem)
                del self._files[i], self._lengths[i]
                continue
            segment = _fit(wav, n, generator, loop)
            if factor != 1.0:
                segment = AF.resample(segment, round(100 * factor), 100)[:, :num_samples]
                segment = F.pad(segment, (0, num_samples - segment.shape[-1]))
            return segment

    def summary(self) -> str:
        return (f"{self.name}: {len(self)} files ({self.total_seconds:.1f} s) from {self.root}; "
                f"{len(self.skipped)} skipped")


def _fit(wav: torch.Tensor, n: int, generator: torch.Generator, loop: bool) -> torch.Tensor:
    t = wav.shape[-1]
    if t < n and loop:
        # One extra period so any start offset within the first period leaves n samples.
        wav = repeat(wav, "c t -> c (r t)", r=-(-n // t) + 1)
        start = int(torch.randint(t, (1,), generator=generator))
        return wav[:, start:start + n]
    if t < n:
        offset = int(torch.randint(n - t + 1, (1,), generator=generator))
        return F.pad(wav, (offset, n - t - offset))
    start = int(torch.randint(t - n + 1, (1,), generator=generator))
    return wav[:, start:start + n]
