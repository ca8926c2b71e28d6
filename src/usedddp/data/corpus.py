"""A folder of audio files that random training segments are drawn from."""

from __future__ import annotations

import logging
import warnings
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
                       speed: tuple[float, float] | None = None,
                       pitch_hz: tuple[float, float] | None = None) -> torch.Tensor:
        """(1, num_samples) crop of a random file; shorter files are tiled (loop) or zero-padded
        at a random offset. All randomness comes from `generator`, for reproducible items.

        `speed=(lo, hi)`: speed perturbation (Ko et al., "Audio augmentation for speech
        recognition", Interspeech 2015) by a factor drawn uniformly from [lo, hi] in steps of
        0.01: a crop of factor * num_samples samples resampled to num_samples, which moves pitch
        and formants together, so a prior of few voices covers more of them.

        `pitch_hz=(lo, hi)`: the segment's median F0 moved to a value drawn uniformly from
        [lo, hi] Hz by PSOLA (pitch_shift_psola), with its duration, formants and bandwidth kept."""
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
            if pitch_hz is not None:
                target = pitch_hz[0] + (pitch_hz[1] - pitch_hz[0]) * float(torch.rand((), generator=generator))
                seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
                segment = pitch_shift_psola(segment, self.sample_rate, target, seed)
            return segment

    def summary(self) -> str:
        return (f"{self.name}: {len(self)} files ({self.total_seconds:.1f} s) from {self.root}; "
                f"{len(self.skipped)} skipped")


def pitch_range(value) -> tuple[float, float] | None:
    """data.prior_pitch_hz as (lo, hi) Hz, checked; None stays None."""
    if value is None:
        return None
    lo, hi = map(float, value)
    if not 50.0 <= lo <= hi <= 500.0:
        raise ValueError(f"data.prior_pitch_hz={[lo, hi]}: give [lo, hi] Hz with 50 <= lo <= hi <= 500 (a median F0 range)")
    return lo, hi


def pitch_shift_psola(wav: torch.Tensor, sample_rate: int, median_f0_hz: float, seed: int = 0) -> torch.Tensor:
    """(1, T) speech with its median F0 moved to `median_f0_hz`, duration and formants kept:
    Praat's "Change gender" (TD-PSOLA, Moulines & Charpentier, "Pitch-synchronous waveform
    processing techniques for text-to-speech synthesis using diphones", Speech Communication
    1990; Boersma & Weenink, Praat) with formant shift 1 and pitch range factor 1. Unlike speed
    perturbation it keeps the whole band: a slowed crop has nothing above factor x Nyquist. A
    segment Praat finds no voicing in is returned unchanged. PSOLA places the pulses of unvoiced
    stretches at random: Praat's generator is seeded with `seed`, so a draw is reproducible."""
    import parselmouth
    from parselmouth.praat import call, run

    sound = parselmouth.Sound(wav[0].double().numpy(), sampling_frequency=float(sample_rate))
    try:
        run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", parselmouth.PraatWarning)  # "no voiced segments found"
            shifted = call(sound, "Change gender", 75.0, 600.0, 1.0, float(median_f0_hz), 1.0, 1.0).values[0]
    except parselmouth.PraatError:
        return wav
    out = torch.from_numpy(shifted).to(wav.dtype)[: wav.shape[-1]]
    if not torch.isfinite(out).all():
        return wav
    return F.pad(out, (0, wav.shape[-1] - out.shape[-1]))[None]


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
