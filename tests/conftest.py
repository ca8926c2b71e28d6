"""Shared fixtures: composed model configs (the real Hydra configs, shrunk for speed)."""

import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir

import usedddp.config  # CONFIG_DIR; registers the ${usedddp_demo_root:} resolver
from usedddp.models.build import build_module

# model=tiny, smaller still: a CPU forward + backward of a 0.25 s batch of 2 takes ~0.1 s.
SMALL_MODEL = [
    "model.branch.dim=32",
    "model.branch.depth=1",
    "model.branch.heads=2",
    "model.discriminator.fft_sizes=[256,128]",
    "model.discriminator.channels=4",
    "model.reconstruction.mel_window_lengths=[64,256]",
    "model.reconstruction.n_mels=[10,40]",
    "model.reconstruction.stft_window_lengths=[256,128]",
]


def compose_train(overrides):
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="session")
def small_model_cfg():
    """The `model` node of `train model=tiny` with SMALL_MODEL applied."""
    return compose_train(["model=tiny", *SMALL_MODEL]).model


@pytest.fixture
def make_module(small_model_cfg):
    """Factory for a fresh USEDDPModule from the small config (seeded, so reproducible)."""

    def make(seed=0, **overrides):
        torch.manual_seed(seed)
        cfg = small_model_cfg.copy()
        for key, value in overrides.items():
            cfg[key] = value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_module(cfg)

    return make
