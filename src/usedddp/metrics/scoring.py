"""Scoring one file against its reference with every metric the evaluation reports.

Kept apart from `usedddp.evaluate` so that the worker processes scoring files in parallel import
only the metrics, not the training stack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usedddp import metrics
from usedddp.audio import AudioFileError, load_audio

SAMPLE_RATE = 16000  # wide-band PESQ, DNSMOS and the composite measures are defined at 16 kHz


def score_pair(estimate: Path, reference: Path | None, dnsmos: bool = True) -> dict[str, float]:
    """Every metric of one estimate file against its reference (None: reference-free only).

    Both are read as mono at 16 kHz (channel mean, torchaudio resampling) and cut to the shorter
    length; `length_diff` records by how many samples they differed."""
    est = load_audio(estimate, SAMPLE_RATE)[0].numpy().astype(np.float64)
    row: dict[str, float] = {"duration_s": est.shape[-1] / SAMPLE_RATE}
    if reference is not None:
        ref = load_audio(reference, SAMPLE_RATE)[0].numpy().astype(np.float64)
        n = min(est.shape[-1], ref.shape[-1])
        row["length_diff"] = est.shape[-1] - ref.shape[-1]
        e, r = est[:n], ref[:n]
        if not r.any():
            raise AudioFileError(reference, "reference is silent (all zeros): intrusive metrics are undefined")
        row["pesq_wb"] = metrics.pesq_wb(e, r, SAMPLE_RATE)
        row["pesq_nb"] = metrics.pesq_nb(e, r, SAMPLE_RATE)
        row["pesq_nb_raw"] = metrics.pesq_nb_to_raw(row["pesq_nb"])  # the same score before P.862.1: no second PESQ run
        row["stoi"] = metrics.stoi(e, r, SAMPLE_RATE)
        row["estoi"] = metrics.estoi(e, r, SAMPLE_RATE)
        row["si_sdr"] = metrics.si_sdr(e, r)
        row["hf_si_sdr"] = metrics.band_si_sdr(e, r, SAMPLE_RATE)
        row["hf_level"] = metrics.band_level_db(e, r, SAMPLE_RATE)
        comp = metrics.composite(e, r, SAMPLE_RATE, pesq=row["pesq_wb"])
        row.update({k: comp[k] for k in ("csig", "cbak", "covl")})
    if dnsmos:
        scores = metrics.dnsmos(est, SAMPLE_RATE)
        row.update({f"dnsmos_{k}": scores[k] for k in ("sig", "bak", "ovrl")})
    return row


def score_job(job: tuple) -> tuple[str, str, dict | None, str | None]:
    key, system, estimate, reference, dnsmos = job
    try:
        return key, system, score_pair(estimate, reference, dnsmos), None
    except Exception as error:  # one file's problem: reported, the others are scored
        reason = str(error.problem) if isinstance(error, AudioFileError) and error.problem else f"{type(error).__name__}: {error}"
        path = error.path if isinstance(error, AudioFileError) else str(estimate)
        return key, system, None, f"{path}: {reason}"


def worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one file per process; more threads each only oversubscribe the cores
