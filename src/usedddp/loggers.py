"""Experiment loggers for one training stage.

wandb is the default dashboard and runs **offline** unless the user asked for otherwise, so a run
never needs an account or a network and never prompts for a login:

1. `logger.wandb.mode` if set in the config (`offline`, `online`, `disabled`);
2. else the environment's `WANDB_MODE`;
3. else `online` when `WANDB_API_KEY` is set (the user has an account and wants it used);
4. else `offline`: the run is written under `<run dir>/wandb/offline-run-*` and can be
   uploaded later with `wandb sync <that dir>`.

Each stage is its own wandb run (its steps start at 0), named `<run_name>/stage<k>`; the stages
of one run share a wandb group, `<run_name>/<run dir name>` (in a multirun
`<run_name>/<sweep dir name>/<job dir name>`), and are tagged with the prior corpora
and the in-domain flag, which are also in the run's config (for grouping and filtering by prior).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("usedddp.train")


def wandb_mode(configured: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The wandb mode a run uses: see the module docstring for the order of precedence."""
    environ = os.environ if environ is None else environ
    if configured:
        return str(configured)
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    if environ.get("WANDB_API_KEY"):
        return "online"
    return "offline"


def stage_label(stage: int | str) -> str:
    """`stage<k>` for USE-DDP's training stages 1-3; another method's stage by its name (`prior`)."""
    return f"stage{stage}" if isinstance(stage, int) or str(stage).isdigit() else str(stage)


def wandb_tags(stage: int | str, prior: Mapping, noise: Mapping) -> list[str]:
    """Tags for the wandb UI's filters (wandb tags are at most 64 characters)."""
    tags = [stage_label(stage), f"prior:{prior['name']}", f"noise:{noise['name']}",
            "in-domain" if prior["in_domain"] else "out-of-domain"]
    return [tag[:64] for tag in tags]


def wandb_group(run_name: str, run_dir: Path) -> str:
    """`<run_name>/<run dir name>`; in a Hydra multirun `<run_name>/<sweep dir name>/<job dir name>`
    (job dirs such as `0_prior=demo` repeat across sweeps). wandb groups are at most 128 characters."""
    run_dir = Path(run_dir)
    parts = [run_name, run_dir.name]
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            parts.insert(1, run_dir.parent.name)
    except (ImportError, ValueError):
        pass
    return "/".join(parts)[:128]


def stage_logger(logger_cfg: DictConfig, stage: int | str, run_name: str, run_dir: Path, prior: Mapping, noise: Mapping):
    """Instantiate one configured logger for `stage` (CSV/TensorBoard: version `stage<k>`, or the
    stage's name for a method whose stages are named)."""
    label = stage_label(stage)
    if not logger_cfg._target_.endswith("WandbLogger"):
        return instantiate(logger_cfg, version=label)
    mode = wandb_mode(logger_cfg.get("mode"))
    group = logger_cfg.get("group") or wandb_group(run_name, run_dir)
    tags = [*(logger_cfg.get("tags") or []), *wandb_tags(stage, prior, noise)]
    hint = f"; upload later with `wandb sync {Path(logger_cfg.save_dir) / 'wandb'}/offline-run-*`" if mode == "offline" else ""
    log.info("wandb: %s in %s mode, group %s%s", label, mode, group, hint)
    # wandb run ids must be unique in a project: name the run, let wandb pick the id. Offline
    # runs cannot resume (WandbLogger asks for resume="allow", which wandb then warns about).
    extra = {"resume": None} if mode == "offline" else {}
    return instantiate(logger_cfg, name=f"{run_name}/{label}", job_type=label, group=group, tags=tags, mode=mode, **extra)
