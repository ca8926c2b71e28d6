"""A model config -> the LightningModule, then its pretrained weights.

`model.codec.weights` (a DAC release file) is read here, not by the codec: construction builds
random weights, load_dac_weights then fills the codec and the branch codebooks. Build models
with this rather than hydra's instantiate(cfg.model), which would hand `weights` to the codec.
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from usedddp.models.components.dac_codec import DACCodec, load_dac_weights

log = logging.getLogger("usedddp.models")


def split_weights(model_cfg: DictConfig | dict) -> tuple[dict, str | None]:
    """(the model config as plain containers, resolved, without codec.weights; that path or None)."""
    model = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)
    if not isinstance(model.get("codec"), dict):  # a model without a codec (a score prior) has no DAC weights
        return model, None
    codec = dict(model["codec"])
    weights = codec.pop("weights", None)
    model["codec"] = codec
    return model, weights


def build_module(model_cfg: DictConfig | dict, **overrides):
    """The USEDDPModule of a `model` config (constructor arguments in `overrides` win), with DAC
    release weights loaded when model.codec.weights names a file."""
    model, weights = split_weights(model_cfg)
    module = instantiate(model, **overrides)
    if weights:
        load_dac_weights(module.generator, weights)
    elif isinstance(getattr(getattr(module, "generator", None), "codec", None), DACCodec):
        log.warning("codec: no DAC weights given (model.codec.weights=null): encoder and decoder start from random weights")
    return module
