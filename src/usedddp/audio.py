"""Audio file I/O: every read and write in the package goes through here (soundfile only)."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from einops import reduce

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

# Reduced resampling ratios above this make torchaudio build a (new, old)-sized sinc kernel
# (gigabytes for e.g. 22051 -> 16000 Hz); such odd rates are rounded to the nearest 100 Hz.
_MAX_REDUCED_RATE = 4000


class _PathError(ValueError):
    """An error about one path; the message always starts with that path.

    The one-argument form keeps the class re-raisable by DataLoader workers, which rebuild
    exceptions from a single message string.
    """

    def __init__(self, path: str | Path, problem: str | None = None):
        self.path, self.problem = str(path), problem
        super().__init__(self.path if problem is None else f"{self.path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class AudioFileError(_PathError):
    """One audio file cannot be used (unreadable, empty, non-finite samples, ...)."""


class CorpusError(_PathError):
    """A folder of audio cannot be used (missing, empty, nothing usable in it)."""


def find_audio_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise CorpusError(root, "folder does not exist")
    if not root.is_dir():
        raise CorpusError(root, "is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise CorpusError(root, f"no audio files found (looked recursively for {', '.join(AUDIO_EXTENSIONS)})")
    return files


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample_rate, channels) from the header, without decoding."""
    path = _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AudioFileError(path, f"cannot be read ({e})") from e
    return info.frames, info.samplerate, info.channels


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform of shape (1, T) at `sample_rate`."""
    path = _check_file(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AudioFileError(path, f"cannot be read ({e})") from e
    if data.shape[0] == 0:
        raise AudioFileError(path, "file is empty (0 samples)")
    # Checked before resampling, which would smear a single bad sample over its neighbours.
    if not np.isfinite(data).all():
        raise AudioFileError(path, "contains NaN/Inf samples")
    wav = reduce(torch.from_numpy(data), "t c -> 1 t", "mean")
    return resample(wav, sr, sample_rate)


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    if orig_rate == new_rate:
        return wav
    if orig_rate // gcd(orig_rate, new_rate) > _MAX_REDUCED_RATE:
        orig_rate = max(100, round(orig_rate / 100) * 100)  # <0.5% pitch error at worst
    return AF.resample(wav, orig_rate, new_rate)


def save_audio(path: str | Path, wav, sample_rate: int, overwrite: bool = False) -> Path:
    """Write a mono (1, T) or (T,) waveform as 16-bit PCM .wav, 16-bit .flac or Ogg Vorbis .ogg."""
    path = Path(path)
    subtypes = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
    if path.suffix.lower() not in subtypes:
        raise ValueError(f"{path}: unsupported output extension (use .wav, .flac or .ogg)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    data = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    if data.ndim == 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 1:
        raise ValueError(f"{path}: expected a mono waveform of shape (1, T) or (T,), got {tuple(data.shape)}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: refusing to write NaN/Inf samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, subtype = subtypes[path.suffix.lower()]
    sf.write(str(path), np.clip(data, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
    return path


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise AudioFileError(path, "is a directory")
    if not path.exists():
        raise AudioFileError(path, "file does not exist")
    return path
