"""Data layer: audio corpora, simulated/unpaired training sets, validation clips, DataModule."""

from ..audio import AUDIO_EXTENSIONS, AudioFileError, CorpusError
from .batches import (SimulatedBatch, UnpairedBatch, ValidationBatch, collate_simulated, collate_unpaired,
                      collate_validation)
from .corpus import AudioCorpus
from .datamodule import USEDataModule
from .datasets import SimulatedMixtures, UnpairedNoisy, ValidationClips, pair_by_relative_path

__all__ = [
    "AUDIO_EXTENSIONS", "AudioCorpus", "AudioFileError", "CorpusError", "SimulatedBatch", "SimulatedMixtures",
    "USEDataModule", "UnpairedBatch", "UnpairedNoisy", "ValidationBatch", "ValidationClips", "collate_simulated",
    "collate_unpaired", "collate_validation", "pair_by_relative_path",
]
