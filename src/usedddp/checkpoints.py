"""Finding and reading USE-DDP checkpoints (Lightning .ckpt files written by the training recipe)."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file as given, or, for a run directory, the last.ckpt of its latest stage (USE-DDP:
    stage<k>/, the highest k; a learned prior: prior/)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = sorted(path.glob("stage*/checkpoints/last.ckpt"), key=lambda p: int(re.sub(r"\D", "", p.parts[-3]) or 0))
        candidates += sorted(path.glob("prior/checkpoints/last.ckpt"))
        if candidates:
            return candidates[-1]
        raise FileNotFoundError(f"{path}: no stage*/checkpoints/last.ckpt or prior/checkpoints/last.ckpt in this directory "
                                "(is it a usedddp run directory?)")
    raise FileNotFoundError(f"checkpoint not found: {path}")


def load_checkpoint(path: str | Path) -> dict:
    """Load a training checkpoint without executing pickled code."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable usedddp checkpoint ({type(error).__name__}: {error})") from error


def read_stage(path: str | Path) -> int:
    checkpoint = load_checkpoint(path)
    try:
        return int(checkpoint["usedddp"]["stage"])
    except KeyError:
        raise ValueError(f"{path}: not a usedddp training checkpoint (no 'usedddp' stage record)") from None
