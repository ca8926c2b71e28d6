"""Band-wise intrusive measures: does the estimate keep the reference's speech above 4 kHz?

Full-band SI-SDR, PESQ and STOI barely move when an estimate drops everything above 4 kHz
(fricatives included), because speech holds little energy there. These two look at the band alone:
`band_si_sdr` (SI-SDR, Le Roux et al. 2019, of the band: is its waveform right?) and
`band_level_db` (is its level kept?). Plain numpy, usable by validation and evaluation alike.

The band is cut by a brick-wall mask on the FFT of the whole clip: zero-phase and an exact
projection (band + rest = signal), so a 3.5 kHz low-pass leaves nothing at 4 kHz through window
sidelobes and a band scaled by g is exactly g times the band, as an STFT mask would not guarantee.
"""

from __future__ import annotations

import math

import numpy as np

from usedddp.metrics.intrusive import _as_numpy

BAND_FLOOR_DB = -50.0  # both measures: an estimate with nothing in the band, finite
EMPTY_BAND_DB = -100.0  # estimate's band this far below its full-band energy: float rounding, empty
REFERENCE_MIN_BAND_DB = -60.0  # reference's band this far below its full-band energy: band-limited, NaN
ACTIVE_RANGE_DB = 40.0  # band_level_db: frames within this of the reference's loudest frame
FRAME_SECONDS = 0.032  # band_level_db: non-overlapping frames


def band_filter(x: np.ndarray, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """`x` with every FFT bin outside low_hz <= f <= min(high_hz, Nyquist) set to zero."""
    nyquist = sample_rate / 2
    if not 0 <= low_hz < min(high_hz, nyquist):
        raise ValueError(f"band {low_hz}-{high_hz} Hz is empty at {sample_rate} Hz (Nyquist {nyquist:g} Hz)")
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / sample_rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spectrum, n=x.shape[-1])


def _bands(estimate, reference, sample_rate, low_hz, high_hz):
    est, ref = _as_numpy(estimate), _as_numpy(reference)
    if est.shape != ref.shape:
        raise ValueError(f"estimate and reference differ in length ({est.size} and {ref.size} samples)")
    est, ref = est - est.mean(), ref - ref.mean()
    return est, ref, band_filter(est, sample_rate, low_hz, high_hz), band_filter(ref, sample_rate, low_hz, high_hz)


def _reference_band_missing(ref: np.ndarray, ref_band: np.ndarray) -> bool:
    ref_energy = float(np.dot(ref, ref))
    return ref_energy == 0 or float(np.dot(ref_band, ref_band)) < ref_energy * 10 ** (REFERENCE_MIN_BAND_DB / 10)


def band_si_sdr(estimate, reference, sample_rate: int, low_hz: float = 4000.0, high_hz: float = 8000.0) -> float:
    """SI-SDR in dB (as `si_sdr`: zero-mean, scale-invariant) of the estimate's low_hz-high_hz band
    against the reference's, floored at BAND_FLOOR_DB; NaN when the reference has no such band.

    Not `si_sdr` of the bands: its absolute 1e-12 terms score an empty band 0 dB. Here both energies
    are taken relative to the estimate's band energy (ceiling 120 dB), and an empty band is the floor."""
    est, ref, est_band, ref_band = _bands(estimate, reference, sample_rate, low_hz, high_hz)
    if _reference_band_missing(ref, ref_band):
        return math.nan
    est_energy = float(np.dot(est_band, est_band))
    if est_energy <= float(np.dot(est, est)) * 10 ** (EMPTY_BAND_DB / 10):
        return BAND_FLOOR_DB
    target = np.dot(est_band, ref_band) / np.dot(ref_band, ref_band) * ref_band
    residual = est_band - target
    ratio = (np.dot(target, target) / est_energy + 1e-12) / (np.dot(residual, residual) / est_energy + 1e-12)
    return float(max(10 * np.log10(ratio), BAND_FLOOR_DB))


def band_level_db(estimate, reference, sample_rate: int, low_hz: float = 4000.0, high_hz: float = 8000.0) -> float:
    """10 log10 of the estimate's low_hz-high_hz band energy over the reference's, both summed over
    the frames where the reference is active (full-band frame energy within ACTIVE_RANGE_DB of its
    loudest), so that silence does not dominate: 0 dB kept, -30 dB deleted, > 0 dB added (noise).
    Floored at BAND_FLOOR_DB; NaN when the reference has no such band."""
    _, ref, est_band, ref_band = _bands(estimate, reference, sample_rate, low_hz, high_hz)
    if _reference_band_missing(ref, ref_band):
        return math.nan
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    pad = -ref.size % frame

    def frame_energy(x: np.ndarray) -> np.ndarray:
        return np.sum(np.pad(x, (0, pad)).reshape(-1, frame) ** 2, axis=1)

    loudness = frame_energy(ref)
    active = loudness >= loudness.max() * 10 ** (-ACTIVE_RANGE_DB / 10)
    ref_energy = float(frame_energy(ref_band)[active].sum())
    est_energy = float(frame_energy(est_band)[active].sum())
    if ref_energy == 0:
        return math.nan
    if est_energy <= ref_energy * 10 ** (BAND_FLOOR_DB / 10):
        return BAND_FLOOR_DB
    return float(10 * np.log10(est_energy / ref_energy))
