"""A learned-prior run's checkpoint -> its enhancer: UDiffSE (diffusion prior) and the VAE-NMF
methods (VAE priors), the inference layer's methods besides USE-DDP."""

from __future__ import annotations

import logging
import warnings
from dataclasses import fields
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from usedddp.inference import InferenceError, LoadedModel, _run_dir
from usedddp.methods.udiffse import SamplerConfig, UDiffSEEnhancer

log = logging.getLogger("usedddp.inference")


def sampler_config(config: DictConfig, overrides: dict | None = None) -> SamplerConfig:
    """The run's `method` node with the user's overrides (method.sampler=fast, ...)."""
    node = OmegaConf.to_container(config.get("method") or {}, resolve=True)
    try:
        return SamplerConfig.from_config({**node, **(overrides or {})})
    except (TypeError, ValueError) as error:
        raise InferenceError(str(error)) from None


def rebuild_prior(checkpoint: Path, state: dict, config: DictConfig, device: torch.device, what: str):
    """The prior's LightningModule from the run config, its weights loaded strictly, eval mode on `device`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = instantiate(OmegaConf.to_container(config.model, resolve=True))
        module.load_state_dict(state["state_dict"], strict=True)
    except Exception as error:
        raise InferenceError(f"{checkpoint}: cannot rebuild the {what} its config describes ({type(error).__name__}: {error})") from error
    return module.to(device).eval()


def load_udiffse(checkpoint: Path, state: dict, config: DictConfig, device: torch.device, overrides: dict | None = None,
                 progress: bool = False) -> LoadedModel:
    check_options(checkpoint, "a UDiffSE", overrides or {}, {f.name for f in fields(SamplerConfig)})
    cfg = sampler_config(config, overrides)
    module = rebuild_prior(checkpoint, state, config, device, "score model")
    try:
        score = module.gaussian_score() if cfg.score == "gaussian" else module.score(ema=True)
    except ValueError as error:
        raise InferenceError(f"{checkpoint}: {error}") from None
    enhancer = UDiffSEEnhancer(score, module.sde, module.stft, cfg, module.frame_multiple, module.sample_rate, device, progress)
    label = f"UDiffSE {cfg.sampler}" + (" (Gaussian score)" if cfg.score == "gaussian" else "")
    params = sum(p.numel() for p in module.backbone.parameters()) / 1e6
    log.info("model: %s (UDiffSE prior, %.2f M parameters; %s sampler, %s score, %d NFE per chunk)", checkpoint, params,
             cfg.sampler, cfg.score, cfg.nfe)
    return LoadedModel(enhancer, config, checkpoint, (state.get("usedddp") or {}).get("stage", "prior"),
                       _run_dir(checkpoint), "udiffse", label)



def check_options(checkpoint: Path, method: str, overrides: dict, known: set[str]) -> None:
    """Refuse, by name, an option the run's method does not have (e.g. method.estep on a UDiffSE run)."""
    unknown = sorted(set(overrides) - known - {"name"})
    if unknown:
        raise InferenceError(f"{checkpoint}: method.{unknown[0]}=... is not an option of {method} run "
                             f"(its options: {', '.join(sorted(known))})")


def load_vae(checkpoint: Path, state: dict, config: DictConfig, device: torch.device, overrides: dict | None = None,
             progress: bool = False) -> LoadedModel:
    """A VAE-prior run's checkpoint -> its VAE-NMF enhancer with the E-step `method.estep`."""
    from usedddp.methods.vae_nmf import EMConfig, VAENMFEnhancer

    overrides = overrides or {}
    check_options(checkpoint, "an RVAE-NMF", overrides, EMConfig.option_names())
    node = OmegaConf.to_container(config.get("method") or {}, resolve=True)
    try:
        cfg = EMConfig.from_config({**node, **overrides})
    except (TypeError, ValueError) as error:
        raise InferenceError(str(error)) from None
    module = rebuild_prior(checkpoint, state, config, device, "VAE")
    enhancer = VAENMFEnhancer(module.backbone, module.stft, cfg, module.sample_rate, device, progress)
    kind = type(module.backbone).__name__
    label = f"{'RVAE' if kind == 'RVAE' else 'VAE'}-NMF {cfg.estep}"
    log.info("model: %s (%s prior, %.2f M parameters; E-step %s, %d EM iterations, NMF rank %d)", checkpoint, kind,
             sum(p.numel() for p in module.backbone.parameters()) / 1e6, cfg.estep, cfg.em_iterations, cfg.nmf_rank)
    return LoadedModel(enhancer, config, checkpoint, (state.get("usedddp") or {}).get("stage", "prior"),
                       _run_dir(checkpoint), "rvae", label)
