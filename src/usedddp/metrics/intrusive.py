"""Intrusive metrics of one clip against its reference: SI-SDR (Le Roux et al. 2019), STOI/ESTOI
(pystoi), wide-band PESQ (the `pesq` package, ITU-T P.862.2) and narrow-band PESQ (ITU-T P.862 with
the P.862.1 MOS-LQO mapping, and the raw P.862 score behind it)."""

from __future__ import annotations

import math

import numpy as np
import torch


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def si_sdr(estimate, reference) -> float:
    """Scale-invariant SDR in dB, both signals zero-meaned."""
    est, ref = _as_numpy(estimate), _as_numpy(reference)
    est, ref = est - est.mean(), ref - ref.mean()
    ref_energy = np.dot(ref, ref)
    if ref_energy == 0:
        return float("nan")
    target = np.dot(est, ref) / ref_energy * ref
    residual = est - target
    return float(10 * np.log10((np.dot(target, target) + 1e-12) / (np.dot(residual, residual) + 1e-12)))


def stoi(estimate, reference, sample_rate: int) -> float:
    from pystoi import stoi as _stoi

    return float(_stoi(_as_numpy(reference), _as_numpy(estimate), sample_rate, extended=False))


def estoi(estimate, reference, sample_rate: int) -> float:
    from pystoi import stoi as _stoi

    return float(_stoi(_as_numpy(reference), _as_numpy(estimate), sample_rate, extended=True))


def pesq_wb(estimate, reference, sample_rate: int = 16000) -> float:
    """Wide-band PESQ (MOS-LQO); NaN where PESQ finds no utterance or the estimate is silent."""
    from pesq import PesqError, pesq

    if sample_rate != 16000:
        raise ValueError(f"wide-band PESQ is defined at 16 kHz, got {sample_rate} Hz")
    try:
        return float(pesq(sample_rate, _as_numpy(reference), _as_numpy(estimate), "wb"))
    except (PesqError, ValueError):  # ValueError: the C code's NaN level for an all-zero estimate
        return math.nan


def pesq_nb(estimate, reference, sample_rate: int = 16000) -> float:
    """Narrow-band PESQ (P.862 raw score mapped to MOS-LQO by P.862.1, the `pesq` package's "nb"
    mode); NaN where PESQ finds no utterance or the estimate is silent. Its ceiling (identical
    signals) is about 4.55, below wide-band's 4.64."""
    from pesq import PesqError, pesq

    if sample_rate not in (8000, 16000):
        raise ValueError(f"narrow-band PESQ is defined at 8 or 16 kHz, got {sample_rate} Hz")
    try:
        return float(pesq(sample_rate, _as_numpy(reference), _as_numpy(estimate), "nb"))
    except (PesqError, ValueError):  # as in pesq_wb
        return math.nan


# ITU-T P.862.1: MOS-LQO = 0.999 + 4 / (1 + exp(P862_1_SLOPE * raw + P862_1_OFFSET)), the mapping
# the `pesq` package applies to the raw P.862 score in "nb" mode.
P862_1_SLOPE, P862_1_OFFSET = -1.4945, 4.6607
P862_1_FLOOR, P862_1_RANGE = 0.999, 4.0


def pesq_nb_to_raw(mos: float) -> float:
    """The raw P.862 score (-0.5 to 4.5) behind a narrow-band MOS-LQO: the inverse of P.862.1.

    NaN stays NaN; a value outside the mapping's open range (0.999, 4.999) raises ValueError."""
    mos = float(mos)
    if math.isnan(mos):
        return math.nan
    if not P862_1_FLOOR < mos < P862_1_FLOOR + P862_1_RANGE:
        low, high = P862_1_FLOOR, P862_1_FLOOR + P862_1_RANGE
        raise ValueError(f"{mos} is outside the range of the P.862.1 mapping ({low}, {high})")
    return (math.log(P862_1_RANGE / (mos - P862_1_FLOOR) - 1) - P862_1_OFFSET) / P862_1_SLOPE


def pesq_nb_raw(estimate, reference, sample_rate: int = 16000) -> float:
    """Raw narrow-band PESQ (ITU-T P.862, before the P.862.1 mapping), the score `pypesq` reports
    and the UDiffSE and RVAE papers tabulate: `pesq_nb` mapped back, NaN where it is NaN.

    The mapping is monotone, so it ranks systems as `pesq_nb` does; the raw score is the higher
    of the two below about 3.4 and the lower above (identical signals: 4.5 against 4.55).
    `pypesq` is a separate port of the same ITU-T reference code, so agreement with it on a given
    file is expected but not checked here."""
    return pesq_nb_to_raw(pesq_nb(estimate, reference, sample_rate))
