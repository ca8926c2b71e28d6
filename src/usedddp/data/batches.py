"""Batch containers. Datasets return them with (1, T) tensors; the collate functions stack to (B, 1, T).

Plain dataclasses so Lightning's device transfer can rebuild them field by field; the
`pin_memory` method lets DataLoader(pin_memory=True) pin them as well.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


class _Tensors:
    def pin_memory(self):
        pinned = {f.name: getattr(self, f.name).pin_memory() for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), Tensor)}
        return dataclasses.replace(self, **pinned)


@dataclass
class SimulatedBatch(_Tensors):
    """Stages 1-2: mixtures simulated from the prior corpora, so both targets are known."""

    noisy: Tensor  # clean + noise
    clean: Tensor  # target; also the 'real' example for the clean discriminator
    noise: Tensor  # target; also the 'real' example for the noise discriminator

    @property
    def clean_prior(self) -> Tensor:
        return self.clean

    @property
    def noise_prior(self) -> Tensor:
        return self.noise


@dataclass
class UnpairedBatch(_Tensors):
    """Stage 3: real noisy recordings. Deliberately has no clean/noise target field."""

    noisy: Tensor  # real noisy recordings
    clean_prior: Tensor  # independent draws from the clean-prior corpus
    noise_prior: Tensor  # independent draws from the noise-prior corpus


@dataclass
class ValidationBatch(_Tensors):
    noisy: Tensor
    clean: Tensor | None  # None when the validation set has no clean references
    name: list[str]  # relative paths of the clips


def collate_simulated(items: list[SimulatedBatch]) -> SimulatedBatch:
    return SimulatedBatch(*(torch.stack([getattr(it, k) for it in items]) for k in ("noisy", "clean", "noise")))


def collate_unpaired(items: list[UnpairedBatch]) -> UnpairedBatch:
    return UnpairedBatch(*(torch.stack([getattr(it, k) for it in items]) for k in ("noisy", "clean_prior", "noise_prior")))


def collate_validation(items: list[ValidationBatch]) -> ValidationBatch:
    lengths = {it.noisy.shape[-1] for it in items}
    if len(lengths) > 1:
        # Padding would change the metrics, so clips of different lengths need batch_size=1.
        raise ValueError(f"validation clips differ in length {sorted(lengths)}; use batch_size=1")
    has_clean = {it.clean is not None for it in items}
    if len(has_clean) > 1:
        raise ValueError("validation batch mixes clips with and without clean references")
    return ValidationBatch(
        noisy=torch.stack([it.noisy for it in items]),
        clean=torch.stack([it.clean for it in items]) if has_clean == {True} else None,
        name=[n for it in items for n in it.name],
    )
