"""DNSMOS P.835 (Reddy et al. 2022), reference-free, from the ONNX models inside the `speechmos`
wheel (sig_bak_ovr.onnx for SIG/BAK/OVRL, model_v8.onnx for P.808): nothing is downloaded."""

from __future__ import annotations

import numpy as np
import torch

DNSMOS_MODEL = "DNSMOS P.835 sig_bak_ovr.onnx + P.808 model_v8.onnx (speechmos wheel), non-personalised, 16 kHz"


def dnsmos(wav, sample_rate: int = 16000) -> dict[str, float]:
    """One clip (any shape holding T samples at 16 kHz) -> {"sig", "bak", "ovrl", "p808"} MOS.

    Clips shorter than the model's 9.01 s window are repeated to fill it (speechmos' rule)."""
    from speechmos import dnsmos as _dnsmos

    if sample_rate != 16000:
        raise ValueError(f"DNSMOS is defined at 16 kHz, got {sample_rate} Hz")
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    audio = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if not audio.any():
        return {"sig": float("nan"), "bak": float("nan"), "ovrl": float("nan"), "p808": float("nan")}
    scores = _dnsmos.run(audio, sr=sample_rate)
    return {"sig": float(scores["sig_mos"]), "bak": float(scores["bak_mos"]), "ovrl": float(scores["ovrl_mos"]), "p808": float(scores["p808_mos"])}
