"""Staged USE-DDP training: `python -m usedddp.train [experiment=...] [overrides]`.

The recipe: build the data and the model, then fit training stages 1, 2, 3 in turn, each from
the previous one's weights, with its own trainer, loggers and checkpoints under
<run>/stage<k>/; summary.json records every stage's scores, the priors and the audit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from usedddp.audit import compact, training_audit
from usedddp.callbacks import RunConfigInCheckpoint
from usedddp.checkpoints import find_checkpoint, load_checkpoint, read_stage
from usedddp.config import CONFIG_DIR, UsageError, prepare_argv
from usedddp.examples import write_examples
from usedddp.loggers import stage_label, stage_logger
from usedddp.memory import DEFAULT_OVERHEAD, GIB, MemoryGuardError, check_step_memory
from usedddp.models.build import build_module
from usedddp.stages import TRAINING_STAGES, TrainingStage

log = logging.getLogger("usedddp.train")

# Methods whose training is a clean-speech prior alone: {method: what its training minimises}.
PRIOR_METHODS = {"udiffse": "denoising score matching", "rvae": "Itakura-Saito + beta KL (a VAE)"}


def method_name(cfg: DictConfig) -> str:
    """The run's method (configs/method/): use_ddp (the default, staged training), or a learned
    clean-speech prior trained alone: udiffse (diffusion) or rvae (VAE)."""
    return str(OmegaConf.select(cfg, "method.name", default="use_ddp"))


def train(cfg: DictConfig) -> dict:
    method = method_name(cfg)
    if method not in ("use_ddp", *PRIOR_METHODS):
        raise UsageError(f"method={method}: use method=use_ddp or an experiment that trains another method "
                         "(experiment=udiffse_prior, experiment=rvae_prior)")
    stages = [int(s) for s in cfg.stages] if method == "use_ddp" else ["prior"]
    budgets = {stage: stage_budget(cfg, stage) for stage in stages}  # refuses a stage without one, before any work
    check_accelerator(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")

    prior = _corpus_record(cfg.prior, cfg.data)
    noise = _corpus_record(cfg.noise, cfg.data)
    if prior["in_domain"]:
        log.warning("clean prior '%s' is IN-DOMAIN for data '%s': it comes from the corpus the evaluation mixtures were made from, which flatters results", prior["name"], cfg.data.domain)
    log.info("clean prior: %s (%s); noise prior: %s (%s)", prior["name"], prior["dir"], noise["name"], noise["dir"])
    audit = _audit(cfg)
    if method in PRIOR_METHODS:
        summary = {"run_dir": str(run_dir), "config": str(run_dir / ".hydra" / "config.yaml"),
                   "data": {"domain": cfg.data.domain, "root": str(cfg.data.root)}, "prior": prior, "noise": noise,
                   "audit": audit, "init_from": cfg.init_from, "stages": {}}
        return _train_prior(cfg, run_dir, summary, audit, started)

    datamodule = instantiate(cfg.data)
    module = build_module(cfg.model)

    resume = find_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    if resume is not None:
        resume_stage = read_stage(resume)
        if resume_stage not in stages:
            raise ValueError(f"ckpt_path={resume} is a stage-{resume_stage} checkpoint, but stages={stages}")
        stages = stages[stages.index(resume_stage):]
        log.info("resuming stage %d from %s", resume_stage, resume)
    elif cfg.init_from:
        source = find_checkpoint(cfg.init_from)
        result = module.load_state_dict(load_checkpoint(source)["state_dict"], strict=False)
        examples = [f"{kind} e.g. {keys[:3]}" for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        log.info("init_from=%s: %d tensors missing, %d unexpected%s", source, len(result.missing_keys), len(result.unexpected_keys),
                 f" ({'; '.join(examples)})" if examples else "")

    summary_path = run_dir / "summary.json"
    summary = {
        "run_dir": str(run_dir),
        "config": str(run_dir / ".hydra" / "config.yaml"),
        "data": {"domain": cfg.data.domain, "root": str(cfg.data.root)},
        "prior": prior,
        "noise": noise,
        "audit": audit,
        # Which codec: the Hydra choice (model/codec=stft|dac_tiny|dac16k|...) and its class.
        "codec": {"choice": _choice("model/codec"), "target": cfg.model.codec._target_},
        "codec_weights": cfg.model.codec.get("weights"),
        "init_from": cfg.init_from,
        "resumed_from": str(resume) if resume else None,
        "stages": {},
    }

    for stage in stages:
        spec = TRAINING_STAGES[stage]
        module.training_stage = datamodule.training_stage = spec
        summary["stages"][str(stage)] = _fit_stage(cfg, module, datamodule, spec, budgets[stage], run_dir,
                                                   resume if stage == stages[0] else None, audit)
        summary["wall_time_s"] = round(time.time() - started, 1)
        _write_summary(summary_path, summary)

    summary["skipped_nonfinite_steps"] = dict(module.skipped_steps)
    summary["skipped_files"] = {name: [f"{p}: {why}" for p, why in corpus.skipped] for name, corpus in datamodule.corpora.items() if corpus.skipped}
    summary["wall_time_s"] = round(time.time() - started, 1)
    _write_summary(summary_path, summary)
    if rank_zero_only.rank == 0:
        _print_report(summary)
    return summary


def _write_summary(path: Path, summary: dict) -> None:
    # Under DDP every process runs this recipe; only global rank 0 (which also writes the
    # checkpoints, logs and examples) writes the summary, or the ranks would race on one file.
    if rank_zero_only.rank == 0:
        path.write_text(json.dumps(summary, indent=2))


def _audit(cfg: DictConfig) -> dict | None:
    """The corpus audit (usedddp.audit) on global rank 0, which alone writes the summary and logs;
    its table and warnings go to train.log."""
    if rank_zero_only.rank != 0:
        return None
    return training_audit(cfg, log)


def stage_budget(cfg: DictConfig, stage: int | str) -> int:
    """Generator steps for training stage `stage`: trainer.max_steps when set (one budget the user
    typed, for every stage), else the experiment's stage_max_steps[stage]."""
    if cfg.trainer.get("max_steps") is not None:
        steps = int(cfg.trainer.max_steps)
    else:
        budgets = cfg.get("stage_max_steps") or {}
        steps = budgets.get(stage, budgets.get(str(stage)))
        if steps is None:
            raise UsageError(f"training stage {stage} has no step budget: set trainer.max_steps=N (every stage) or "
                             f"stage_max_steps.{stage}=N")
        steps = int(steps)
    if steps < 1:
        raise UsageError(f"training stage {stage}: a budget of {steps} steps; give at least 1 (trainer.max_steps=N)")
    return steps


def check_accelerator(cfg: DictConfig) -> None:
    """Refuse a GPU trainer on a machine without a CUDA device, naming the override that runs on
    the CPU (Lightning would stop deep in a trace with 'No supported gpu backend found!')."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(f"trainer.accelerator={accelerator} (trainer=gpu or trainer=ddp, chosen by the experiment or the "
                         "command line) needs a CUDA GPU and this machine has none: add trainer=default to run on the CPU, "
                         "e.g. python -m usedddp.train experiment=vctk_unsup trainer=default ...")


def _stage_trainer(cfg: DictConfig, stage: int | str, run_dir: Path, max_steps: int, has_references: bool,
                   audit: dict | None):
    """(trainer, callbacks by name) of one stage: its checkpoints under <run>/<stage label>/checkpoints,
    its loggers, the run's hyperparameters and the run config stored in every checkpoint."""
    stage_dir = run_dir / stage_label(stage)
    callbacks = {}
    for name, cb_cfg in cfg.callbacks.items():
        extra = {}
        if cb_cfg._target_.endswith("ModelCheckpoint"):
            extra["dirpath"] = str(stage_dir / "checkpoints")
            if cb_cfg.get("monitor") == "val/si_sdr" and not has_references:
                extra["monitor"] = "val/dnsmos/ovrl"
        callbacks[name] = instantiate(cb_cfg, **extra)
    prior, noise = _corpus_record(cfg.prior, cfg.data), _corpus_record(cfg.noise, cfg.data)
    loggers = [stage_logger(lg, stage, cfg.run_name, run_dir, prior, noise) for lg in cfg.logger.values()]
    hparams = OmegaConf.to_container(cfg, resolve=True)
    # The resolved config in every checkpoint: a .ckpt copied anywhere rebuilds its model.
    callbacks["run_config"] = RunConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True))
    # The prior corpora and the in-domain flag, for grouping and filtering runs by prior.
    hparams["stage"], hparams["prior"]["in_domain"], hparams["noise"]["in_domain"] = stage, prior["in_domain"], noise["in_domain"]
    if audit is not None:
        # The audit's warnings and a few numbers per corpus, beside the settings in hparams["audit"].
        hparams["audit"] = {**hparams.get("audit", {}), **compact(audit)}
    for logger in loggers:
        logger.log_hyperparams(hparams)
    return instantiate(cfg.trainer, max_steps=max_steps, callbacks=list(callbacks.values()), logger=loggers), callbacks


def _checkpoint_record(callbacks: dict) -> dict:
    return {
        "last": next((cb.last_model_path for cb in callbacks.values() if getattr(cb, "last_model_path", "")), ""),
        "best": next((cb.best_model_path for cb in callbacks.values() if getattr(cb, "monitor", None)), ""),
    }


def _finish_wandb() -> None:
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()  # one wandb run per stage: each stage's steps start at 0


def _fit_stage(cfg: DictConfig, module, datamodule, spec: TrainingStage, max_steps: int, run_dir: Path,
               resume: Path | None, audit: dict | None = None) -> dict:
    stage = spec.number
    datamodule.setup("fit")
    trainer, callbacks = _stage_trainer(cfg, stage, run_dir, max_steps, datamodule.has_references, audit)

    memory = _check_memory(cfg, module, stage)
    started = time.time()
    log.info("training stage %d: %d steps on %s", stage, max_steps, spec.description)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    fit_seconds = time.time() - started

    # End-of-stage validation with every metric (PESQ and ESTOI are otherwise computed at an interval).
    module.full_metrics_next_val = True
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    module.full_metrics_next_val = False

    record = {
        "steps": int(trainer.global_step),
        "memory_estimate": memory,
        "fit_seconds": round(fit_seconds, 1),
        "metrics": {k: round(float(v), 4) for k, v in sorted(metrics.items())},
        "checkpoints": _checkpoint_record(callbacks),
    }
    if trainer.is_global_zero:
        record["examples"] = [str(p) for p in write_examples(module.generator, datamodule.val_dataset, run_dir / "examples" / f"stage{stage}", cfg.n_examples)]
    log.info("stage %d done in %.0f s: %s", stage, fit_seconds, record["metrics"])
    _finish_wandb()
    return record


def _check_memory(cfg: DictConfig, module, stage: int) -> dict | None:
    """The memory guard (usedddp.memory.check_step_memory) before a training stage: a step
    estimated to need more than the machine has is refused with the overrides that help,
    instead of a kernel kill minutes later. Its estimate goes into summary.json."""
    guard = cfg.get("memory_guard") or {}
    if not guard.get("enabled", True):
        return None
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    device = torch.device("cuda") if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else torch.device("cpu")
    precision = str(cfg.trainer.get("precision", "32"))
    autocast = torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else None
    available = guard.get("available_gb")
    moved = next(module.parameters()).device != device
    if moved:
        module.to(device)
    try:
        estimate = check_step_memory(module, stage=stage, batch_size=int(cfg.data.batch_size),
                                     segment_seconds=float(cfg.data.segment_seconds), device=device,
                                     available=None if available is None else int(float(available) * GIB),
                                     overhead=float(guard.get("overhead", DEFAULT_OVERHEAD)),
                                     probe_seconds=guard.get("probe_seconds", 0.5), autocast_dtype=autocast, log=log)
    except MemoryGuardError as error:
        raise UsageError(str(error)) from None
    finally:
        if moved:
            module.to("cpu")
    return None if estimate is None else estimate.as_dict()


def _train_prior(cfg: DictConfig, run_dir: Path, summary: dict, audit: dict | None, started: float) -> dict:
    """The recipe of a learned speech prior (method=udiffse or rvae): one stage, `prior`, on the
    clean-prior corpus alone; its checkpoints (weights, the run config) are what enhance, evaluate
    and compare load."""
    max_steps = stage_budget(cfg, "prior")
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    resume = find_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    if cfg.init_from:
        source = find_checkpoint(cfg.init_from)
        result = module.load_state_dict(load_checkpoint(source)["state_dict"], strict=False)
        log.info("init_from=%s: %d tensors missing, %d unexpected", source, len(result.missing_keys), len(result.unexpected_keys))
    datamodule.setup("fit")
    trainer, callbacks = _stage_trainer(cfg, "prior", run_dir, max_steps, True, audit)
    params = sum(p.numel() for p in module.backbone.parameters())
    log.info("prior: %d steps of %s on %s, a %.2f M-parameter %s", max_steps, PRIOR_METHODS[method_name(cfg)],
             cfg.prior.dir, params / 1e6, type(module.backbone).__name__)
    fit_started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    fit_seconds = time.time() - fit_started
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    summary["method"] = method_name(cfg)
    summary["parameters_m"] = round(params / 1e6, 3)
    summary["stages"]["prior"] = {"steps": int(trainer.global_step), "fit_seconds": round(fit_seconds, 1),
                                  "metrics": {k: round(float(v), 4) for k, v in sorted(metrics.items())},
                                  "checkpoints": _checkpoint_record(callbacks)}
    summary["skipped_files"] = {name: [f"{p}: {why}" for p, why in corpus.skipped]
                                for name, corpus in datamodule.corpora.items() if corpus.skipped}
    summary["wall_time_s"] = round(time.time() - started, 1)
    _write_summary(run_dir / "summary.json", summary)
    _finish_wandb()
    if rank_zero_only.rank == 0:
        print(f"run directory: {run_dir}\nclean prior: {summary['prior']['name']} (in-domain: {summary['prior']['in_domain']})\n"
              f"prior: {summary['stages']['prior']['steps']} steps, validation loss {summary['stages']['prior']['metrics'].get('val/loss', float('nan')):.4f}\n"
              f"wall time: {summary['wall_time_s']:.0f} s; summary: {run_dir}/summary.json\n"
              f"enhance: python -m usedddp.enhance ckpt={run_dir} input=... output=...; "
              f"score: python -m usedddp.evaluate ckpt={run_dir} output=...; "
              f"compare: python -m usedddp.compare runs=[{run_dir},...] output=...")
    return summary


def _corpus_record(corpus_cfg: DictConfig, data_cfg: DictConfig) -> dict:
    return {
        "name": corpus_cfg.name,
        "dir": str(corpus_cfg.dir),
        "domain": str(corpus_cfg.domain),
        "in_domain": str(corpus_cfg.domain) == str(data_cfg.domain),
    }


def _choice(group: str) -> str | None:
    """The config chosen for a Hydra group in this run (None when not run through Hydra's main)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def _print_report(summary: dict) -> None:
    lines = [f"run directory: {summary['run_dir']}", f"clean prior: {summary['prior']['name']} (in-domain: {summary['prior']['in_domain']})"]
    if summary.get("codec"):
        lines.append(f"codec: {summary['codec']['choice'] or summary['codec']['target']}")
    header = f"{'stage':>5} {'steps':>6} {'SI-SDR clean':>13} {'SI-SDR noisy':>13} {'ESTOI clean':>12} {'ESTOI noisy':>12} {'PESQ clean':>11} {'PESQ noisy':>11}"
    lines.append(header)
    for stage, rec in summary["stages"].items():
        m = rec["metrics"]
        cells = [m.get(k, float("nan")) for k in ("val/si_sdr", "val/input/si_sdr", "val/estoi", "val/input/estoi", "val/pesq_wb", "val/input/pesq_wb")]
        lines.append(f"{stage:>5} {rec['steps']:>6} " + " ".join(f"{c:>{w}.3f}" for c, w in zip(cells, (13, 13, 12, 12, 11, 11))))
    lines.append(f"wall time: {summary['wall_time_s']:.0f} s; summary: {summary['run_dir']}/summary.json")
    print("\n".join(lines))


# Third-party notices that say nothing actionable to a user of this recipe: Lightning's note that
# manual-optimisation checkpoints hold the post-step state (what resuming needs), dac's use of the
# deprecated weight_norm (kept: release checkpoints store weight_g/weight_v), and pytree renames.
for _message in ("Using ModelCheckpoint with manual optimization", ".*LeafSpec.*", ".*weight_norm.*is deprecated"):
    warnings.filterwarnings("ignore", message=_message)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except UsageError as error:
        log.error("refused: %s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    prepare_argv()  # init_from= / ckpt_path= paths with '=' in them are taken as typed
    _main()


if __name__ == "__main__":
    main()
