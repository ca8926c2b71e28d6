"""Composite quality measures of Hu & Loizou (2008): CSIG, CBAK, COVL, with their ingredients
segSNR, LLR and WSS. Written here in numpy: no maintained PyPI package implements them (pysepm is
not on PyPI; its fork pysepm-evo 0.1.1, 2022, GPL-3, no longer imports with scipy >= 1.13).

Reference: Y. Hu and P. C. Loizou, "Evaluation of objective quality measures for speech
enhancement", IEEE Trans. Audio, Speech, Lang. Process. 16(1):229-238, 2008. The framing and the
per-measure details follow Loizou's MATLAB `composite.m` (from "Speech Enhancement: Theory and
Practice", CRC 2007; its WSS/LLR/segSNR code is by Pellom & Hansen). Conventions kept from it:

- both signals cut to the shorter length and offset by machine epsilon (as composite.m does);
- 30 ms frames, hop = floor(frame / 4) (75 % overlap), Hann window 0.5 (1 - cos(2 pi n / (N + 1))),
  n = 1..N; floor((T - N) / hop) frames, the first starting at sample 0;
- segSNR: per frame clipped to [-10, 35] dB, plain mean over all frames (no VAD);
- LLR: LPC order 10 below 10 kHz, 16 at and above (so 16 at 16 kHz), autocorrelation method with
  Levinson-Durbin; mean of the lowest 95 % of frames; frames are not clipped at 2 (composite.m
  does not clip; pysepm's stand-alone llr() does);
- WSS: 25 Gaussian critical-band filters spanning 0-4 kHz at any sample rate, FFT size
  2^ceil(log2(2 N)), Kmax = 20, Klocmax = 1 (Klatt 1982); mean of the lowest 95 % of frames;
- the 95 % count uses MATLAB's round (half away from zero; Python ports' round() goes to even);
- PESQ: see COMPOSITE_PESQ (the one deliberate departure from composite.m).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from usedddp.metrics.intrusive import _as_numpy, pesq_wb

COMPOSITE_PESQ = (
    "wide-band PESQ MOS-LQO (ITU-T P.862.2, the `pesq` package's 'wb' mode) at 16 kHz, as in "
    "SEGAN, MetricGAN(+) and CMGAN; Loizou's composite.m used narrow-band P.862 PESQ, so the "
    "scores compare with those papers, not with the 2008 paper's tables"
)

_EPS = np.finfo(np.float64).eps
_ALPHA = 0.95  # fraction of frames (the best ones) averaged for LLR and WSS
_SEGSNR_RANGE = (-10.0, 35.0)
_KMAX, _KLOCMAX = 20.0, 1.0

# Critical bands of the WSS filter bank (centre frequency, bandwidth) in Hz, as in composite.m.
_CENTRE_HZ = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128,
    1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97,
    2978.04, 3276.17, 3597.63,
])  # fmt: skip
_BANDWIDTH_HZ = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914,
    140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126,
    321.465, 346.136,
])  # fmt: skip


def _matlab_round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _frame_length(sample_rate: int) -> int:
    return _matlab_round(30 * sample_rate / 1000)


def _frames(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """(F, N) Hann-windowed 30 ms frames, hop N // 4; F = 0 below one frame plus one hop."""
    n = _frame_length(sample_rate)
    hop = n // 4
    count = max((len(x) - n) // hop, 0)
    if count == 0:
        return np.zeros((0, n))
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, n + 1) / (n + 1)))
    return np.lib.stride_tricks.sliding_window_view(x, n)[: count * hop : hop] * window


def _lowest_mean(values: np.ndarray) -> float:
    """Mean of the lowest 95 % of the per-frame values (composite.m's trimming)."""
    values = np.sort(values[~np.isnan(values)])
    keep = _matlab_round(len(values) * _ALPHA)
    return float(values[:keep].mean()) if keep > 0 else math.nan


def _segsnr(clean: np.ndarray, processed: np.ndarray) -> float:
    # SNRseg = (10 / M) sum_m log10( sum_n x^2(n) / sum_n (x(n) - xhat(n))^2 ) over the M frames,
    # each frame's SNR limited to [-10, 35] dB (Hu & Loizou 2008, segmental SNR, after Quackenbush
    # et al. 1988).
    signal = np.sum(clean**2, axis=1)
    noise = np.sum((clean - processed) ** 2, axis=1)
    snr = 10 * np.log10(signal / (noise + _EPS) + _EPS)
    return float(np.clip(snr, *_SEGSNR_RANGE).mean()) if len(snr) else math.nan


def _lpc(frames: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation lags r(0..p) and prediction-error filters [1, -a_1, ..., -a_p] per frame
    (Levinson-Durbin, vectorised over frames)."""
    n = frames.shape[1]
    r = np.stack([np.sum(frames[:, : n - k] * frames[:, k:], axis=1) for k in range(order + 1)], 1)
    a = np.zeros((len(frames), order))
    err = r[:, 0].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(order):
            k = (r[:, i + 1] - np.sum(a[:, :i] * r[:, i:0:-1], axis=1)) / err
            previous = a[:, :i].copy()
            a[:, i] = k
            if i:
                a[:, :i] = previous - k[:, None] * previous[:, ::-1]
            err = (1 - k * k) * err
    return r, np.concatenate([np.ones((len(frames), 1)), -a], axis=1)


def _llr(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> float:
    # d_LLR = log( a_p R_c a_p^T / a_c R_c a_c^T ): a_c, a_p the LPC vectors of the clean and the
    # processed frame, R_c the autocorrelation (Toeplitz) matrix of the clean frame
    # (Hu & Loizou 2008, LLR measure).
    order = 10 if sample_rate < 10000 else 16
    r_clean, a_clean = _lpc(clean, order)
    _, a_processed = _lpc(processed, order)
    lags = np.abs(np.subtract.outer(np.arange(order + 1), np.arange(order + 1)))
    toeplitz = r_clean[:, lags]  # (F, p + 1, p + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        numerator = np.einsum("fi,fij,fj->f", a_processed, toeplitz, a_processed)
        denominator = np.einsum("fi,fij,fj->f", a_clean, toeplitz, a_clean)
        llr = np.log(numerator / denominator)
    # A frame whose LPC fit breaks down numerically (digital silence: only the epsilon offset left)
    # has no defined LLR; it is left out rather than letting one NaN void the clip.
    llr[~np.isfinite(llr)] = np.nan
    return _lowest_mean(llr)


@lru_cache(maxsize=8)
def _critical_band_filters(sample_rate: int) -> np.ndarray:
    """(25, n_fft / 2) Gaussian critical-band filters, equal-area, zeroed below -30 dB."""
    n_half = _wss_fft_size(sample_rate) // 2
    nyquist = sample_rate / 2
    bins = np.arange(n_half)
    centre = np.floor(_CENTRE_HZ / nyquist * n_half)[:, None]
    width = (_BANDWIDTH_HZ / nyquist * n_half)[:, None]
    norm = (np.log(_BANDWIDTH_HZ[0]) - np.log(_BANDWIDTH_HZ))[:, None]
    filters = np.exp(-11 * ((bins - centre) / width) ** 2 + norm)
    return filters * (filters > np.exp(-30.0 / (2.0 * 2.303)))


def _wss_fft_size(sample_rate: int) -> int:
    return 1 << math.ceil(math.log2(2 * _frame_length(sample_rate)))


def _band_db(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    n_fft = _wss_fft_size(sample_rate)
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)[:, : n_fft // 2]) ** 2
    return 10 * np.log10(np.maximum(power @ _critical_band_filters(sample_rate).T, 1e-10))


def _nearest_peak(db: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """composite.m's peak search per band i (0..23): for a rising slope, walk right to the first
    band n whose slope is not rising and take db[n - 1]; otherwise walk left to the last rising
    band n and take db[n + 1] (db[0] if none). Kept as written, right-walk off-by-one included."""
    bands = slope.shape[1]
    idx = np.arange(bands)
    rising = slope > 0
    next_flat = np.minimum.accumulate(np.where(rising, bands, idx)[:, ::-1], axis=1)[:, ::-1]
    last_rise = np.maximum.accumulate(np.where(rising, idx, -1), axis=1)
    column = np.where(rising, next_flat - 1, last_rise + 1)
    return np.take_along_axis(db, column, axis=1)


def _wss(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> float:
    # d_WSS = sum_j W(j) (S_c(j) - S_p(j))^2 / sum_j W(j) per frame, S the spectral slopes of the
    # critical-band log energies and W(j) = (W_c(j) + W_p(j)) / 2 with
    # W(j) = Kmax / (Kmax + dB_max - dB(j)) * Klocmax / (Klocmax + dB_locmax(j) - dB(j))
    # (Klatt 1982; Hu & Loizou 2008, WSS measure).
    weights, slopes = [], []
    for frames in (clean, processed):
        db = _band_db(frames, sample_rate)
        slope = np.diff(db, axis=1)
        below = db[:, :-1]
        w_max = _KMAX / (_KMAX + db.max(axis=1, keepdims=True) - below)
        w_locmax = _KLOCMAX / (_KLOCMAX + _nearest_peak(db, slope) - below)
        weights.append(w_max * w_locmax)
        slopes.append(slope)
    w = (weights[0] + weights[1]) / 2
    distortion = np.sum(w * (slopes[0] - slopes[1]) ** 2, axis=1) / np.sum(w, axis=1)
    return _lowest_mean(distortion)


def composite(
    estimate, reference, sample_rate: int = 16000, pesq: float | None = None
) -> dict[str, float]:
    """CSIG, CBAK, COVL (1-5) of `estimate` against `reference`, with segSNR (dB), LLR and WSS.

    `pesq` is a PESQ value already computed for this pair (it must be the kind COMPOSITE_PESQ
    names); None computes wide-band PESQ, which needs 16 kHz. A NaN PESQ (no utterance found)
    gives NaN composites; a clip shorter than two frame hops gives NaN everywhere.
    """
    est, ref = _as_numpy(estimate), _as_numpy(reference)
    length = min(len(est), len(ref))
    est, ref = est[:length], ref[:length]
    if pesq is None:
        pesq = pesq_wb(est, ref, sample_rate)
    clean, processed = _frames(ref + _EPS, sample_rate), _frames(est + _EPS, sample_rate)
    if len(clean) == 0:
        llr = wss = segsnr = math.nan
    else:
        llr = _llr(clean, processed, sample_rate)
        wss = _wss(clean, processed, sample_rate)
        segsnr = _segsnr(clean, processed)
    # The regression fits of Hu & Loizou (2008) to the P.835 ratings, each limited to the 1-5 scale:
    csig = 3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss
    cbak = 1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * segsnr
    covl = 1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss
    scores = {name: float(np.clip(value, 1.0, 5.0)) for name, value in
              (("csig", csig), ("cbak", cbak), ("covl", covl))}  # fmt: skip
    return {**scores, "llr": float(llr), "wss": float(wss), "segsnr": float(segsnr)}
