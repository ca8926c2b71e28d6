"""Compare every method on one test set: `python -m usedddp.compare runs=[RUN,...] output=DIR`.

    python -m usedddp.compare runs=[outputs/demo/RUN,outputs/udiffse_prior/RUN] output=comparison
    python -m usedddp.compare runs=multirun/demo/TIME output=comparison data.root=/data/VCTK-DEMAND

Each run (a run directory, any .ckpt a run wrote, or a multirun folder whose subfolders are runs)
is enhanced with each of its method's variants (usedddp.methods.registry; `variants.<method>=`
overrides them), beside training-free baselines (noisereduce's spectral gating and the oracle
Wiener filter, which reads the clean reference and so is an upper bound, not a method), into
DIR/enhanced/<system>/, and everything is scored by usedddp.evaluate's metric code with the noisy
input as its own row. DIR gets compare.md, compare.json (with the provenance evaluate records),
per_file.csv and quality_cost.png (quality against real-time factor).

The test set is the runs' own held-out set unless data.root= or data.noisy_dir=/data.clean_dir=
names one; runs whose own held-out sets differ are refused rather than scored on different sets.
A system whose outputs are already in DIR (same checkpoint file, same options, same test set:
DIR/enhanced/<system>/.usedddp_system.json) is reused, so adding a run to an earlier command
enhances only the new run. A run or a file that fails is reported and the rest goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from usedddp.audio import CorpusError
from usedddp.config import CONFIG_DIR, prepare_argv  # also registers the ${usedddp_demo_root:} resolver
from usedddp.evaluate import (EvaluateError, Evaluation, _corpus, _load_conditions, default_jobs, evaluate_folders,
                              provenance_record, resolve_test_set, summarise, write_per_file)
from usedddp.methods import registry
from usedddp.reporting import (HEADERS, MISSING, NOISY, FolderError, Summary, SummaryError, cost_table, fmt, index_audio,
                               json_safe, markdown_grid, problem_sections, read_summary, summary_table, write_summary)

log = logging.getLogger("usedddp.compare")

USAGE = """usage:
    python -m usedddp.compare runs=[RUN_OR_CKPT,...] output=DIR [data.root=TEST_ROOT]
    python -m usedddp.compare runs=MULTIRUN_DIR output=DIR [data.noisy_dir=NOISY data.clean_dir=CLEAN]"""

BASELINES = ("noisereduce", "oracle_wiener")
MANIFEST = ".usedddp_system.json"
REPORT_FILES = ("compare.json", "compare.md", "per_file.csv", "quality_cost.png")
ORACLE_STFT = {"n_fft": 1024, "hop": 256}


class CompareError(ValueError):
    """The comparison cannot run as asked (exit code 2); the message names the setting and the fix."""


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunEntry:
    path: Path  # as given: a run directory or a .ckpt
    name: str  # its folder (and checkpoint) name, for messages
    checkpoint: Path | None = None
    config: DictConfig | None = None
    method: str | None = None
    overrides: list[str] = field(default_factory=list)  # the run's Hydra overrides, when recorded
    tag: str = ""  # prefixed to its systems' labels when several runs share a method
    error: str | None = None

    @property
    def run_name(self) -> str | None:
        value = None if self.config is None else self.config.get("run_name")
        return None if value is None else str(value)


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _is_run_dir(path: Path) -> bool:
    """A training run's folder: a .hydra/config.yaml with a `model` or `stages` node, or a
    training summary.json (with `stages`); other commands' Hydra folders and evaluations are not."""
    try:
        if (path / ".hydra" / "config.yaml").is_file():
            config = OmegaConf.load(path / ".hydra" / "config.yaml") or {}
            return "model" in config or "stages" in config
        if (path / "summary.json").is_file():
            return "stages" in json.loads((path / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
    return False


def run_paths(items: list[str]) -> list[Path]:
    """The runs named by `runs=`: each path as given, except a folder that is not a run itself
    (no .hydra/config.yaml, no summary.json) but has runs as subfolders (a Hydra multirun),
    which stands for those, in job order."""
    out: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir() and not _is_run_dir(path):
            children = sorted((c for c in path.iterdir() if c.is_dir() and _is_run_dir(c)), key=lambda c: _natural_key(c.name))
            if children:
                log.info("%s: a folder of %d runs (%s)", path, len(children), ", ".join(c.name for c in children))
                out += children
                continue
        out.append(path)
    return out


def _display_name(path: Path, checkpoint: Path | None) -> str:
    if checkpoint is None or path.is_dir():
        return path.name or str(path)
    parents = checkpoint.resolve().parents
    if len(parents) > 2 and (parents[2] / ".hydra" / "config.yaml").is_file():  # <run>/stage<k>/checkpoints/x.ckpt
        return f"{parents[2].name}/{checkpoint.parents[1].name}/{checkpoint.stem}"
    return f"{checkpoint.parent.name}/{checkpoint.stem}"


def read_run(path: Path) -> RunEntry:
    """A run's checkpoint and training config, read without building its model; a problem is
    recorded in `error` (the comparison goes on without the run)."""
    from usedddp.checkpoints import find_checkpoint, load_checkpoint
    from usedddp.inference import run_config

    entry = RunEntry(path=path, name=path.name or str(path))
    try:
        entry.checkpoint = find_checkpoint(path)
        state = load_checkpoint(entry.checkpoint)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError(f"{entry.checkpoint}: not a usedddp training checkpoint (no 'state_dict')")
        entry.config = run_config(entry.checkpoint, state)
        del state
    except (FileNotFoundError, ValueError) as error:  # InferenceError is a ValueError
        entry.error = str(error).splitlines()[0]
        return entry
    entry.name = _display_name(path, entry.checkpoint)
    entry.method = str(OmegaConf.select(entry.config, "method.name", default="use_ddp"))
    run_dir = entry.checkpoint.resolve().parents[2] if len(entry.checkpoint.resolve().parents) > 2 else None
    for folder in (path if path.is_dir() else None, run_dir):
        if folder is not None and (folder / ".hydra" / "overrides.yaml").is_file():
            entry.overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml")) or []]
            break
    return entry


def _varying_overrides(entries: list[RunEntry]) -> list[str]:
    parsed = [{o.partition("=")[0].lstrip("+~"): o.partition("=")[2] for o in e.overrides} for e in entries]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    return [",".join(f"{k}={p[k]}" for k in varying if k in p) for p in parsed]


def assign_tags(entries: list[RunEntry]) -> None:
    """Runs that share a method get a tag, prefixed to their systems' labels: the first of run
    name, the Hydra overrides that differ, the folder name that tells them apart."""
    by_method: dict[str, list[RunEntry]] = {}
    for entry in entries:
        if entry.error is None:
            by_method.setdefault(str(entry.method), []).append(entry)
    for group in by_method.values():
        if len(group) < 2:
            continue
        for candidates in ([e.run_name or "" for e in group], _varying_overrides(group), [e.name for e in group],
                           [f"run {i}" for i, _ in enumerate(group, 1)]):
            if all(candidates) and len(set(candidates)) == len(candidates):
                for entry, tag in zip(group, candidates):
                    entry.tag = tag
                break


# --------------------------------------------------------------------------------------------
# The test set


def _own_test_set(config: DictConfig) -> tuple[str | None, str | None]:
    """The (noisy, clean) held-out folders a run's config names (None where it names none)."""
    out = []
    for key in ("data.val_noisy_dir", "data.val_clean_dir"):
        try:
            value = OmegaConf.select(config, key, default=None)
        except Exception:  # an interpolation that only resolves inside the training run
            value = None
        out.append(None if value in (None, "") else str(value))
    return out[0], out[1]


def _same_folder(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def choose_test_set(cfg: DictConfig, entries: list[RunEntry]) -> tuple[Path, Path | None, str | None, str]:
    """(noisy folder, clean folder or None, domain, where it came from). Explicit folders win;
    otherwise the runs' own held-out set, refused when two runs name different ones."""
    data = cfg.data
    if data.root or data.noisy_dir:
        noisy, clean, domain = resolve_test_set(OmegaConf.create({}), data.root, data.noisy_dir, data.clean_dir, data.domain)
        return noisy, clean, domain, "data.root" if data.root and not data.noisy_dir else "data.noisy_dir"
    if data.clean_dir:
        raise CompareError("data.clean_dir= needs data.noisy_dir= (or data.root=): the test set's noisy inputs")
    readable = [e for e in entries if e.config is not None]
    named = [(e, *_own_test_set(e.config)) for e in readable]
    named = [item for item in named if item[1] is not None]
    if not named:
        detail = "; ".join(f"{e.name}: {e.error}" for e in entries if e.error) or "no run's config names data.val_noisy_dir"
        raise CompareError(f"no test set: pass data.root=TEST_ROOT or data.noisy_dir= data.clean_dir= ({detail})")
    first, noisy0, clean0 = named[0]
    for entry, noisy, clean in named[1:]:
        if not (_same_folder(noisy, noisy0) and _same_folder(clean, clean0)):
            raise CompareError(
                f"the runs' own held-out test sets differ, so they would be scored on different test sets: "
                f"{first.path} holds out noisy {noisy0} (clean {clean0}), {entry.path} holds out noisy {noisy} "
                f"(clean {clean}); pass one test set for all of them: data.root=TEST_ROOT or data.noisy_dir= data.clean_dir=")
    for entry in readable:
        if entry not in [item[0] for item in named]:
            log.warning("%s names no held-out test set; it is scored on %s's (%s)", entry.path, first.path, noisy0)
    noisy, clean, domain = resolve_test_set(first.config, None, None, None, data.domain)
    return noisy, clean, domain, f"the runs' own held-out set ({first.path})"


def check_output(output: Path, noisy: Path, clean: Path | None, overwrite: bool) -> dict | None:
    """Refuse an output folder inside the test set, or one that holds another comparison or
    files this command would overwrite; returns the earlier comparison's summary when `output`
    holds one on the same test set (its systems may be reused)."""
    resolved = output.expanduser().resolve()
    for folder in (noisy, clean):
        if folder is not None and (resolved == folder.resolve() or folder.resolve() in resolved.parents):
            raise CompareError(f"output={output} is inside the test set ({folder}): choose another output folder")
    previous = output / "compare.json"
    if previous.exists():
        if overwrite:
            log.warning("%s exists: overwritten (overwrite=true), every system enhanced again", previous)
            return None
        try:
            summary = read_summary(previous)
        except SummaryError as error:
            raise CompareError(f"{error}: choose another output folder or pass overwrite=true") from None
        test = summary["provenance"].get("test_set") or {}
        if not (_same_folder(test.get("noisy"), noisy) and _same_folder(test.get("reference"), clean)):
            raise CompareError(f"{previous} is a comparison on another test set (noisy {test.get('noisy')}, reference "
                               f"{test.get('reference')}; now noisy {noisy}, reference {clean}): choose another output "
                               "folder or pass overwrite=true")
        log.info("%s: an earlier comparison on this test set; its systems are reused where they match", previous)
        return summary
    clashes = [name for name in REPORT_FILES[1:] if (output / name).exists()]
    if clashes and not overwrite:
        raise CompareError(f"{output} holds {', '.join(clashes)} but no compare.json: not a comparison this command "
                           "wrote; choose another output folder or pass overwrite=true")
    return None


# --------------------------------------------------------------------------------------------
# Systems


@dataclass
class System:
    kind: str  # "baseline" | "method"
    name: str  # baseline name, or the run's method
    key: dict  # what its outputs depend on: a manifest with the same key is reused
    expected: list[Path]  # the outputs it must have, relative to its folder
    run: RunEntry | None = None
    variant: dict | None = None
    label: str = ""
    model_label: str = ""  # the label its loader gives, before a run's tag
    folder: Path | None = None
    reused: bool = False
    cost: dict | None = None
    files: int = 0  # outputs present
    failed: list[str] = field(default_factory=list)
    error: str | None = None
    manifest: dict | None = None  # the earlier manifest of the folder chosen

    @property
    def description(self) -> str:
        if self.kind == "baseline":
            return {"noisereduce": "spectral gating, non-stationary (noisereduce package); training-free",
                    "oracle_wiener": "Wiener filter with the true speech and noise spectra (reads the clean reference)"}[self.name]
        return registry.describe(self.name)


def _json_normal(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def variants_for(cfg: DictConfig, method: str) -> list[dict]:
    """`variants.<method>` (a list of option dicts; a bare string picks the method's first
    selector option, e.g. variants.rvae=[vem,mala]), or the registry's comparison variants."""
    node = (cfg.get("variants") or {}).get(method)
    if node is None:
        return registry.comparison_variants(method)
    value = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    items = value if isinstance(value, list) else [value]
    selectors = registry.selector_keys(method)
    out = []
    for item in items:
        if isinstance(item, str) and selectors:
            item = {selectors[0]: item}
        if not isinstance(item, dict):
            example = f"[{{{selectors[0]}: ...}}]" if selectors else "[{}]"
            raise CompareError(f"variants.{method}={value}: give a list of option dicts, e.g. variants.{method}={example}")
        out.append({k: v for k, v in item.items() if v is not None})
    if not out:
        raise CompareError(f"variants.{method}=[]: give at least one variant (or null for the default)")
    return out


def plan_systems(cfg: DictConfig, entries: list[RunEntry], noisy: Path, clean: Path | None,
                 noisy_files: dict[str, Path], pairs: dict[str, tuple[Path, Path]]) -> list[System]:
    baselines = [str(b) for b in (cfg.baselines or [])]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise CompareError(f"baselines={baselines}: {unknown[0]!r} is not one (use any of {list(BASELINES)}, or [])")
    chunking = {"chunk_seconds": float(cfg.chunk_seconds), "overlap_seconds": float(cfg.overlap_seconds), "engine": str(cfg.get("engine", "exact"))}
    all_outputs = [p.relative_to(noisy) for _, p in sorted(noisy_files.items())]
    systems = []
    for name in baselines:
        if name == "noisereduce":
            from usedddp.methods.baselines import NoiseReduceEnhancer

            key = {"kind": "baseline", "baseline": name, "settings": NoiseReduceEnhancer().settings,
                   "noisy_dir": str(noisy.resolve()), **chunking}
            systems.append(System("baseline", name, key, all_outputs))
        elif clean is None:
            log.info("no clean references: the oracle Wiener filter (which needs them) is left out")
        else:
            key = {"kind": "baseline", "baseline": name, **ORACLE_STFT, "noisy_dir": str(noisy.resolve()),
                   "clean_dir": str(clean.resolve())}
            systems.append(System("baseline", name, key, [p.relative_to(noisy) for _, (p, _) in sorted(pairs.items())]))
    for entry in entries:
        if entry.error is not None:
            continue
        stat = entry.checkpoint.stat()
        for variant in variants_for(cfg, str(entry.method)):
            key = {"kind": "method", "method": entry.method, "checkpoint": str(entry.checkpoint.resolve()),
                   "checkpoint_size": stat.st_size, "checkpoint_mtime_ns": stat.st_mtime_ns, "variant": variant,
                   "noisy_dir": str(noisy.resolve()), "device": str(cfg.device), **chunking}
            systems.append(System("method", str(entry.method), key, all_outputs, run=entry, variant=variant))
    return [_set_key(s) for s in systems]


def _set_key(system: System) -> System:
    system.key = _json_normal(system.key)
    return system


def read_manifests(enhanced: Path) -> dict[Path, dict]:
    out = {}
    if enhanced.is_dir():
        for path in sorted(enhanced.glob(f"*/{MANIFEST}")):
            try:
                out[path.parent] = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable manifest, ignored", path)
    return out


def write_manifest(system: System, noisy: Path, complete: bool, files: list[str]) -> None:
    record = {"key": system.key, "complete": complete, "label": system.label, "model_label": system.model_label,
              "kind": system.kind, "method": system.name if system.kind == "method" else None,
              "baseline": system.name if system.kind == "baseline" else None,
              "checkpoint": None if system.run is None else {"path": system.key["checkpoint"],
                                                             "size": system.key["checkpoint_size"],
                                                             "mtime_ns": system.key["checkpoint_mtime_ns"]},
              "variant": system.variant, "noisy_dir": str(noisy.resolve()), "cost": system.cost, "files": files,
              "failed": system.failed, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (system.folder / MANIFEST).write_text(json.dumps(json_safe(record), indent=2) + "\n")


def _label(system: System, model_label: str) -> str:
    if system.kind == "baseline":
        from usedddp.methods.baselines import NOISEREDUCE_LABEL, ORACLE_WIENER_LABEL

        return {"noisereduce": NOISEREDUCE_LABEL, "oracle_wiener": ORACLE_WIENER_LABEL}[system.name]
    return f"{system.run.tag}: {model_label}" if system.run.tag else model_label


def _unique(label: str, system: System, taken: set[str]) -> str:
    if label not in taken:
        return label
    if system.variant:
        label = f"{label} ({registry.variant_text(system.variant)})"
    candidate, n = label, 2
    while candidate in taken:
        candidate, n = f"{label} #{n}", n + 1
    return candidate


def _slug(label: str) -> str:
    return re.sub(r"_+", "_", "".join(c if c.isalnum() else "_" for c in label)).strip("_").lower() or "system"


def find_reusable(systems: list[System], manifests: dict[Path, dict], taken: set[str]) -> None:
    """Systems whose outputs an earlier comparison left (same key, complete, every output
    present) take that folder."""
    claimed: set[Path] = set()
    for system in systems:
        for folder, manifest in manifests.items():
            if folder in claimed or not manifest.get("complete") or manifest.get("key") != system.key:
                continue
            if all((folder / rel).is_file() for rel in system.expected):
                system.folder, system.reused, system.cost = folder, True, manifest.get("cost")
                system.model_label = str(manifest.get("model_label") or manifest.get("label"))
                system.label = _unique(_label(system, system.model_label), system, taken)
                system.files = len(system.expected)
                taken.add(system.label)
                claimed.add(folder)
                break


def choose_folder(system: System, enhanced: Path, manifests: dict[Path, dict], claimed: set[Path], overwrite: bool) -> Path:
    base = _slug(system.label if system.kind == "method" else system.name)
    n = 1
    while True:
        folder = enhanced / (base if n == 1 else f"{base}_{n}")
        n += 1
        if folder in claimed:
            continue
        if not folder.exists() or folder in manifests or overwrite or not any(folder.iterdir()):
            return folder
        log.warning("%s exists and is not a comparison's system folder (no %s): left alone", folder, MANIFEST)


def produce(system: System, cfg: DictConfig, noisy: Path, pairs: dict[str, tuple[Path, Path]], enhanced: Path,
            manifests: dict[Path, dict], claimed: set[Path], taken: set[str]) -> None:
    """Load the system (a run's variant or a baseline), pick its folder and enhance the test set
    into it; any problem is recorded in system.error / system.failed."""
    from usedddp.enhance import enhance_paths
    from usedddp.methods.baselines import NoiseReduceEnhancer, oracle_wiener_paths

    chunking = dict(chunk_seconds=float(cfg.chunk_seconds), overlap_seconds=float(cfg.overlap_seconds))
    model = None
    try:
        if system.kind == "method":
            from usedddp.inference import load_enhancer

            model = load_enhancer(system.run.checkpoint, cfg.device, system.variant, engine=str(cfg.get("engine", "exact")))
            system.model_label = model.label
        else:
            system.model_label = _label(system, "")
    except Exception as error:  # a run that cannot be loaded: reported, the others go on
        system.label = _unique(_label(system, f"{registry.short_name(system.name)} ({registry.variant_text(system.variant or {})})"),
                               system, taken)
        taken.add(system.label)
        system.error = f"{system.run.path if system.run else system.name}: {error}"
        log.error("FAILED %s: %s", system.label, system.error)
        return
    system.label = _unique(_label(system, system.model_label), system, taken)
    taken.add(system.label)
    system.folder = choose_folder(system, enhanced, manifests, claimed, bool(cfg.overwrite))
    claimed.add(system.folder)
    system.manifest = manifests.get(system.folder)
    system.folder.mkdir(parents=True, exist_ok=True)
    for rel in (system.manifest or {}).get("files", []):  # this folder's earlier outputs (ours: listed in its manifest)
        stale = system.folder / rel
        if stale.is_file() and system.folder.resolve() in stale.resolve().parents:
            stale.unlink()
    write_manifest(system, noisy, complete=False, files=[])
    log.info("%s -> %s", system.label, system.folder)
    try:
        if system.kind == "method":
            report = enhance_paths(model.enhancer, noisy, system.folder, overwrite=True, **chunking)
        elif system.name == "noisereduce":
            report = enhance_paths(NoiseReduceEnhancer(), noisy, system.folder, overwrite=True, **chunking)
        else:
            report = oracle_wiener_paths(pairs, noisy, system.folder, **ORACLE_STFT, overwrite=True)
    except Exception as error:  # the whole system failed (a crash in the model, an unusable option)
        system.error = f"{system.label}: enhancement failed ({type(error).__name__}: {error})"
        log.exception("FAILED %s", system.label)
        return
    finally:
        del model
    system.failed = [f"{source} ({system.label}): {reason}" for source, reason in report.failed]
    system.cost = report.cost
    written = [t[0] for _, t in report.written]
    system.files = len(written)
    write_manifest(system, noisy, complete=not report.failed, files=[str(t.relative_to(system.folder)) for t in written])


# --------------------------------------------------------------------------------------------
# The report


def _yes_no(flag) -> str:
    return MISSING if flag is None else "**yes**" if flag else "no"


def priors_rows(entries: list[RunEntry], test_domain: str | None) -> list[dict]:
    """Per run: what it was trained on, and whether its priors are in-domain (evaluate._corpus)."""
    rows = []
    for entry in entries:
        if entry.config is None:
            continue
        info = registry.method_info(str(entry.method))
        clean = _corpus(entry.config, "prior", test_domain) or {}
        noise = _corpus(entry.config, "noise", test_domain) if info.uses_noise_prior else None
        try:
            data_domain = OmegaConf.select(entry.config, "data.domain", default=None)
            noisy_train = OmegaConf.select(entry.config, "data.noisy_train_dir", default=None)
        except Exception:
            data_domain, noisy_train = None, None
        rows.append({
            "run": entry.tag or entry.name, "path": str(entry.path), "method": registry.short_name(str(entry.method)),
            "training_data": (f"noisy recordings, domain {data_domain} ({noisy_train})" if info.trains_on_noisy_data
                              else "the clean prior only"),
            "training_data_domain": str(data_domain) if info.trains_on_noisy_data and data_domain is not None else None,
            "clean_prior": clean or None, "noise_prior": noise,
            "noise_model": None if info.uses_noise_prior else info.noise_model,
        })
    return rows


def priors_table(rows: list[dict]) -> str:
    cells = []
    for row in rows:
        clean, noise = row["clean_prior"] or {}, row["noise_prior"]
        noise_cell = (f"{noise.get('name')} (domain {noise.get('domain')})" if noise
                      else f"none ({row['noise_model'] or 'none'})")
        cells.append([
            row["run"], row["method"], row["training_data"],
            f"{clean.get('name')} (domain {clean.get('domain')})" if clean else MISSING, f"`{clean.get('dir')}`" if clean else MISSING,
            noise_cell, f"`{noise.get('dir')}`" if noise else MISSING,
            _yes_no(clean.get("in_domain_for_training_data") if row["training_data_domain"] else None),
            _yes_no(clean.get("in_domain_for_test_set")),
            _yes_no(noise.get("in_domain_for_training_data") if noise else None),
            _yes_no(noise.get("in_domain_for_test_set") if noise else None),
        ])
    return markdown_grid(["run", "method", "training data", "clean prior", "clean prior dir", "noise prior", "noise prior dir",
                          "clean prior in-domain (training data)", "clean prior in-domain (test set)",
                          "noise prior in-domain (training data)", "noise prior in-domain (test set)"], cells)


def compare_markdown(summary: Summary) -> str:
    meta, numbers = summary["provenance"], summary["results"]
    test = meta["test_set"]
    lines = ["# Comparison", "",
             f"- test set: noisy `{test['noisy']}`, reference `{test['reference']}` (domain {test.get('domain')}; "
             f"chosen by {meta['test_set_source']}); {test['pairs']} files scored",
             f"- systems: the noisy input and {sum(s['scored'] for s in meta['systems'])} enhanced "
             f"({len(meta['runs'])} run(s) read, {len(meta['failed_runs'])} not); "
             f"enhanced audio in `{test['enhanced']}/<system>/`",
             f"- scoring: {meta['sample_rate']} Hz mono; {meta['resampling']}", f"- PESQ: {meta['pesq_mode']}",
             f"- DNSMOS: {meta['dnsmos_model']}", "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             "- the oracle Wiener filter reads the clean reference: an upper bound for a per-bin gain, not a method", "",
             "## Overall", "", "Mean over files (NaN scores excluded; see per_file.csv).", "",
             summary_table(numbers["overall"], numbers["metrics"])]
    for column, groups in numbers["conditions"].items():
        rows = [[value, row["system"], str(row["files"])] + [fmt(row[m]["mean"]) for m in numbers["metrics"]]
                for value, table in groups.items() for row in table]
        lines += ["", f"## Per condition: {column}", "",
                  markdown_grid([column, "system", "files"] + [HEADERS[m] for m in numbers["metrics"]], rows)]
    lines += ["", "## Cost", "", "Real-time factor (wall seconds of enhancement per second of audio, reading and writing "
              f"included, on {meta['machine']}) and network evaluations per second of audio.", "", cost_table(meta["cost"])]
    reused = [s["label"] for s in meta["systems"] if s["reused"]]
    if reused:
        lines += ["", "Reused from an earlier comparison in this folder (cost as measured then): " + ", ".join(reused) + "."]
    lines += ["", "## Systems", "", markdown_grid(
        ["system", "kind", "what", "options", "checkpoint", "folder"],
        [[s["label"], s["kind"], s["description"], MISSING if s["variant"] is None else registry.variant_text(s["variant"]),
          MISSING if not s["checkpoint"] else f"`{s['checkpoint']}`", MISSING if not s["folder"] else f"`{s['folder']}`"]
         for s in meta["systems"]])]
    if meta["runs"]:
        lines += ["", "## Training data and priors", "", priors_table(meta["runs"])]
        if test.get("domain") is None:
            lines += ["", "In-domain for the test set: unknown (–), the test set's domain is not known; pass data.domain=NAME."]
    lines += problem_sections(meta, "Failures")
    return "\n".join(lines) + "\n"


def plot_quality_cost(path: Path, summary: Summary, metrics: list[str]) -> None:
    """quality_cost.png: one panel per metric, mean score against real-time factor (log), one
    labelled point per system; the noisy input as a horizontal line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    overall = {row["system"]: row for row in summary["results"]["overall"]}
    kinds = {s["label"]: s for s in summary["provenance"]["systems"]}
    cost = summary["provenance"]["cost"]
    fig = Figure(figsize=(6.5 * len(metrics), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    methods = list(dict.fromkeys(s["method"] for s in kinds.values() if s["kind"] == "method"))
    palette = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")

    def style(system: dict) -> tuple[str, dict]:
        if system["baseline"] == "oracle_wiener":
            return "oracle Wiener (reads the clean reference; upper bound)", dict(marker="D", color="tab:green")
        if system["kind"] == "baseline":
            return f"{system['label']} (training-free baseline)", dict(marker="s", color="tab:gray")
        colour = palette[methods.index(system["method"]) % len(palette)]
        return registry.short_name(system["method"]), dict(marker="o", color=colour)

    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        seen = set()
        for label, c in cost.items():
            row, system = overall.get(label), kinds.get(label)
            rtf = (c or {}).get("rtf")
            value = None if row is None else (row.get(metric) or {}).get("mean")
            if system is None or value is None or rtf is None or not math.isfinite(rtf) or rtf <= 0:
                continue
            legend, marker = style(system)
            ax.scatter([rtf], [value], s=50, zorder=3, label=None if legend in seen else legend, **marker)
            seen.add(legend)
            text = "oracle Wiener" if system["baseline"] == "oracle_wiener" else label
            ax.annotate(text if len(text) <= 40 else text[:38] + "…", (rtf, value), textcoords="offset points",
                        xytext=(5, 5), fontsize=7)
        noisy = overall.get(NOISY)
        if noisy is not None and (noisy.get(metric) or {}).get("mean") is not None:
            ax.axhline(noisy[metric]["mean"], color="tab:red", linestyle="--", linewidth=1, label="noisy input")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("real-time factor (s of compute per s of audio, log scale)")
        ax.set_ylabel(HEADERS.get(metric, metric))
        ax.set_title(f"{HEADERS.get(metric, metric)} against cost ({summary['provenance']['test_set']['pairs']} files)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120)


def _plot_metrics(cfg: DictConfig, present: list[str]) -> list[str]:
    wanted = [str(m) for m in (cfg.plot_metrics or [])]
    chosen = [m for m in wanted if m in present]
    if not chosen:
        chosen = [m for m in ("dnsmos_ovrl",) if m in present][:1] or present[:1]
    return chosen


def _machine() -> str:
    import platform

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()} {platform.processor() or platform.system()}, {cores} usable CPU cores"


# --------------------------------------------------------------------------------------------
# The command


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):  # a list quoted whole by prepare_argv (a path with '=')
        return [v.strip().strip("'\"") for v in text[1:-1].split(",") if v.strip()]
    return [text]


def compare(cfg: DictConfig) -> int:
    """The recipe behind `python -m usedddp.compare`; returns the exit code (0: all fine, 1: a run,
    a system or a file failed, 2: refused)."""
    started = time.perf_counter()
    for key in ("runs", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            log.error("%s=... is required", key)
            print(USAGE, file=sys.stderr)
            return 2
    output = Path(str(cfg.output)).expanduser()
    jobs = default_jobs() if str(cfg.jobs) == "auto" else int(cfg.jobs)
    try:
        from usedddp.inference import InferenceError, check_device

        try:
            check_device(cfg.device)
        except InferenceError as error:
            raise CompareError(str(error)) from None
        paths = run_paths(_as_list(cfg.runs))
        if not paths:
            raise CompareError("runs=[]: name at least one run (a run directory, a .ckpt, or a multirun folder)")
        entries, seen = [], {}
        for path in paths:
            entry = read_run(path)
            if entry.checkpoint is not None and entry.error is None:
                resolved = entry.checkpoint.resolve()
                if resolved in seen:
                    log.warning("%s: the same checkpoint as %s, scored once", path, seen[resolved])
                    continue
                seen[resolved] = path
            if entry.error:
                log.error("FAILED run %s: %s", path, entry.error)
            entries.append(entry)
        assign_tags(entries)
        noisy, clean, domain, source = choose_test_set(cfg, entries)
        previous = check_output(output, noisy, clean, bool(cfg.overwrite))
        if clean is None and not cfg.dnsmos:
            raise CompareError(f"the test set has no clean references ({noisy}) and dnsmos=false: nothing to score")
        try:
            noisy_files = index_audio(noisy)
            clean_files = index_audio(clean) if clean is not None else {}
        except FolderError as error:
            raise CompareError(str(error)) from None
        pairs = {k: (p, clean_files[k]) for k, p in noisy_files.items() if k in clean_files}
        systems = plan_systems(cfg, entries, noisy, clean, noisy_files, pairs)
    except (CompareError, EvaluateError, CorpusError) as error:
        log.error("refused: %s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("test set: noisy %s (%d files), reference %s (domain %s; %s)", noisy, len(noisy_files), clean, domain, source)

    enhanced = output / "enhanced"
    enhanced.mkdir(parents=True, exist_ok=True)
    manifests = read_manifests(enhanced)
    taken: set[str] = set()
    reuse = bool(cfg.reuse) and not cfg.overwrite
    if reuse and (previous is not None or manifests):
        find_reusable(systems, manifests, taken)
    claimed = {s.folder for s in systems if s.reused}
    for number, system in enumerate(systems, 1):
        if system.reused:
            print(f"[{number}/{len(systems)}] reusing {system.label}: {system.folder} (same "
                  f"{'checkpoint file, options' if system.kind == 'method' else 'settings'} and test set)", flush=True)
            log.info("reusing %s: %s", system.label, system.folder)
            continue
        what = system.run.path if system.run else system.name
        print(f"[{number}/{len(systems)}] {what} ({registry.variant_text(system.variant or {})})"
              if system.kind == "method" else f"[{number}/{len(systems)}] {system.name}", flush=True)
        produce(system, cfg, noisy, pairs, enhanced, manifests, claimed, taken)

    failed = [f"run {e.path}: {e.error}" for e in entries if e.error]
    failed += [s.error for s in systems if s.error]
    for system in systems:
        failed += system.failed
    scored = [s for s in systems if s.error is None and s.folder is not None and s.files > 0]
    if not scored:
        print("error: no system could be enhanced:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    conditions = _load_conditions(cfg.conditions, [clean, noisy])
    # The folder with the most outputs first: evaluate_folders takes the files to score from it.
    first = max(scored, key=lambda s: s.files)
    folders = {first.label: first.folder, **{s.label: s.folder for s in scored if s is not first}}
    try:
        result = evaluate_folders(folders, clean, noisy, conditions=conditions, dnsmos=bool(cfg.dnsmos), jobs=jobs)
    except EvaluateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    order = [NOISY] + [s.label for s in scored]
    rank = {label: i for i, label in enumerate(order)}
    result.systems = [label for label in order if label in result.systems]
    result.rows.sort(key=lambda r: (r["file"], rank[r["system"]]))
    failed += result.failed
    summary = write_report(output, cfg, result, systems, entries, noisy, clean, domain, source, failed, started)

    print(summary_table(summary["results"]["overall"], summary["results"]["metrics"]))
    print(cost_table(summary["provenance"]["cost"]))
    for failure in failed:
        print(f"failed: {failure}")
    reused = sum(s.reused for s in systems)
    print(f"compared {len(scored)} systems and the noisy input on {len({r['file'] for r in result.rows})} files "
          f"({reused} reused, {len(failed)} failures); wrote {output / 'compare.md'}, {output / 'compare.json'}, "
          f"{output / 'per_file.csv'}, {output / 'quality_cost.png'}")
    return 1 if failed else 0


def write_report(output: Path, cfg: DictConfig, result: Evaluation, systems: list[System], entries: list[RunEntry],
                 noisy: Path, clean: Path | None, domain: str | None, source: str, failed: list[str],
                 started: float) -> Summary:
    scored = {s.label for s in systems if s.folder is not None and s.files > 0 and s.error is None}
    provenance = provenance_record(label="comparison", enhanced=(output / "enhanced").resolve(), reference=
                                   None if clean is None else clean.resolve(), noisy=noisy.resolve(), result=result,
                                   domain=domain, method=None, cost={s.label: s.cost for s in systems if s.label in scored},
                                   started=started)
    provenance["versions"]["noisereduce"] = _version("noisereduce")
    provenance["versions"]["matplotlib"] = _version("matplotlib")
    provenance.update({
        "failed": failed,
        "test_set_source": source,
        "machine": _machine(),
        "systems": [{"label": s.label, "kind": s.kind, "baseline": s.name if s.kind == "baseline" else None,
                     "method": s.name if s.kind == "method" else None, "description": s.description,
                     "run": None if s.run is None else str(s.run.path), "variant": s.variant,
                     "checkpoint": s.key.get("checkpoint"), "folder": None if s.folder is None else str(s.folder),
                     "reused": s.reused, "files": s.files, "scored": s.label in scored, "error": s.error}
                    for s in systems],
        "runs": priors_rows(entries, domain),
        "failed_runs": [{"path": str(e.path), "error": e.error} for e in entries if e.error],
        "settings": {"variants": OmegaConf.to_container(cfg.variants, resolve=True) if cfg.get("variants") else None,
                     "baselines": [str(b) for b in cfg.baselines or []], "device": str(cfg.device),
                     "chunk_seconds": float(cfg.chunk_seconds), "overlap_seconds": float(cfg.overlap_seconds),
                     "engine": str(cfg.get("engine", "exact")), "dnsmos": bool(cfg.dnsmos)},
    })
    summary: Summary = {"provenance": provenance, "results": summarise(result)}
    output.mkdir(parents=True, exist_ok=True)
    write_per_file(output / "per_file.csv", result)
    write_summary(output / "compare.json", summary)
    summary = read_summary(output / "compare.json")  # as written: non-finite numbers as null
    (output / "compare.md").write_text(compare_markdown(summary))
    try:
        plot_quality_cost(output / "quality_cost.png", summary, _plot_metrics(cfg, summary["results"]["metrics"]))
    except Exception as error:  # a figure is not worth the tables
        log.error("quality_cost.png not written: %s: %s", type(error).__name__, error)
    return summary


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# configs/compare.yaml is served from Hydra's ConfigStore (as evaluate.yaml is): in the configs
# folder, `data.root=` would be read against the training config groups.
ConfigStore.instance().store(name="compare", node=OmegaConf.load(CONFIG_DIR / "compare.yaml"))


@hydra.main(version_base="1.3", config_path=None, config_name="compare")
def _main(cfg: DictConfig) -> None:
    code = compare(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    prepare_argv()  # runs= and output= paths with '=' in them (Hydra multirun folders) are taken as typed
    _main()


if __name__ == "__main__":
    main()
