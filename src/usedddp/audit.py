"""Audit the corpora a run learns from: `python -m usedddp.audit [overrides] output=DIR`.

USE-DDP's discriminators impose whatever the prior corpora contain, including what nobody meant:
a clean prior that is band-limited or gated to digital silence lets the clean discriminator tell
real from fake by bandwidth or noise floor alone, and the clean stream learns a low-pass filter
or a gate. The audit measures every corpus of a training configuration (clean prior `prior`,
noise prior `noise`, real noisy training data `data`, the test set's clean references `test`),
compares them, and turns each mismatch beyond a stated threshold into a warning. Training runs
the same audit before its first step (train.yaml's `audit:` node), with the same settings.

    python -m usedddp.audit [prior=... noise=... data=... experiment=...] output=DIR [overwrite=true]

Writes DIR/audit.json (`corpora`, `comparisons`, `warnings`, `settings`) and DIR/audit.md, and
prints the table. The core is plain functions, usable from a notebook: `audit_corpora`,
`audit_config`, `markdown_report`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import hydra
import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue
from scipy.ndimage import maximum_filter1d
from scipy.signal import lfilter
from scipy.special import digamma, erf, gammaln

from usedddp.audio import AudioFileError, CorpusError, audio_info, find_audio_files, load_audio, resample
from usedddp.config import CONFIG_DIR, prepare_argv  # also registers the ${usedddp_demo_root:} resolver

log = logging.getLogger("usedddp.audit")

USAGE = "python -m usedddp.audit [prior=... noise=... data=... experiment=...] output=DIR [overwrite=true]"

CORPORA = ("prior", "noise", "data", "test")
REFERENCE_NAMES = {"data": "the noisy training data", "test": "the test set's clean references"}
SPEECH_CORPORA = ("prior", "data", "test")

# ---- measurement constants
FRAME_SECONDS = 0.016  # frame energies for the floor: 16 ms, short enough to land inside pauses
LTAS_SECONDS = 0.032  # FFT length of the long-term average spectrum (512 points at 16 kHz)
# Effective bandwidth: the frequency above which the long-term average spectrum stays this far
# below its peak. 50 dB, measured on the embedded corpora (per-file LTAS): every file of
# clean_testset, noisy_trainset and the wideband clean_prior (and 37 of 39 of clean_prior_matched)
# then reaches 6 kHz, while 19 of the 50 clean_prior_bandlimited files, whose 6-8 kHz band lies
# 55-90 dB below the peak, end below it. At 40 dB wideband files read short (12 of 57 of
# clean_prior below 6 kHz); at 60 dB the band-limited files' residue counts (only 9 flagged).
BANDWIDTH_DROP_DB = 50.0
BAND_LIMITED_FRACTION = 0.75  # a file is band-limited when its bandwidth is under 75% of Nyquist (6 kHz at 16 kHz)
SILENCE_DB = -60.0  # frames this far below the active level count as (near-)digital silence
# A file is gated when its quietest 10% of frames lie this far below its active level: a
# recording's own noise floor sits higher. Every file of clean_testset (-32 dB at the lowest),
# clean_prior (-35), clean_prior_matched (-38) and the noisy sets is above it; 21 of the 50
# clean_prior_bandlimited files (digital silence between words) reach -45..-66 dB.
GATED_FLOOR_DB = -45.0
# ITU-T P.56 (12/2011) method B constants.
P56_TIME_CONSTANT = 0.03
P56_HANGOVER = 0.2
P56_MARGIN_DB = 15.9
# WADA-SNR (Kim & Stern 2008): speech amplitudes follow a gamma distribution of shape 0.4.
WADA_ALPHA = 0.4
WADA_SNR_RANGE = (-20, 100)
# Silero VAD on 32 ms chunks of 16 kHz audio; 0.5 is its own default speech threshold.
VAD_RATE = 16000
VAD_CHUNK = 512
VAD_CONTEXT = 64
VAD_THRESHOLD = 0.5
VAD_BATCH = 32

# Speech bandwidth: where the speech of a file ends, not its noise (speech_bandwidth_hz). A noisy
# recording's whole-file LTAS reaches Nyquist wherever its noise does, so noisy data read wideband
# against any clean prior (issue 25: a wideband prior, median file edge 6188 Hz, drew "46% ... end
# below 6000 Hz against 0% of the noisy training data"). Per 250 Hz band, the speech is seen where
# the loud tail (95th percentile) of its speech frames stands SPEECH_OVER_NOISE_DB over the same
# percentile of its speech-free frames and its mean excess over them is within BANDWIDTH_DROP_DB of
# its peak; its band is the run of such bands upwards from the strongest, bridging masked stretches
# of up to SPEECH_GAP_HZ (voiced energy fades near 4 kHz, fricatives sit above, and at 0-15 dB the
# stretch between is often masked). The loud tail rather than the mean: fricatives fill a fifth of
# the speech frames, and the mean drowns them in the noise. Masked bands read as unseen, so on noisy
# data this is a lower bound on the speech's edge; on a clean file it is about the whole-file edge.
# Measured on tests/test_audit.py's beds (24 noisy files of two demo voices in six wideband
# ambiences at 0-15 dB, 10 draws): the speech of 71-83% of the files reaches 4.5 kHz, so a prior
# low-passed at 4 kHz is flagged; with the speech itself low-passed at 4 kHz, 29-50% still read
# wider (6 draws): noise that bursts during speech (birds, crickets, crackle) passes for speech,
# the residue this measure cannot tell apart.
SPEECH_BAND_HZ = 250.0
SPEECH_PERCENTILE = 95.0
SPEECH_OVER_NOISE_DB = 6.0
SPEECH_GAP_HZ = 1000.0
SPEECH_MIN_FRAMES = 8  # speech frames (and speech-free frames) needed, 128 ms at a 16 ms hop
# Speech frames: VAD speech whose power is at least this far over the speech-free frames' mean
# (VAD hangover in pauses drops out); without the VAD, frames SPEECH_LEVEL_NO_VAD_DB over the noise
# floor, the bands' NOISE_PERCENTILE over all frames, which also stands in for too few pauses.
SPEECH_LEVEL_DB = 3.0
SPEECH_LEVEL_NO_VAD_DB = 10.0
NOISE_PERCENTILE = 20.0

# ---- warning thresholds
# Bandwidth: the clean prior's files end below a frequency T (whole-file LTAS: an upper bound on
# where their speech ends) this much more often than the reference's speech fails to reach
# T + BANDWIDTH_MARGIN_HZ (speech_bandwidth_hz: a lower bound), at the T <= 75% of Nyquist where
# the difference is largest; or the other way round (the reference's files end below T, noise and
# all, while the prior's speech reaches beyond). Bounds on both sides, so that a noisy reference
# never reads wider than its speech. clean_prior_bandlimited against the demo test references:
# 0.22 at 4750 Hz (0.38 at 6 kHz with whole-file edges on both sides, before issue 25: three of
# tuxpaint_ro's references have their speech under their room noise above 5-5.25 kHz); the
# wideband priors 0, the rolled-off prior against noisy data of the same kind 0-0.04 (was
# 0.5-0.6), a 4 kHz low-passed prior 0.71-0.83. The margin is one band of the speech measure.
BAND_LIMITED_SHARE_GAP = 0.2
BANDWIDTH_MARGIN_HZ = 250.0
# Noise floor: gated files (see GATED_FLOOR_DB) this much more common in the prior than in the
# reference: clean_prior_bandlimited 42%, every other embedded corpus 0%.
GATED_SHARE_GAP = 0.2
# ... or frames at or below SILENCE_DB this much more common (a prior with long zeroed gaps)...
SILENCE_SHARE_GAP = 0.05
# ... or a prior whose floor (median file, quietest 10% of frames re the active level) is this
# far below the test references': clean_prior_bandlimited -40 dB against -18 dB; the wideband
# clean_prior, other speakers recorded elsewhere, -29 dB (11 dB lower, no warning).
FLOOR_GAP_DB = 15.0
# Speech in the noise prior: over this share of its frames flagged as speech. The demo noise
# prior has 4% (a laugh and party babble, listed by name); noise without voices 0-1%.
NOISE_SPEECH_SHARE = 0.1
NOISE_SPEECH_FILE_SHARE = 0.5  # a noise file with more speech frames than this is listed by name
# A clean prior with fewer speech frames than this is probably not speech (wrong folder): the
# demo speech corpora have 69-91%.
PRIOR_SPEECH_SHARE = 0.3
# Files shorter than a training segment are zero-padded (digital silence at the edges): warn when
# more than this share of a prior or of the noisy data is that short.
SHORT_FILE_SHARE = 0.25
# The noisy data's median WADA-SNR outside the simulated mixtures' snr_db range by more than this
# (WADA-SNR's own error on real noise is a few dB).
SNR_RANGE_MARGIN_DB = 5.0
# Training does not boost segments below -60 dBFS RMS (data/datasets.py SILENCE_RMS): a corpus
# whose median active level is within 5 dB of that is partly treated as silence.
LOW_LEVEL_DBFS = -55.0
# Noise prior vs the noise of the noisy data (its speech-free frames): the noise prior's LTAS
# bandwidth under this fraction of the data noise's.
NOISE_BANDWIDTH_RATIO = 0.8
NOISE_MIN_SECONDS = 2.0  # speech-free seconds of the noisy data needed to estimate its noise

# Voices: a file's F0 is the median pitch (torchaudio's NCCF detector, 60-400 Hz) of its 20 ms
# frames within F0_FRAME_DB of its active level. The prior covers the files' median F0 from its
# 5th to 95th percentile, stretched by the speed perturbation of training and by VOICE_MARGIN;
# more than VOICE_SHARE of the data's (or test's) files outside is a `voice_range` warning. On the
# demo corpus: the one-voice wideband prior's files lie at 214-263 Hz, the male test voice's at
# 110-150 Hz, and a model trained on that prior removed noise for the female test voices and
# damaged the male one (README, the clean prior).
F0_FRAME_DB = -15.0
F0_RANGE_HZ = (60.0, 400.0)
VOICE_MARGIN = 0.1
VOICE_SHARE = 0.2
# Test references that are not clean: a clean reference whose WADA-SNR is below
# NOISY_REFERENCE_SNR_DB carries noise of its own, which reference-based scores (SI-SDR, PESQ,
# STOI/ESTOI) count as speech, so removing it scores as distortion; more than NOISY_REFERENCE_SHARE
# of the references like that is a `noisy_reference` warning. On the demo test set: 2 of 16 (both
# of tuxpaint_ro_Tabbytha's room recordings, WADA-SNR 4.9 and -1.2 dB; the rest 11.6-31.2 dB).
NOISY_REFERENCE_SNR_DB = 10.0
NOISY_REFERENCE_SHARE = 0.1

THRESHOLDS = {
    "bandwidth_drop_db": BANDWIDTH_DROP_DB, "band_limited_fraction_of_nyquist": BAND_LIMITED_FRACTION,
    "band_limited_share_gap": BAND_LIMITED_SHARE_GAP, "bandwidth_margin_hz": BANDWIDTH_MARGIN_HZ,
    "speech_band_hz": SPEECH_BAND_HZ, "speech_percentile": SPEECH_PERCENTILE,
    "speech_over_noise_db": SPEECH_OVER_NOISE_DB, "speech_gap_hz": SPEECH_GAP_HZ, "gated_floor_db": GATED_FLOOR_DB,
    "gated_share_gap": GATED_SHARE_GAP, "silence_db": SILENCE_DB, "silence_share_gap": SILENCE_SHARE_GAP,
    "floor_gap_db": FLOOR_GAP_DB,
    "noise_speech_share": NOISE_SPEECH_SHARE, "noise_speech_file_share": NOISE_SPEECH_FILE_SHARE,
    "prior_speech_share": PRIOR_SPEECH_SHARE, "short_file_share": SHORT_FILE_SHARE,
    "snr_range_margin_db": SNR_RANGE_MARGIN_DB, "low_level_dbfs": LOW_LEVEL_DBFS,
    "noise_bandwidth_ratio": NOISE_BANDWIDTH_RATIO, "noise_min_seconds": NOISE_MIN_SECONDS,
    "vad_threshold": VAD_THRESHOLD, "f0_frame_db": F0_FRAME_DB, "voice_margin": VOICE_MARGIN, "voice_share": VOICE_SHARE,
    "noisy_reference_snr_db": NOISY_REFERENCE_SNR_DB, "noisy_reference_share": NOISY_REFERENCE_SHARE,
}


class AuditError(ValueError):
    """The audit cannot run (missing output, unsafe output)."""


@dataclass
class AuditSettings:
    max_files: int = 100  # per corpus, drawn at random when a corpus has more
    max_seconds: float = 10.0  # per file: a random crop of longer files
    seed: int = 0
    vad: bool = True


@dataclass
class AuditWarning:
    kind: str
    corpus: str
    message: str
    value: float | None = None
    threshold: float | None = None


# --------------------------------------------------------------------------------------------
# Measurements of one waveform


def active_level_db(x: np.ndarray, sample_rate: int) -> float:
    """Active speech level in dBFS after ITU-T P.56 (12/2011), "Objective measurement of active
    speech level", method B: a 30 ms two-stage envelope, 200 ms hangover, 15.9 dB margin.

    Simplified: the thresholds are a 1 dB ladder from -100 dBFS (the standard steps by factors of
    two) and the level is read where the ladder crosses the margin, interpolated linearly. Unlike
    the RMS it ignores pauses, so the floors below are relative to the speech, not to its gaps.
    """
    g = math.exp(-1.0 / (P56_TIME_CONSTANT * sample_rate))
    envelope = lfilter([1 - g], [1, -g], lfilter([1 - g], [1, -g], np.abs(x.astype(np.float64))))
    hang = max(1, round(P56_HANGOVER * sample_rate))
    held = np.sort(maximum_filter1d(envelope, size=hang + 1, origin=hang // 2))  # max over [n - hang, n]
    energy = float(np.sum(np.square(x, dtype=np.float64)))
    thresholds_db = np.arange(-100.0, 1.0)
    active = len(held) - np.searchsorted(held, 10 ** (thresholds_db / 20), side="left")
    valid = active > 0
    if energy <= 0 or not valid.any():
        return float("nan")
    level = 10 * np.log10(energy / active[valid])
    excess = level - thresholds_db[valid]  # falls as the threshold rises
    below = np.flatnonzero(excess <= P56_MARGIN_DB)
    if len(below) == 0:
        return float(level[-1])
    j = below[0]
    if j == 0:
        return float(level[0])
    t = (excess[j - 1] - P56_MARGIN_DB) / (excess[j - 1] - excess[j])
    return float(level[j - 1] + t * (level[j] - level[j - 1]))


def frame_levels_db(x: np.ndarray, sample_rate: int, seconds: float = FRAME_SECONDS) -> np.ndarray:
    """Energy of consecutive non-overlapping frames in dBFS (digital silence reads -200 dB)."""
    n = max(1, round(seconds * sample_rate))
    frames = x[: len(x) // n * n].reshape(-1, n).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)


def ltas_frames(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Power spectra (frames, bins) of Hann-windowed frames of LTAS_SECONDS, hop half of that."""
    n_fft = _n_fft(sample_rate)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[:: n_fft // 2]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2


def bandwidth_hz(psd: np.ndarray, sample_rate: int, drop_db: float = BANDWIDTH_DROP_DB) -> float:
    """The frequency above which the spectrum `psd` stays more than `drop_db` below its peak
    (the peak is searched above 50 Hz, so a DC offset or rumble does not set it)."""
    freqs = np.fft.rfftfreq(2 * (len(psd) - 1), 1 / sample_rate)
    psd = np.asarray(psd, np.float64)
    peak = psd[freqs >= 50].max(initial=0.0)
    if peak <= 0:
        return 0.0
    above = np.flatnonzero(psd > peak * 10 ** (-drop_db / 10))
    return float(freqs[above[-1]]) if len(above) else 0.0


def top_band_db(psd: np.ndarray, sample_rate: int) -> float:
    """Mean level of the top quarter of the band (6-8 kHz at 16 kHz) in dB below the peak."""
    freqs = np.fft.rfftfreq(2 * (len(psd) - 1), 1 / sample_rate)
    peak = psd[freqs >= 50].max(initial=0.0)
    band = psd[freqs >= 0.75 * sample_rate / 2].mean()
    return float(10 * np.log10(band / peak + 1e-30)) if peak > 0 else float("nan")


def speech_bandwidth_hz(x: np.ndarray, sample_rate: int, speech: np.ndarray | None = None,
                        drop_db: float = BANDWIDTH_DROP_DB) -> float:
    """Where the speech of a recording ends, noise or not (see SPEECH_BAND_HZ): the top of the run
    of 250 Hz bands, upwards from the speech's strongest band, in which the speech frames' loud
    tail stands SPEECH_OVER_NOISE_DB over the speech-free frames' and the speech's mean excess is
    within `drop_db` of its peak, masked stretches up to SPEECH_GAP_HZ bridged. `speech`: VAD
    decisions per VAD_CHUNK at VAD_RATE (None: frames are told apart by level). NaN when too few
    frames qualify: nothing to say about that file's speech."""
    spectra = ltas_frames(x, sample_rate)
    power = spectra.sum(axis=1)
    n_fft = 2 * (spectra.shape[1] - 1)
    width = max(1, round(SPEECH_BAND_HZ * n_fft / sample_rate))
    n_bands = (spectra.shape[1] - 1) // width
    bands = spectra[:, 1:1 + n_bands * width].reshape(len(spectra), n_bands, width).mean(axis=2)  # DC left out
    free = active = None
    if speech is not None and len(speech):
        chunk = _vad_chunk_of_frames(len(spectra), len(speech), sample_rate)
        near_speech = np.convolve(speech.astype(float), np.ones(3), mode="same") > 0
        free, active = ~near_speech[chunk], speech[chunk]
    if free is not None and free.sum() >= SPEECH_MIN_FRAMES and active.sum() >= SPEECH_MIN_FRAMES:
        noise_mean = bands[free].mean(axis=0)
        noise_tail = np.percentile(bands[free], SPEECH_PERCENTILE, axis=0)
    else:
        # Too few pauses for the VAD's speech-free frames (tightly cut utterances), or no VAD:
        # each band's NOISE_PERCENTILE over all frames, minimum statistics after Martin, "Noise
        # power spectral density estimation based on optimal smoothing and minimum statistics"
        # (IEEE TSAP 2001), without his bias correction, since it serves as the tail too: a band
        # of steady noise has its 95th percentile 4-5 dB over its 20th, under SPEECH_OVER_NOISE_DB.
        # Quietest frames by total power would not do: those are the fricatives.
        noise_mean = noise_tail = np.percentile(bands, NOISE_PERCENTILE, axis=0)
        if free is not None and active.sum() < SPEECH_MIN_FRAMES:
            active = None  # the VAD found no speech: a noise-like signal, or speech under heavy noise
    floor = noise_mean.sum() * width
    if active is not None:
        active = active & (power >= floor * 10 ** (SPEECH_LEVEL_DB / 10))
    if active is None or active.sum() < SPEECH_MIN_FRAMES:
        active = power >= floor * 10 ** (SPEECH_LEVEL_NO_VAD_DB / 10)
    if active.sum() < SPEECH_MIN_FRAMES:
        return float("nan")
    loud = bands[active]
    excess = loud.mean(axis=0) - noise_mean
    start = int(np.argmax(excess))
    if excess[start] <= 0:
        return float("nan")
    seen = (np.percentile(loud, SPEECH_PERCENTILE, axis=0) > 10 ** (SPEECH_OVER_NOISE_DB / 10) * noise_tail) \
        & (excess > excess[start] * 10 ** (-drop_db / 10))
    if not seen[start]:
        return float("nan")
    last, masked, bridge = start, 0, max(0, round(SPEECH_GAP_HZ / SPEECH_BAND_HZ))
    for band in range(start + 1, n_bands):
        if seen[band]:
            last, masked = band, 0
        else:
            masked += 1
            if masked > bridge:
                break
    return float((last + 1) * width * sample_rate / n_fft)  # the band's top bin


@lru_cache(maxsize=1)
def wada_table() -> tuple[np.ndarray, np.ndarray]:
    """(SNR dB, G) of WADA-SNR: G = ln E|z| - E ln|z| of z = a s + n, s symmetric gamma(0.4)
    of unit power, n unit Gaussian, a = 10^(SNR/20).

    Computed by quadrature (under a second, once per process) rather than copied: the table
    passed between implementations is a Monte-Carlo estimate, not monotone below -15 dB; this
    one is, and agrees with it within 0.006 everywhere.
    """
    theta = 1 / math.sqrt(WADA_ALPHA * (WADA_ALPHA + 1))  # gamma scale that gives s unit power
    # g = e^u turns the gamma weight g^(alpha-1) e^-g into a smooth, fast-decaying one in u,
    # on which the trapezoid rule converges quickly.
    du = 0.1
    u = np.arange(-60.0, 3.0, du)
    weight = np.exp(WADA_ALPHA * u - np.exp(u) - gammaln(WADA_ALPHA)) * du
    snr = np.arange(WADA_SNR_RANGE[0], WADA_SNR_RANGE[1] + 1, dtype=np.float64)
    m = (10 ** (snr / 20))[:, None] * theta * np.exp(u)[None, :]
    mean_abs = np.sqrt(2 / np.pi) * np.exp(-(m**2) / 2) + m * erf(m / math.sqrt(2))
    g = np.log(mean_abs @ weight) - _mean_log_abs_gaussian(m) @ weight
    return snr, g


def _mean_log_abs_gaussian(m: np.ndarray) -> np.ndarray:
    """E ln|m + n| for n ~ N(0, 1): (m + n)^2 is noncentral chi-square with one degree of
    freedom, a Poisson(m^2/2) mixture of chi-squares with 1 + 2k, each E ln = ln 2 + psi(1/2 + k);
    above m = 8 the asymptotic series ln m - 1/(2m^2) - 3/(4m^4) - 5/(2m^6) is exact to 1e-6."""
    m = np.abs(m)
    out = np.empty_like(m)
    big = m > 8
    x = m[big]
    out[big] = np.log(x) - 0.5 / x**2 - 0.75 / x**4 - 2.5 / x**6
    lam = m[~big] ** 2 / 2
    k = np.arange(120.0)[:, None]
    log_p = k * np.log(np.maximum(lam, 1e-300)) - lam - gammaln(k + 1)
    log_p[0] = -lam  # k = 0 (also where lam = 0)
    out[~big] = 0.5 * (math.log(2) + (np.exp(log_p) * digamma(0.5 + k)).sum(axis=0))
    return out


def wada_snr_db(x: np.ndarray) -> float:
    """Blind SNR estimate of a speech waveform: WADA-SNR, Kim & Stern, "Robust signal-to-noise
    ratio estimation based on waveform amplitude distribution analysis", Interspeech 2008.

    Clipped to the table's -20..100 dB: digital silence (many exact zeros) reads as very clean.
    """
    x = np.asarray(x, np.float64)
    peak = np.abs(x).max(initial=0.0)
    if peak == 0:
        return float("nan")
    a = np.maximum(np.abs(x / peak), 1e-10)
    g = math.log(max(a.mean(), 1e-10)) - np.log(a).mean()
    snr, table = wada_table()
    return float(np.interp(g, table, snr))


# --------------------------------------------------------------------------------------------
# Voice activity


class SileroVAD:
    """Silero VAD (Silero Team, https://github.com/snakers4/silero-vad) through onnxruntime on the
    ONNX model that the silero-vad wheel ships: nothing is downloaded.

    The package is located, not imported: importing it sets torch's thread count to 1 for the
    whole process, which would slow the training that runs this audit.
    """

    def __init__(self):
        import onnxruntime

        spec = importlib.util.find_spec("silero_vad")
        if spec is None or spec.origin is None:
            raise ImportError("silero-vad is not installed: pip install silero-vad")
        self.model_path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
        if not self.model_path.is_file():
            raise ImportError(f"{self.model_path}: silero-vad's ONNX model is missing")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.model_path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.version = metadata.version("silero-vad")

    def __call__(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Speech probability of each whole 32 ms chunk of each 16 kHz waveform."""
        out: list[np.ndarray | None] = [None] * len(wavs)
        order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
        for start in range(0, len(order), VAD_BATCH):
            batch = order[start:start + VAD_BATCH]
            chunks = [len(wavs[i]) // VAD_CHUNK for i in batch]
            x = np.zeros((len(batch), max(chunks) * VAD_CHUNK + VAD_CHUNK), np.float32)
            for row, i in enumerate(batch):
                x[row, : len(wavs[i])] = wavs[i]
            state = np.zeros((2, len(batch), 128), np.float32)
            context = np.zeros((len(batch), VAD_CONTEXT), np.float32)
            sr = np.array(VAD_RATE, np.int64)
            probs = []
            for j in range(max(chunks)):
                window = np.concatenate([context, x[:, j * VAD_CHUNK:(j + 1) * VAD_CHUNK]], axis=1)
                p, state = self.session.run(None, {"input": window, "state": state, "sr": sr})
                probs.append(p[:, 0])
                context = window[:, -VAD_CONTEXT:]
            probs = np.stack(probs, axis=1) if probs else np.zeros((len(batch), 0), np.float32)
            for row, i in enumerate(batch):
                out[i] = probs[row, : chunks[row]]
        return out


@lru_cache(maxsize=1)
def _vad() -> SileroVAD:
    return SileroVAD()


# --------------------------------------------------------------------------------------------
# One corpus


@dataclass
class _File:
    path: Path
    native_rate: int
    seconds: float  # whole file, from the header
    level_db: float = float("nan")
    frames_db: np.ndarray = field(default_factory=lambda: np.zeros(0))  # re the active level
    psd: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bandwidth_hz: float = float("nan")
    wada_snr_db: float = float("nan")
    f0_hz: float = float("nan")  # median F0 of the loud frames (speech corpora)
    speech: np.ndarray | None = None  # VAD decision per 32 ms chunk
    speech_bandwidth_hz: float = float("nan")  # where its speech ends, noise aside (speech corpora)
    noise_psd: np.ndarray | None = None  # summed power of the speech-free LTAS frames
    noise_frames: int = 0


def _n_fft(sample_rate: int) -> int:
    return 2 ** round(math.log2(LTAS_SECONDS * sample_rate))


def _read(path: Path, sample_rate: int, max_seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, int, float]:
    """(mono waveform at sample_rate, native rate, whole duration in s); longer files are read as
    a random crop of max_seconds, so a long recording is not decoded whole."""
    frames, native, _ = audio_info(path)
    if frames == 0:
        raise AudioFileError(path, "file is empty (0 samples)")
    crop = round(max_seconds * native)
    if frames <= crop:
        return load_audio(path, sample_rate)[0].numpy(), native, frames / native
    start = int(rng.integers(0, frames - crop + 1))
    try:
        data, _ = sf.read(str(path), start=start, frames=crop, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AudioFileError(path, f"cannot be read ({e})") from e
    if not np.isfinite(data).all():
        raise AudioFileError(path, "contains NaN/Inf samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))[None]
    return resample(wav, native, sample_rate)[0].numpy(), native, frames / native


def audit_corpus(folder: str | Path, sample_rate: int, settings: AuditSettings, *, stream: int = 0,
                 segment_seconds: float | None = None, speech: bool = True) -> tuple[dict, list[_File]]:
    """Measurements of the audio under `folder` at the model's `sample_rate` (a summary dict and
    the per-file measurements). `speech`: a speech corpus (WADA-SNR is measured). Unreadable
    files are skipped and listed; `stream` decorrelates the sampling of corpora."""
    folder = Path(folder)
    files = find_audio_files(folder)
    found = len(files)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, stream]))
    sampled = found > settings.max_files
    if sampled:
        files = [files[i] for i in sorted(rng.choice(found, settings.max_files, replace=False))]
    measured: list[_File] = []
    skipped: list[str] = []
    with _one_thread():
        # In batches of VAD_BATCH files: the VAD runs on a batch at once, and at most a batch of
        # waveforms is held.
        for start in range(0, len(files), VAD_BATCH):
            batch: list[tuple[_File, np.ndarray]] = []
            for path in files[start:start + VAD_BATCH]:
                try:
                    wav, native, seconds = _read(path, sample_rate, settings.max_seconds, rng)
                    batch.append((_measure(_File(path, native, seconds), wav, sample_rate, speech), wav))
                except AudioFileError as error:
                    skipped.append(str(error))
                    log.warning("audit: skipping %s", error)
            if settings.vad and batch:
                probs = _vad()([resample(torch.from_numpy(w)[None], sample_rate, VAD_RATE)[0].numpy() for _, w in batch])
                for (f, wav), p in zip(batch, probs):
                    f.speech = p >= VAD_THRESHOLD
                    f.noise_psd, f.noise_frames = _speech_free_spectrum(wav, f.speech, sample_rate)
            if speech:
                for f, wav in batch:
                    f.speech_bandwidth_hz = speech_bandwidth_hz(wav, sample_rate, f.speech)
            measured += [f for f, _ in batch]
    if not measured:
        raise CorpusError(folder, f"no usable audio file ({len(skipped)} skipped: {'; '.join(skipped[:3])})")
    return _summarise(folder, measured, skipped, found, sampled, sample_rate, segment_seconds, speech), measured


@contextmanager
def _one_thread():
    """Per-file tensors are small: torch's thread pool only adds synchronisation (on a busy
    2-core machine `load_audio` took 26 ms per file on two threads, 0.2 ms on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _measure(f: _File, wav: np.ndarray, sample_rate: int, speech: bool) -> _File:
    f.level_db = active_level_db(wav, sample_rate)
    if not math.isfinite(f.level_db):
        raise AudioFileError(f.path, "silent (nothing above -100 dBFS)")
    f.frames_db = frame_levels_db(wav, sample_rate) - f.level_db
    f.psd = ltas_frames(wav, sample_rate).mean(axis=0)
    f.bandwidth_hz = bandwidth_hz(f.psd, sample_rate)
    if speech:
        f.wada_snr_db = wada_snr_db(wav)
        f.f0_hz = median_f0_hz(wav, sample_rate, f.level_db)
    return f


def median_f0_hz(x: np.ndarray, sample_rate: int, level_db: float) -> float:
    """Median pitch of the 20 ms frames within F0_FRAME_DB of the active level `level_db`
    (torchaudio's normalised cross-correlation detector, median-smoothed over 15 frames); NaN for
    a file too short or too quiet. A voice's register, not a pitch track: enough to tell whose
    voices a corpus holds."""
    import torchaudio.functional as AF

    if len(x) < sample_rate // 5:
        return float("nan")
    f0 = AF.detect_pitch_frequency(torch.from_numpy(np.ascontiguousarray(x, np.float32)), sample_rate, frame_time=0.02,
                                   win_length=15, freq_low=int(F0_RANGE_HZ[0]), freq_high=int(F0_RANGE_HZ[1])).numpy()
    hop = len(x) // len(f0)
    energy = 10 * np.log10(np.mean(x[: hop * len(f0)].reshape(len(f0), hop) ** 2, axis=1) + 1e-20)
    loud = energy > level_db + F0_FRAME_DB
    return float(np.median(f0[loud])) if loud.any() else float("nan")


def _speech_free_spectrum(wav: np.ndarray, speech: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """Summed power spectrum of the LTAS frames that lie in speech-free VAD chunks at least one
    chunk away from any speech (the noise alone, in noisy recordings), and their count."""
    spectra = ltas_frames(wav, sample_rate)
    if not len(speech):
        return np.zeros(spectra.shape[1]), 0
    near_speech = np.convolve(speech.astype(float), np.ones(3), mode="same") > 0
    free = ~near_speech[_vad_chunk_of_frames(len(spectra), len(speech), sample_rate)]
    return spectra[free].sum(axis=0), int(free.sum())


def _vad_chunk_of_frames(n_frames: int, n_chunks: int, sample_rate: int) -> np.ndarray:
    """The VAD chunk that holds the centre of each LTAS frame."""
    hop = _n_fft(sample_rate) // 2
    centres = (np.arange(n_frames) * hop + hop) / sample_rate
    return np.minimum((centres * VAD_RATE / VAD_CHUNK).astype(int), n_chunks - 1)


def _stats(values, *quantiles) -> dict[str, float]:
    values = np.asarray([v for v in values if math.isfinite(v)], np.float64)
    if not len(values):
        return {}
    return {f"p{q}" if q != 50 else "median": round(float(np.percentile(values, q)), 1) for q in quantiles}


def _summarise(folder: Path, files: list[_File], skipped: list[str], found: int, sampled: bool,
               sample_rate: int, segment_seconds: float | None, speech: bool) -> dict:
    rates: dict[str, int] = {}
    for f in files:
        rates[str(f.native_rate)] = rates.get(str(f.native_rate), 0) + 1
    frames = np.concatenate([f.frames_db for f in files])
    psd = np.mean([f.psd for f in files], axis=0)
    nyquist = sample_rate / 2
    floors = [float(np.percentile(f.frames_db, 10)) for f in files if len(f.frames_db)]
    spans = [float(np.percentile(f.frames_db, 95) - np.percentile(f.frames_db, 10)) for f in files if len(f.frames_db)]
    audited_seconds = sum(f.seconds for f in files)
    out = {
        "dir": str(folder),
        "files_found": found,
        "files_audited": len(files),
        "sampled": sampled,
        "skipped": skipped,
        "seconds": round(audited_seconds * (found / (len(files) + len(skipped)) if sampled else 1.0), 1),
        "seconds_estimated": sampled,
        "seconds_measured": round(sum(len(f.frames_db) for f in files) * FRAME_SECONDS, 1),
        "native_sample_rates": dict(sorted(rates.items(), key=lambda kv: int(kv[0]))),
        "files_below_model_rate": sum(f.native_rate < sample_rate for f in files),
        "bandwidth_hz": round(bandwidth_hz(psd, sample_rate)),
        "file_bandwidth_hz": _stats([f.bandwidth_hz for f in files], 10, 50, 90),
        "band_limited_files": sum(f.bandwidth_hz < BAND_LIMITED_FRACTION * nyquist for f in files),
        # Every file's whole-file edge, and for speech corpora where its speech ends (None: too few
        # speech or speech-free frames to tell), for the prior comparisons.
        "file_bandwidths_hz": sorted(round(f.bandwidth_hz) for f in files),
        "speech_bandwidth_hz": _stats([f.speech_bandwidth_hz for f in files], 10, 50, 90) if speech else {},
        "file_speech_bandwidths_hz": sorted((round(f.speech_bandwidth_hz) if math.isfinite(f.speech_bandwidth_hz) else None
                                             for f in files), key=lambda v: (v is None, v or 0)) if speech else [],
        "top_band_db": _stats([top_band_db(f.psd, sample_rate) for f in files], 10, 50, 90),
        "active_level_dbfs": _stats([f.level_db for f in files], 10, 50, 90),
        "floor_db": _stats(floors, 0, 50, 100),
        "gated_files": sum(f < GATED_FLOOR_DB for f in floors),
        "silent_frames": round(float(np.mean(frames <= SILENCE_DB)), 4) if len(frames) else None,
        "dynamic_range_db": _stats(spans, 50),
        "wada_snr_db": _stats([f.wada_snr_db for f in files], 10, 50, 90) if speech else {},
        "f0_hz": _stats([f.f0_hz for f in files], 5, 50, 95) if speech else {},
        "file_f0_hz": sorted(round(f.f0_hz, 1) for f in files if math.isfinite(f.f0_hz)) if speech else [],
        "noisy_files": sorted(({"file": str(f.path.relative_to(folder)), "wada_snr_db": round(f.wada_snr_db, 1)}
                               for f in files if f.wada_snr_db < NOISY_REFERENCE_SNR_DB),
                              key=lambda r: r["wada_snr_db"]) if speech else [],
    }
    if segment_seconds:
        out["files_shorter_than_segment"] = sum(f.seconds < segment_seconds for f in files)
    if files[0].speech is not None:
        chunks = np.concatenate([f.speech for f in files])
        out["speech_frames"] = round(float(chunks.mean()), 4) if len(chunks) else None
        if not speech:
            out["speech_files"] = sorted(
                ({"file": str(f.path.relative_to(folder)), "speech_frames": round(float(f.speech.mean()), 3)}
                 for f in files if len(f.speech) and f.speech.mean() > NOISE_SPEECH_FILE_SHARE),
                key=lambda r: -r["speech_frames"])
        noise_frames = sum(f.noise_frames for f in files)
        if noise_frames:
            noise_psd = sum(f.noise_psd for f in files if f.noise_frames) / noise_frames
            out["speech_free"] = {
                "seconds": round(noise_frames * _n_fft(sample_rate) / 2 / sample_rate, 1),
                "bandwidth_hz": round(bandwidth_hz(noise_psd, sample_rate)),
                "top_band_db": round(top_band_db(noise_psd, sample_rate), 1),
            }
    return out


# --------------------------------------------------------------------------------------------
# Corpora, comparisons, warnings


def audit_corpora(dirs: dict[str, str | Path | None], sample_rate: int, settings: AuditSettings | None = None, *,
                  segment_seconds: float | None = None, snr_db: tuple[float, float] | None = None,
                  prior_speed: tuple[float, float] | None = None,
                  prior_pitch_hz: tuple[float, float] | None = None) -> dict:
    """Audit the folders named by corpus (`prior`, `noise`, `data`, `test`; None: absent) and
    compare them. Returns the audit.json document."""
    settings = settings or AuditSettings()
    started = time.perf_counter()
    corpora: dict[str, dict] = {}
    for stream, name in enumerate(CORPORA):
        if dirs.get(name) is None:
            continue
        corpora[name], _ = audit_corpus(dirs[name], sample_rate, settings, stream=stream, speech=name in SPEECH_CORPORA,
                                        segment_seconds=segment_seconds if name in ("prior", "data") else None)
    comparisons, warnings = compare(corpora, sample_rate, snr_db, prior_speed, prior_pitch_hz)
    return {
        "corpora": corpora,
        "comparisons": comparisons,
        "warnings": [asdict(w) for w in warnings],
        "settings": {
            "sample_rate": sample_rate, **asdict(settings),
            "vad": f"silero-vad {_vad().version} (ONNX, in its wheel)" if settings.vad else None,
            "segment_seconds": segment_seconds, "snr_db": list(snr_db) if snr_db else None,
            "prior_speed_perturb": list(prior_speed) if prior_speed else None,
            "prior_pitch_hz": list(prior_pitch_hz) if prior_pitch_hz else None,
            "thresholds": THRESHOLDS,
        },
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


def compare(corpora: dict[str, dict], sample_rate: int, snr_db=None, prior_speed=None,
            prior_pitch_hz=None) -> tuple[dict, list[AuditWarning]]:
    """Prior against data (and test), noise prior against the data's speech-free frames, and each
    corpus against the model: the deltas, and a warning for each beyond its threshold."""
    warnings: list[AuditWarning] = []
    comparisons: dict[str, dict] = {}
    prior, noise, data = corpora.get("prior"), corpora.get("noise"), corpora.get("data")
    nyquist = sample_rate / 2

    for name, c in corpora.items():
        if c["files_below_model_rate"]:
            rates = ", ".join(f"{n} at {r} Hz" for r, n in c["native_sample_rates"].items() if int(r) < sample_rate)
            warnings.append(AuditWarning(
                "sample_rate", name,
                f"{c['files_below_model_rate']} of {c['files_audited']} audited files ({rates}) are below the model's "
                f"{sample_rate} Hz: they are upsampled and hold nothing above their own Nyquist frequency. Use "
                f"sources at >= {sample_rate} Hz{' for the clean prior, or the discriminator learns their bandwidth' if name == 'prior' else ''}.",
                c["files_below_model_rate"], 0))
        median_level = c["active_level_dbfs"].get("median", 0.0)
        if median_level < LOW_LEVEL_DBFS:
            warnings.append(AuditWarning(
                "level", name, f"median active level {median_level:.1f} dBFS is within 5 dB of -60 dBFS, below which "
                f"training treats segments as silence and does not raise them to the training level: normalise the files.",
                median_level, LOW_LEVEL_DBFS))
        shorter = c.get("files_shorter_than_segment")
        if shorter and shorter / c["files_audited"] > SHORT_FILE_SHARE:
            warnings.append(AuditWarning(
                "too_short", name, f"{shorter} of {c['files_audited']} files are shorter than a training segment: "
                f"they are zero-padded, digital silence the discriminators can key on. Use longer files or a shorter "
                f"data.segment_seconds.", round(shorter / c["files_audited"], 3), SHORT_FILE_SHARE))

    test = corpora.get("test")
    if test and test.get("noisy_files") is not None and len(test["noisy_files"]) / test["files_audited"] > NOISY_REFERENCE_SHARE:
        listed = ", ".join(f"{r['file']} ({r['wada_snr_db']:.1f} dB)" for r in test["noisy_files"][:5])
        share = len(test["noisy_files"]) / test["files_audited"]
        warnings.append(AuditWarning(
            "noisy_reference", "test",
            f"{len(test['noisy_files'])} of {test['files_audited']} clean references have an estimated SNR (WADA) below "
            f"{NOISY_REFERENCE_SNR_DB:g} dB: {listed}. Reference-based scores (SI-SDR, PESQ, STOI/ESTOI) count their noise "
            f"as speech, so an enhancer that removes it scores lower on them; report those files apart or use cleaner "
            f"references.", round(share, 3), NOISY_REFERENCE_SHARE))

    if prior is not None:
        refs = {name: corpora[name] for name in ("data", "test") if name in corpora}
        rows = {name: _prior_row(prior, ref, nyquist) for name, ref in refs.items()}
        comparisons.update({f"prior_vs_{name}": row for name, row in rows.items()})
        warnings += _prior_warnings(prior, refs, rows)
        voices = _voice_range(prior, refs, prior_speed, prior_pitch_hz)
        if voices is not None:
            comparisons["prior_voices"], warning = voices
            warnings += [warning] if warning else []
        share = prior.get("speech_frames")
        if share is not None and share < PRIOR_SPEECH_SHARE:
            warnings.append(AuditWarning(
                "no_speech", "prior", f"only {share:.0%} of the clean prior's frames are speech (VAD): is prior.dir a speech "
                f"corpus?", share, PRIOR_SPEECH_SHARE))

    if noise is not None and noise.get("speech_frames") is not None and noise["speech_frames"] > NOISE_SPEECH_SHARE:
        named = ", ".join(f"{r['file']} ({r['speech_frames']:.0%})" for r in noise["speech_files"][:5])
        warnings.append(AuditWarning(
            "speech_in_noise_prior", "noise",
            f"{noise['speech_frames']:.0%} of the noise prior's frames are speech (VAD){'; mostly speech: ' + named if named else ''}. "
            f"Speech in the noise prior teaches the noise discriminator that speech is noise, and the noise stream takes "
            f"speech: remove those files unless babble is meant.", noise["speech_frames"], NOISE_SPEECH_SHARE))

    if noise is not None and data is not None and data.get("speech_free"):
        free = data["speech_free"]
        row = {"noise_bandwidth_hz": noise["bandwidth_hz"], "data_noise_bandwidth_hz": free["bandwidth_hz"],
               "noise_top_band_db": noise["top_band_db"].get("median"), "data_noise_top_band_db": free["top_band_db"],
               "data_speech_free_seconds": free["seconds"]}
        comparisons["noise_vs_data"] = row
        if free["seconds"] >= NOISE_MIN_SECONDS and free["bandwidth_hz"] > 0 and \
                noise["bandwidth_hz"] < NOISE_BANDWIDTH_RATIO * free["bandwidth_hz"]:
            warnings.append(AuditWarning(
                "bandwidth", "noise",
                f"the noise prior's bandwidth is {noise['bandwidth_hz']} Hz against {free['bandwidth_hz']} Hz for the noise in "
                f"the noisy data ({free['seconds']:.0f} s of speech-free frames): the noise stream cannot model the data's "
                f"high-frequency noise, which is left in the clean stream. Add wideband noise to the noise prior.",
                round(noise["bandwidth_hz"] / free["bandwidth_hz"], 3), NOISE_BANDWIDTH_RATIO))

    if data is not None and snr_db and data["wada_snr_db"]:
        median, (lo, hi) = data["wada_snr_db"]["median"], snr_db
        comparisons["data_snr_vs_training_mixtures"] = {"data_wada_snr_db": median, "snr_db": [lo, hi]}
        if median < lo - SNR_RANGE_MARGIN_DB or median > hi + SNR_RANGE_MARGIN_DB:
            warnings.append(AuditWarning(
                "snr_range", "data",
                f"the noisy data's median WADA-SNR is {median:.1f} dB, outside the simulated mixtures' data.snr_db "
                f"[{lo:g}, {hi:g}] dB by more than {SNR_RANGE_MARGIN_DB:g} dB: stages 1-2 train on other conditions than "
                f"stage 3 meets. Set data.snr_db around the data's SNRs.", median, SNR_RANGE_MARGIN_DB))
    return comparisons, warnings


def _prior_warnings(prior: dict, refs: dict[str, dict], rows: dict[str, dict]) -> list[AuditWarning]:
    """Bandwidth and floor of the clean prior against the noisy data and the test references:
    one warning per kind, naming every reference that is beyond the threshold."""
    what = REFERENCE_NAMES
    out = []
    narrower = [n for n, r in rows.items() if r["band_limited_share_gap"] > BAND_LIMITED_SHARE_GAP]
    wider = [n for n, r in rows.items() if r["ref_band_limited_gap"] > BAND_LIMITED_SHARE_GAP]
    if narrower:
        against = " and ".join(
            f"{what[n]}, whose speech reaches {rows[n]['band_limit_hz'] + BANDWIDTH_MARGIN_HZ:.0f} Hz in "
            f"{1 - rows[n]['ref_band_limited_share']:.0%} of its files (median {_num(rows[n]['ref_speech_bandwidth_hz'], '{:.0f}')} Hz)"
            for n in narrower)
        row = rows[narrower[0]]
        out.append(AuditWarning(
            "bandwidth", "prior",
            f"{row['prior_band_limited_share']:.0%} of the clean prior's files end below {row['band_limit_hz']:.0f} Hz (their "
            f"spectrum stays {BANDWIDTH_DROP_DB:.0f} dB under its peak above that; median file {row['prior_file_bandwidth_hz']:.0f} Hz) "
            f"against {against}: the clean discriminator can tell real from fake by bandwidth alone and the clean stream learns "
            f"a low-pass filter. Drop the band-limited files or use a wideband clean prior.",
            max(rows[n]["band_limited_share_gap"] for n in narrower), BAND_LIMITED_SHARE_GAP))
    elif wider:
        against = " and ".join(f"{rows[n]['ref_files_ending_share']:.0%} of the files of {what[n]} end below "
                               f"{rows[n]['ref_band_limit_hz']:.0f} Hz" for n in wider)
        row = rows[wider[0]]
        out.append(AuditWarning(
            "bandwidth", "prior",
            f"{against}, noise and all, while the clean prior's speech reaches {row['ref_band_limit_hz'] + BANDWIDTH_MARGIN_HZ:.0f} Hz "
            f"in {1 - row['prior_speech_short_share']:.0%} of its files: the clean stream is pushed to invent high frequencies "
            f"the data do not have. Use a clean prior of the data's bandwidth (or resample it to the data's rate).",
            -max(rows[n]["ref_band_limited_gap"] for n in wider), -BAND_LIMITED_SHARE_GAP))
    gated = [n for n, r in rows.items() if r["gated_share_gap"] > GATED_SHARE_GAP or r["silent_frames_gap"] > SILENCE_SHARE_GAP]
    if gated:
        against = " and ".join(f"{rows[n]['ref_gated_share']:.0%} of {what[n]} ({refs[n]['silent_frames']:.1%})" for n in gated)
        row = rows[gated[0]]
        out.append(AuditWarning(
            "noise_floor", "prior",
            f"{row['prior_gated_share']:.0%} of the clean prior's files have their quietest 10% of 16 ms frames more than "
            f"{-GATED_FLOOR_DB:.0f} dB below their active level ({prior['silent_frames']:.1%} of all frames {-SILENCE_DB:.0f}+ dB "
            f"below: digital silence between words) against {against}: the clean discriminator can key on the floor and the "
            f"clean stream learns to gate. Use a prior with a natural floor, or drop the gated files.",
            max(max(rows[n]["gated_share_gap"], rows[n]["silent_frames_gap"]) for n in gated), GATED_SHARE_GAP))
    elif "test" in rows and rows["test"]["floor_gap_db"] is not None and rows["test"]["floor_gap_db"] > FLOOR_GAP_DB:
        row = rows["test"]
        out.append(AuditWarning(
            "noise_floor", "prior",
            f"the clean prior's floor (median file, quietest 10% of 16 ms frames) is {row['prior_floor_db']:.0f} dB re its "
            f"active level against {row['ref_floor_db']:.0f} dB for {what['test']}, {row['floor_gap_db']:.0f} dB lower: the clean "
            f"stream learns a floor the test speech does not have.", row["floor_gap_db"], FLOOR_GAP_DB))
    return out


def _voice_range(prior: dict, refs: dict[str, dict], speed, pitch_hz=None) -> tuple[dict, AuditWarning | None] | None:
    """The F0 range the clean prior covers (its files' 5th-95th percentile of median F0, times the
    training speed perturbation, joined with the PSOLA pitch range data.prior_pitch_hz when set,
    widened by VOICE_MARGIN) and the share of each reference's files outside it; a `voice_range`
    warning past VOICE_SHARE."""
    f0 = prior.get("f0_hz") or {}
    if not f0 or not all(math.isfinite(f0.get(k, math.nan)) for k in ("p5", "p95")):
        return None
    lo_speed, hi_speed = (float(speed[0]), float(speed[1])) if speed else (1.0, 1.0)
    lo, hi = f0["p5"] * lo_speed * (1 - VOICE_MARGIN), f0["p95"] * hi_speed * (1 + VOICE_MARGIN)
    ranges = [(lo, hi)]
    if pitch_hz:
        ranges.append((float(pitch_hz[0]) * (1 - VOICE_MARGIN), float(pitch_hz[1]) * (1 + VOICE_MARGIN)))
    row = {"prior_f0_range_hz": [round(lo), round(hi)], "speed_perturb": [lo_speed, hi_speed],
           "pitch_shift_hz": [float(v) for v in pitch_hz] if pitch_hz else None}
    outside = {}
    for name, ref in refs.items():
        values = np.array(ref.get("file_f0_hz") or [])
        if len(values):
            out = ~np.any([(values >= a) & (values <= b) for a, b in ranges], axis=0)
            outside[name] = (float(np.mean(out)), values[out])
            row[f"{name}_outside_share"] = round(outside[name][0], 3)
            row[f"{name}_median_f0_hz"] = ref["f0_hz"].get("median")
    beyond = [n for n, (share, _) in outside.items() if share > VOICE_SHARE]
    if not beyond:
        return row, None
    what = REFERENCE_NAMES
    parts = [f"{outside[n][0]:.0%} of the files of {what[n]} (median F0 of those: {np.median(outside[n][1]):.0f} Hz)" for n in beyond]
    stretched = f" stretched by the speed perturbation {lo_speed:g}-{hi_speed:g}" if speed else ""
    stretched += f", pitch-shifted to {pitch_hz[0]:g}-{pitch_hz[1]:g} Hz" if pitch_hz else ""
    return row, AuditWarning(
        "voice_range", "prior",
        f"{' and '.join(parts)} lie outside the voices of the clean prior (its files' median F0 spans {f0['p5']:.0f}-{f0['p95']:.0f} Hz, "
        f"{lo:.0f}-{hi:.0f} Hz{stretched} and with a {VOICE_MARGIN:.0%} margin): the supervised stages learn those voices as "
        f"not-speech and the clean discriminator calls them fake. Add speakers that cover the data's voices (or widen "
        f"data.prior_pitch_hz).", max(outside[n][0] for n in beyond), VOICE_SHARE)


def _band_gap(ending: list, reaching: list, nyquist: float) -> tuple[float, float, float, float]:
    """(gap, T, a, b): a = share of `ending` (whole-file edges) below T, b = share of `reaching`
    (speech edges, None for unmeasured) that do not reach T + BANDWIDTH_MARGIN_HZ, gap = a - b at
    the T on a SPEECH_BAND_HZ grid up to BAND_LIMITED_FRACTION of Nyquist where it is largest
    (the highest such T on ties)."""
    ending = np.asarray(ending, np.float64)
    reaching = np.asarray([np.nan if v is None else v for v in reaching], np.float64)
    best = (-math.inf, 0.0, 0.0, 0.0)
    for t in np.arange(SPEECH_BAND_HZ, BAND_LIMITED_FRACTION * nyquist + 1e-6, SPEECH_BAND_HZ):
        a = float(np.mean(ending < t)) if len(ending) else 0.0
        b = float(np.mean(~(reaching >= t + BANDWIDTH_MARGIN_HZ))) if len(reaching) else 1.0
        if a - b >= best[0] - 1e-9:
            best = (a - b, float(t), a, b)
    return best


def _prior_row(prior: dict, ref: dict, nyquist: float) -> dict:
    """The prior against one reference. Bandwidth: the prior's files' whole-file edges against
    where the reference's speech ends (`speech_bandwidth_hz`), and the reference's whole-file
    edges against where the prior's speech ends, each at its worst T (_band_gap): a noisy
    reference's noise does not make it read wider than its speech."""
    p_bw, r_bw = prior["file_bandwidth_hz"].get("median"), ref["file_bandwidth_hz"].get("median")
    p_floor, r_floor = prior["floor_db"].get("median"), ref["floor_db"].get("median")
    gated = prior["gated_files"] / prior["files_audited"], ref["gated_files"] / ref["files_audited"]
    narrower = _band_gap(prior["file_bandwidths_hz"], ref["file_speech_bandwidths_hz"], nyquist)
    wider = _band_gap(ref["file_bandwidths_hz"], prior["file_speech_bandwidths_hz"], nyquist)
    return {
        "prior_file_bandwidth_hz": p_bw, "ref_file_bandwidth_hz": r_bw,
        "prior_speech_bandwidth_hz": prior["speech_bandwidth_hz"].get("median"),
        "ref_speech_bandwidth_hz": ref["speech_bandwidth_hz"].get("median"),
        # The prior narrower than the reference's speech: the share of the prior's files that end
        # below band_limit_hz, minus the share of the reference's files whose speech does not
        # reach band_limit_hz + BANDWIDTH_MARGIN_HZ (before issue 25: the shares of files of each
        # under 75% of Nyquist, whole-file edges on both sides, which a noisy reference's noise
        # kept at 0).
        "band_limit_hz": narrower[1],
        "prior_band_limited_share": round(narrower[2], 3), "ref_band_limited_share": round(narrower[3], 3),
        "band_limited_share_gap": round(narrower[0], 3),
        # The other way round: the share of the reference's files that end below ref_band_limit_hz,
        # noise and all, minus the share of the prior's files whose speech does not reach it plus
        # the margin.
        "ref_band_limit_hz": wider[1], "ref_files_ending_share": round(wider[2], 3),
        "prior_speech_short_share": round(wider[3], 3), "ref_band_limited_gap": round(wider[0], 3),
        "prior_floor_db": p_floor, "ref_floor_db": r_floor,
        "floor_gap_db": round(r_floor - p_floor, 1) if p_floor is not None and r_floor is not None else None,
        "prior_gated_share": round(gated[0], 3), "ref_gated_share": round(gated[1], 3),
        "gated_share_gap": round(gated[0] - gated[1], 3),
        "prior_silent_frames": prior["silent_frames"], "ref_silent_frames": ref["silent_frames"],
        "silent_frames_gap": round(prior["silent_frames"] - ref["silent_frames"], 4),
        "level_difference_db": round(prior["active_level_dbfs"]["median"] - ref["active_level_dbfs"]["median"], 1),
    }


# --------------------------------------------------------------------------------------------
# Configurations


def corpus_dirs(cfg: DictConfig) -> dict[str, str | None]:
    """The folders a training configuration reads: prior, noise, noisy training data, and the
    clean test references when data.val_clean_dir names an existing folder."""
    data = OmegaConf.select(cfg, "data.noisy_train_dir", default=None)
    test = OmegaConf.select(cfg, "data.val_clean_dir", default=None)
    return {
        "prior": str(cfg.prior.dir),
        "noise": str(cfg.noise.dir),
        "data": str(data) if data else None,
        "test": str(test) if test and Path(str(test)).is_dir() else None,
    }


def settings_from(cfg: DictConfig | None) -> AuditSettings:
    cfg = cfg or {}
    return AuditSettings(max_files=int(cfg.get("max_files", 100)), max_seconds=float(cfg.get("max_seconds", 10.0)),
                         seed=int(cfg.get("seed", 0)), vad=bool(cfg.get("vad", True)))


def audit_config(cfg: DictConfig) -> dict:
    """The audit of a composed training configuration (configs/train.yaml or audit.yaml)."""
    settings = settings_from(cfg.get("audit"))
    snr = OmegaConf.select(cfg, "data.snr_db", default=None)
    speed = OmegaConf.select(cfg, "data.prior_speed_perturb", default=None)
    pitch = OmegaConf.select(cfg, "data.prior_pitch_hz", default=None)
    report = audit_corpora(corpus_dirs(cfg), int(cfg.data.sample_rate), settings,
                           segment_seconds=float(OmegaConf.select(cfg, "data.segment_seconds", default=0) or 0) or None,
                           snr_db=tuple(map(float, snr)) if snr else None,
                           prior_speed=tuple(map(float, speed)) if speed else None,
                           prior_pitch_hz=tuple(map(float, pitch)) if pitch else None)
    report["config"] = {name: {"name": str(cfg[name].name), "dir": str(cfg[name].dir), "domain": str(cfg[name].domain)}
                        for name in ("prior", "noise")}
    report["config"]["data"] = {"domain": str(cfg.data.domain), "noisy_train_dir": str(cfg.data.noisy_train_dir),
                                "val_clean_dir": str(OmegaConf.select(cfg, "data.val_clean_dir", default=None))}
    return report


def training_audit(cfg: DictConfig, logger: logging.Logger = log) -> dict | None:
    """The audit `usedddp.train` runs before its first stage, logged through `logger` (None when
    audit.enabled is false). A missing corpus raises, as the data module would; any other failure
    is logged and recorded rather than raised, since a diagnostic must not cost a training run."""
    node = cfg.get("audit")
    if node is not None and not node.get("enabled", True):
        logger.info("corpus audit skipped (audit.enabled=false)")
        return None
    try:
        report = audit_config(cfg)
    except CorpusError:
        raise
    except Exception as error:  # noqa: BLE001
        logger.exception("corpus audit failed; training goes on without it")
        return {"error": f"{type(error).__name__}: {error}"}
    log_report(report, logger)
    return report


def compact(report: dict) -> dict:
    """A few numbers per corpus and the warnings, for loggers' hyperparameters."""
    if "error" in report:
        return {"error": report["error"]}
    out: dict = {"warnings": [f"{w['kind']}/{w['corpus']}: {w['message']}" for w in report["warnings"]],
                 "n_warnings": len(report["warnings"])}
    for name, c in report["corpora"].items():
        out[name] = {
            "files": c["files_audited"], "seconds": c["seconds"], "bandwidth_hz": c["file_bandwidth_hz"].get("median"),
            "floor_db": c["floor_db"].get("median"), "silent_frames": c["silent_frames"],
            "active_level_dbfs": c["active_level_dbfs"].get("median"), "wada_snr_db": c["wada_snr_db"].get("median"),
            "speech_frames": c.get("speech_frames"),
        }
    return out


# --------------------------------------------------------------------------------------------
# Tables


ROWS = (
    ("files audited / found", lambda c: f"{c['files_audited']} / {c['files_found']}"),
    ("duration (s)", lambda c: f"{'~' if c['seconds_estimated'] else ''}{c['seconds']:.0f} ({c['seconds_measured']:.0f} measured)"),
    ("native rates (Hz: files)", lambda c: ", ".join(f"{r}: {n}" for r, n in c["native_sample_rates"].items())),
    ("bandwidth, corpus LTAS (Hz)", lambda c: f"{c['bandwidth_hz']}"),
    ("bandwidth, median file (Hz)", lambda c: _num(c["file_bandwidth_hz"].get("median"), "{:.0f}")),
    ("band-limited files", lambda c: f"{c['band_limited_files']}"),
    ("speech bandwidth, median file (Hz)", lambda c: _num(c.get("speech_bandwidth_hz", {}).get("median"), "{:.0f}")),
    ("top quarter band re peak (dB)", lambda c: _num(c["top_band_db"].get("median"), "{:.1f}")),
    ("active level, P.56 (dBFS)", lambda c: _num(c["active_level_dbfs"].get("median"), "{:.1f}")),
    ("floor, p10 frame re active (dB)", lambda c: _range(c["floor_db"])),
    (f"gated files (floor < {GATED_FLOOR_DB:.0f} dB)", lambda c: f"{c['gated_files']}"),
    ("frames <= -60 dB re active", lambda c: _num(c["silent_frames"], "{:.1%}")),
    ("dynamic range p95-p10 (dB)", lambda c: _num(c["dynamic_range_db"].get("median"), "{:.1f}")),
    ("WADA-SNR median [p10, p90] (dB)", lambda c: _snr(c["wada_snr_db"])),
    ("voice F0, files p5-p95 (Hz)", lambda c: "-" if not c.get("f0_hz") else f"{c['f0_hz']['median']:.0f} [{c['f0_hz']['p5']:.0f}, {c['f0_hz']['p95']:.0f}]"),
    ("speech frames (VAD)", lambda c: _num(c.get("speech_frames"), "{:.1%}")),
    ("skipped files", lambda c: f"{len(c['skipped'])}"),
)


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)


def _range(stats: dict) -> str:
    return "-" if not stats else f"{stats['median']:.1f} [{stats['p0']:.0f}, {stats['p100']:.0f}]"


def _snr(stats: dict) -> str:
    return "-" if not stats else f"{stats['median']:.1f} [{stats['p10']:.0f}, {stats['p90']:.0f}]"


def corpus_table(report: dict) -> list[list[str]]:
    names = list(report["corpora"])
    return [["", *names]] + [[label, *(cell(report["corpora"][n]) for n in names)] for label, cell in ROWS]


def markdown_report(report: dict) -> str:
    table = corpus_table(report)
    lines = ["# Corpus audit", "", "| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines += ["", "Corpora: " + "; ".join(f"`{n}` {c['dir']}" for n, c in report["corpora"].items()), ""]
    s = report["settings"]
    lines.append(f"Model rate {s['sample_rate']} Hz; at most {s['max_files']} files per corpus and {s['max_seconds']:g} s per "
                 f"file (seed {s['seed']}); VAD: {s['vad']}; {report['wall_time_s']:.1f} s.")
    lines += ["", f"## Warnings ({len(report['warnings'])})", ""]
    lines += [f"- **{w['kind']}** ({w['corpus']}): {w['message']}" for w in report["warnings"]] or ["None."]
    speech = report["corpora"].get("noise", {}).get("speech_files")
    if speech:
        lines += ["", "## Noise-prior files that are mostly speech (VAD)", ""]
        lines += [f"- {r['file']}: {r['speech_frames']:.0%} of its frames" for r in speech]
    skipped = [(n, s) for n, c in report["corpora"].items() for s in c["skipped"]]
    if skipped:
        lines += ["", "## Skipped files", ""] + [f"- {n}: {s}" for n, s in skipped]
    return "\n".join(lines) + "\n"


def text_table(report: dict) -> str:
    table = corpus_table(report)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def log_report(report: dict, logger: logging.Logger = log) -> None:
    """The table at INFO and each warning at WARNING (training's train.log gets both)."""
    logger.info("corpus audit (%.1f s):\n%s", report["wall_time_s"], text_table(report))
    for corpus in report["corpora"].values():
        for skipped in corpus["skipped"]:
            logger.warning("audit: skipped %s", skipped)
    for w in report["warnings"]:
        logger.warning("audit: %s (%s): %s", w["kind"], w["corpus"], w["message"])


# --------------------------------------------------------------------------------------------
# Command


def run(cfg: DictConfig) -> int:
    """The recipe behind `python -m usedddp.audit`; returns the exit code."""
    if OmegaConf.is_missing(cfg, "output") or not cfg.get("output"):
        print(f"error: output=DIR is required\nusage: {USAGE}", file=sys.stderr)
        return 2
    output = Path(str(cfg.output))
    try:
        if (output / "audit.json").exists() and not cfg.get("overwrite", False):
            raise AuditError(f"{output / 'audit.json'} exists: choose another output folder or pass overwrite=true")
        report = audit_config(cfg)
    except (AuditError, CorpusError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (MissingMandatoryValue, InterpolationToMissingValueError) as error:
        print(f"error: {str(error).splitlines()[0]} (e.g. data=folder needs data.root=DIR)\nusage: {USAGE}", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    (output / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "audit.md").write_text(markdown_report(report))
    print(text_table(report))
    for w in report["warnings"]:
        print(f"WARNING {w['kind']} ({w['corpus']}): {w['message']}")
    for name, c in report["corpora"].items():
        for skipped in c["skipped"]:
            print(f"skipped ({name}): {skipped}")
    print(f"{len(report['warnings'])} warning(s) in {report['wall_time_s']:.1f} s; wrote {output / 'audit.json'}, {output / 'audit.md'}")
    return 0


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="audit")
def _main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    prepare_argv()
    _main()


if __name__ == "__main__":
    main()
