"""Score enhanced speech: `python -m usedddp.evaluate`.

Two forms:

    python -m usedddp.evaluate reference=CLEAN_DIR enhanced=EST_DIR output=DIR [noisy=NOISY_DIR]
    python -m usedddp.evaluate ckpt=RUN_OR_CKPT output=DIR [data.root=TEST_ROOT]

The first scores any system's outputs against references matched by relative path; the second
enhances a test set with a trained checkpoint (into DIR/enhanced) and scores it. Every table has
the noisy input as its own row, so the improvement is always visible. Every number is written
with what it depends on (PESQ mode, DNSMOS model, resampling, package versions, the priors the
checkpoint was trained with), because unrecorded metric variants are why results in this field
cannot be reproduced.

The core is plain functions, usable from a notebook: `evaluate_folders`, `summarise`, and
usedddp.reporting's `summary_table`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from usedddp import metrics
from usedddp.audio import CorpusError
from usedddp.config import CONFIG_DIR, prepare_argv  # also registers the ${usedddp_demo_root:} resolver
from usedddp.methods import registry
from usedddp.metrics.band import ACTIVE_RANGE_DB, BAND_FLOOR_DB, EMPTY_BAND_DB, FRAME_SECONDS, REFERENCE_MIN_BAND_DB
from usedddp.metrics.scoring import SAMPLE_RATE, score_job, worker_init
from usedddp.reporting import (METRICS, FolderError, Summary, cost_table, index_audio, summary_markdown, summary_table,
                               write_summary)

log = logging.getLogger("usedddp.evaluate")

USAGE = """usage:
    python -m usedddp.evaluate reference=CLEAN_DIR enhanced=EST_DIR output=DIR [noisy=NOISY_DIR]
    python -m usedddp.evaluate ckpt=RUN_OR_CKPT output=DIR [data.root=TEST_ROOT]"""

# Known test-set layouts under a root: (noisy folder, clean folder, domain).
TEST_LAYOUTS = (("noisy_testset_wav", "clean_testset_wav", "vctk"), ("noisy_testset", "clean_testset", None))
CONDITION_FILES = ("testset_conditions.csv", "logfiles/log_testset.txt")
MAX_CONDITION_VALUES = 12  # a column with more distinct values is an identifier, not a condition


class EvaluateError(ValueError):
    """The whole command cannot run (missing folders, nothing to score, unsafe output)."""


# --------------------------------------------------------------------------------------------
# One pair of files


def metric_definitions() -> dict[str, str]:
    """What each column is, exactly: recorded in every summary."""
    composite_pesq = getattr(metrics, "COMPOSITE_PESQ", "wide-band PESQ")
    return {
        "pesq_wb": "wide-band PESQ, ITU-T P.862.2 MOS-LQO (pesq package, mode 'wb'), 16 kHz",
        "pesq_nb": "narrow-band PESQ, ITU-T P.862 + P.862.1 MOS-LQO mapping (pesq package, mode 'nb') on the 16 kHz signals; not comparable with wide-band",
        "pesq_nb_raw": "raw narrow-band PESQ, ITU-T P.862 score: pesq_nb taken back through the inverse of the P.862.1 mapping, "
                       "what pypesq reports, for comparison with the UDiffSE and RVAE papers' tables; not comparable with PESQ-wb",
        "stoi": "STOI (Taal et al. 2011), pystoi, extended=False (resampled internally to 10 kHz)",
        "estoi": "ESTOI (Jensen & Taal 2016), pystoi, extended=True",
        "si_sdr": "SI-SDR in dB (Le Roux et al. 2019), zero-mean signals",
        "hf_si_sdr": f"SI-SDR in dB (Le Roux et al. 2019; zero-mean, scale-invariant) of the estimate's 4-8 kHz band against "
                     f"the reference's; band: the whole 16 kHz clip's FFT with every bin outside 4000 <= f <= 8000 Hz zeroed "
                     f"(zero-phase brick wall); floored at {BAND_FLOOR_DB:g} dB, the value of an estimate with nothing there "
                     f"(its band below {EMPTY_BAND_DB:g} dB of its energy); NaN when the reference's band is below "
                     f"{REFERENCE_MIN_BAND_DB:g} dB of its energy",
        "hf_level": f"10 log10 of the estimate's 4-8 kHz band energy (same band) over the reference's, both summed over the "
                    f"non-overlapping {FRAME_SECONDS * 1000:g} ms frames whose reference full-band energy is within "
                    f"{ACTIVE_RANGE_DB:g} dB of its loudest frame's; 0 dB: kept, -30 dB: deleted, > 0: added (noise); "
                    f"floored at {BAND_FLOOR_DB:g} dB; NaN as hf_si_sdr",
        "csig": f"composite signal distortion (Hu & Loizou 2008); PESQ term: {composite_pesq}",
        "cbak": "composite background intrusiveness (Hu & Loizou 2008)",
        "covl": "composite overall quality (Hu & Loizou 2008)",
        "dnsmos_sig": f"DNSMOS P.835 SIG, {metrics.DNSMOS_MODEL}",
        "dnsmos_bak": "DNSMOS P.835 BAK, same model",
        "dnsmos_ovrl": "DNSMOS P.835 OVRL, same model",
    }


# --------------------------------------------------------------------------------------------
# Folders


def read_conditions(path: str | Path) -> dict[str, dict[str, str]]:
    """{file key: {condition: value}} from a CSV with a `file` column (the demo test set's
    testset_conditions.csv) or VCTK-DEMAND's log_testset.txt (`name noise snr` per line)."""
    path = Path(path)
    out: dict[str, dict[str, str]] = {}
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if "file" not in (reader.fieldnames or []):
                raise EvaluateError(f"{path}: a conditions CSV needs a `file` column (got {reader.fieldnames})")
            for row in reader:
                key = Path(row.pop("file")).with_suffix("").as_posix()
                out[key] = {k: v for k, v in row.items() if k}
        return out
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise EvaluateError(f"{path}, line {number}: expected `name noise_type snr_db`, got {line!r}")
        out[Path(parts[0]).with_suffix("").as_posix()] = {"noise_type": parts[1], "snr_db": parts[2]}
    return out


def condition_columns(conditions: dict[str, dict[str, str]], keys: list[str]) -> list[str]:
    """Columns that group the scored files into a few conditions (2..12 distinct values)."""
    columns = sorted({c for key in keys for c in conditions.get(key, {})})
    chosen = []
    for column in columns:
        values = {conditions[k][column] for k in keys if column in conditions.get(k, {})}
        if 2 <= len(values) <= MAX_CONDITION_VALUES:
            chosen.append(column)
    return chosen


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)  # one per (file, system)
    failed: list[str] = field(default_factory=list)  # "path: reason"
    unmatched: dict[str, list[str]] = field(default_factory=dict)  # folder role -> files without a partner
    systems: list[str] = field(default_factory=list)
    condition_columns: list[str] = field(default_factory=list)


def evaluate_folders(enhanced: str | Path | dict[str, str | Path], reference: str | Path | None = None,
                     noisy: str | Path | None = None, *, label: str = "enhanced",
                     conditions: dict[str, dict[str, str]] | None = None, dnsmos: bool = True, jobs: int = 1,
                     progress: bool = True) -> Evaluation:
    """Score every enhanced file (and, with `noisy`, every noisy input as its own system) against
    the reference with the same relative path. Files without a partner are listed, not scored.
    `enhanced` may be {system label: folder} to score several systems on the same files (the
    first system's files decide which); `label` names a single folder's system."""
    folders = dict(enhanced) if isinstance(enhanced, dict) else {label: enhanced}
    try:
        indexes = {system: index_audio(folder) for system, folder in folders.items()}
        ref = index_audio(reference) if reference is not None else None
        noisy_files = index_audio(noisy) if noisy is not None else None
    except FolderError as error:
        raise EvaluateError(str(error)) from None
    result = Evaluation(systems=(["noisy"] if noisy_files is not None else []) + list(folders))
    est = next(iter(indexes.values()))
    keys = sorted(est)
    if ref is not None:
        keys = [k for k in keys if k in ref]
        result.unmatched["enhanced"] = [str(est[k]) for k in sorted(est) if k not in ref]
        result.unmatched["reference"] = [str(ref[k]) for k in sorted(ref) if k not in est]
    if noisy_files is not None:
        result.unmatched["noisy"] = [str(noisy_files[k]) for k in sorted(noisy_files) if k not in est]
        missing = [k for k in keys if k not in noisy_files]
        if missing:
            result.unmatched["enhanced (no noisy input)"] = [str(est[k]) for k in missing]
    if not keys:
        raise EvaluateError(f"no enhanced file in {enhanced} has a reference with the same relative path in {reference}")
    for role, files in result.unmatched.items():
        if files:
            log.warning("%d %s file(s) without a partner, not scored (first: %s)", len(files), role, files[0])

    jobs_list = []
    for key in keys:
        reference_path = ref[key] if ref is not None else None
        if noisy_files is not None and key in noisy_files:
            jobs_list.append((key, "noisy", noisy_files[key], reference_path, dnsmos))
        for system, index in indexes.items():
            if key in index:
                jobs_list.append((key, system, index[key], reference_path, dnsmos))
            else:
                result.failed.append(f"{folders[system]}: no enhanced file for {key} ({system})")
    conditions = conditions or {}
    result.condition_columns = condition_columns(conditions, keys)
    with logging_redirect_tqdm():
        bar = tqdm(total=len(jobs_list), desc="score", unit="file", dynamic_ncols=True, disable=not progress)
        for key, system, scores, error in _run_jobs(jobs_list, jobs):
            bar.update()
            if error is not None:
                result.failed.append(error)
                log.error("FAILED %s", error)
                continue
            result.rows.append({"file": key, "system": system, **conditions.get(key, {}), **scores})
        bar.close()
    order = {s: i for i, s in enumerate(result.systems)}
    result.rows.sort(key=lambda r: (r["file"], order[r["system"]]))
    return result


def _run_jobs(jobs_list: list[tuple], jobs: int):
    if jobs <= 1 or len(jobs_list) == 1:
        yield from map(score_job, jobs_list)
        return
    # spawn, not fork: the parent may hold a started OpenMP pool (it just ran the model).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=worker_init) as pool:
        yield from pool.map(score_job, jobs_list, chunksize=1)


# --------------------------------------------------------------------------------------------
# Tables


def _stats(values: list[float]) -> dict[str, float | int]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def summarise(result: Evaluation) -> dict:
    """Mean, std and count of every metric per system (NaN scores, e.g. PESQ finding no
    utterance, are left out and counted), overall and per condition value."""
    present = [m for m in METRICS if any(m in r for r in result.rows)]

    def table(rows: list[dict]) -> list[dict]:
        out = []
        for system in result.systems:
            mine = [r for r in rows if r["system"] == system]
            if mine:
                out.append({"system": system, "files": len(mine), **{m: _stats([r.get(m) for r in mine]) for m in present}})
        return out

    summary = {"metrics": present, "overall": table(result.rows), "conditions": {}}
    for column in result.condition_columns:
        values = sorted({str(r[column]) for r in result.rows if column in r}, key=_natural)
        summary["conditions"][column] = {v: table([r for r in result.rows if str(r.get(column)) == v]) for v in values}
    return summary


def _natural(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


# --------------------------------------------------------------------------------------------
# Writing


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("usedddp", "pesq", "pystoi", "speechmos", "onnxruntime", "torch", "torchaudio", "numpy", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_per_file(path: Path, result: Evaluation) -> None:
    """per_file.csv: one row per (file, system), the condition columns, every metric scored."""
    columns = ["file", "system"] + result.condition_columns + [m for m in METRICS if any(m in r for r in result.rows)]
    columns += ["duration_s", "length_diff"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_outputs(output: Path, result: Evaluation, provenance: dict) -> Summary:
    """per_file.csv, summary.json and summary.md in `output`; returns the summary."""
    output.mkdir(parents=True, exist_ok=True)
    write_per_file(output / "per_file.csv", result)
    summary: Summary = {"provenance": provenance, "results": summarise(result)}
    write_summary(output / "summary.json", summary)
    (output / "summary.md").write_text(summary_markdown(summary))
    return summary


def provenance_record(*, label: str, enhanced, reference, noisy, result: Evaluation, domain: str | None,
                      checkpoint: dict | None = None, method: str | None = None, clean_prior: dict | None = None,
                      noise_prior: dict | None = None, started: float | None = None, cost: dict | None = None) -> dict:
    return {
        "label": label,
        # Per system: real-time factor and network evaluations per second of audio of the enhancement.
        "cost": cost,
        "method": method,
        "checkpoint": checkpoint,
        "clean_prior": clean_prior,
        "noise_prior": noise_prior,
        "test_set": {"enhanced": str(enhanced), "reference": None if reference is None else str(reference),
                     "noisy": None if noisy is None else str(noisy), "domain": domain,
                     "pairs": len({r["file"] for r in result.rows}), "condition_columns": result.condition_columns},
        "sample_rate": SAMPLE_RATE,
        "resampling": "files at other rates resampled to 16 kHz with torchaudio.functional.resample (windowed sinc, "
                      "Hann, lowpass_filter_width 6); multi-channel files averaged to mono; estimate and reference cut "
                      "to the shorter length",
        "pesq_mode": "wide-band (P.862.2) as PESQ-wb; narrow-band (P.862 + P.862.1) as PESQ-nb; both on 16 kHz signals",
        "dnsmos_model": metrics.DNSMOS_MODEL,
        "metric_definitions": metric_definitions(),
        "versions": package_versions(),
        "failed": result.failed,
        "unmatched": result.unmatched,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None if started is None else round(time.perf_counter() - started, 1),
        "command": " ".join(sys.argv),
    }


# --------------------------------------------------------------------------------------------
# The checkpoint form


def resolve_test_set(run_cfg: DictConfig, root: str | None, noisy_dir: str | None, clean_dir: str | None,
                     domain: str | None) -> tuple[Path, Path | None, str | None]:
    """(noisy folder, clean folder or None, domain) of the test set to enhance and score.

    Explicit folders win; a root is searched for a known layout (VCTK-DEMAND's
    noisy_testset_wav/clean_testset_wav, the demo corpus' noisy_testset/clean_testset); with
    neither, the run's own validation folders are used."""
    run_data = run_cfg.get("data", {})
    if noisy_dir is None and root is not None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise EvaluateError(f"data.root={root}: not a folder")
        for noisy_name, clean_name, layout_domain in TEST_LAYOUTS:
            if (root_path / noisy_name).is_dir():
                noisy_dir = str(root_path / noisy_name)
                if clean_dir is None and (root_path / clean_name).is_dir():
                    clean_dir = str(root_path / clean_name)
                domain = domain or layout_domain
                break
        else:
            names = ", ".join(f"{n}/ + {c}/" for n, c, _ in TEST_LAYOUTS)
            raise EvaluateError(f"data.root={root}: no test set found (expected {names}); or pass data.noisy_dir= and data.clean_dir=")
    if noisy_dir is None:
        try:
            noisy_dir = OmegaConf.select(run_cfg, "data.val_noisy_dir", throw_on_missing=True)
            if clean_dir is None:
                clean_dir = OmegaConf.select(run_cfg, "data.val_clean_dir", default=None)
        except Exception as error:
            raise EvaluateError(f"the run's config names no test set ({error}); pass data.root=TEST_ROOT") from None
        if noisy_dir is None:
            raise EvaluateError("the run's config names no held-out noisy folder (data.val_noisy_dir); pass data.root=TEST_ROOT")
        domain = domain or run_data.get("domain")
    noisy_path = Path(noisy_dir)
    if not noisy_path.is_dir():
        raise EvaluateError(f"{noisy_path}: noisy test folder does not exist")
    clean_path = Path(clean_dir) if clean_dir else None
    if clean_path is not None and not clean_path.is_dir():
        log.warning("%s: clean test folder does not exist; scoring reference-free (DNSMOS) only", clean_path)
        clean_path = None
    return noisy_path, clean_path, None if domain is None else str(domain)


def _corpus(run_cfg: DictConfig, key: str, test_domain: str | None) -> dict | None:
    node = run_cfg.get(key)
    if node is None:
        return None
    record = {"name": str(node.get("name")), "domain": str(node.get("domain"))}
    try:
        record["dir"] = str(OmegaConf.select(run_cfg, f"{key}.dir"))
    except Exception:  # an interpolation that only resolves inside the training run
        record["dir"] = str(OmegaConf.to_container(node, resolve=False).get("dir"))
    record["in_domain_for_training_data"] = record["domain"] == str(run_cfg.get("data", {}).get("domain"))
    record["in_domain_for_test_set"] = None if test_domain is None else record["domain"] == test_domain
    return record


def default_jobs() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def evaluate(cfg: DictConfig) -> int:
    """The recipe behind `python -m usedddp.evaluate`; returns the exit code."""
    started = time.perf_counter()
    if OmegaConf.is_missing(cfg, "output") or not cfg.output:
        log.error("output=DIR is required")
        print(USAGE, file=sys.stderr)
        return 2
    output = Path(cfg.output)
    jobs = default_jobs() if str(cfg.jobs) == "auto" else int(cfg.jobs)
    try:
        if (output / "summary.json").exists() and not cfg.overwrite:
            raise EvaluateError(f"{output / 'summary.json'} exists: choose another output folder or pass overwrite=true")
        if cfg.ckpt:
            if cfg.enhanced:
                raise EvaluateError("pass either ckpt= (enhance and score a test set) or enhanced= (score a folder), not both")
            result, provenance_args = _evaluate_checkpoint(cfg, output, jobs)
        else:
            if not cfg.enhanced:
                raise EvaluateError("pass enhanced=DIR (with reference=DIR) to score a folder, or ckpt=RUN to enhance and score a test set")
            conditions = _load_conditions(cfg.conditions, [cfg.reference, cfg.noisy])
            result = evaluate_folders(cfg.enhanced, cfg.reference, cfg.noisy, label=str(cfg.label or "enhanced"),
                                      conditions=conditions, dnsmos=bool(cfg.dnsmos), jobs=jobs)
            provenance_args = dict(label=str(cfg.label or "enhanced"), enhanced=cfg.enhanced, reference=cfg.reference,
                                   noisy=cfg.noisy, domain=cfg.data.domain, method=cfg.method_description)
    except (EvaluateError, CorpusError) as error:
        log.error("refused: %s", error)
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not result.rows:
        print("error: no file could be scored:\n  " + "\n  ".join(result.failed), file=sys.stderr)
        return 1
    provenance = provenance_record(result=result, started=started, **provenance_args)
    summary = write_outputs(output, result, provenance)
    print(summary_table(summary["results"]["overall"], summary["results"]["metrics"]))
    if provenance.get("cost"):
        print(cost_table(provenance["cost"]))
    for failure in result.failed:
        print(f"failed: {failure}")
    print(f"scored {len({r['file'] for r in result.rows})} files ({len(result.failed)} failed); "
          f"wrote {output / 'per_file.csv'}, {output / 'summary.json'}, {output / 'summary.md'}")
    return 1 if result.failed else 0


def _load_conditions(spec, roots) -> dict[str, dict[str, str]]:
    if spec in (None, "", "none"):
        return {}
    if spec != "auto":
        path = Path(spec)
        if not path.is_file():
            raise EvaluateError(f"conditions={spec}: file not found")
        return read_conditions(path)
    for root in roots:
        if root is None:
            continue
        for parent in (Path(root), Path(root).parent):
            for name in CONDITION_FILES:
                if (parent / name).is_file():
                    log.info("conditions: %s", parent / name)
                    return read_conditions(parent / name)
    return {}


def _evaluate_checkpoint(cfg: DictConfig, output: Path, jobs: int):
    from usedddp.enhance import _method_overrides, enhance_paths
    from usedddp.inference import InferenceError, load_enhancer

    overrides = _method_overrides(cfg)
    try:
        model = load_enhancer(cfg.ckpt, cfg.device, overrides, engine=str(cfg.get("engine", "exact")))
    except InferenceError as error:
        raise EvaluateError(str(error)) from None
    run_cfg = model.config  # stored in the checkpoint: a checkpoint copied out of its run still names its test set
    noisy, clean, domain = resolve_test_set(run_cfg, cfg.data.root, cfg.data.noisy_dir, cfg.data.clean_dir, cfg.data.domain)
    # A method given none of its selector options (UDiffSE: sampler, score) is scored as its
    # comparison, every scoring variant of the registry (UDiffSE: the exact-score Gaussian
    # baseline through the reference sampler, then the trained prior with each sampler).
    variants = registry.expand_variants(model.method, overrides)
    folders, cost, failed = {}, {}, []
    for variant in variants:
        try:
            if variant != overrides:
                model = load_enhancer(cfg.ckpt, cfg.device, variant, engine=str(cfg.get("engine", "exact")))
            label = str(cfg.label) if cfg.label and len(variants) == 1 else model.label
            enhanced = output / "enhanced" / (_slug(label) if len(variants) > 1 else "")
            log.info("test set: noisy %s, reference %s (domain %s); %s -> %s", noisy, clean, domain, label, enhanced)
            report = enhance_paths(model.enhancer, noisy, enhanced, chunk_seconds=float(cfg.chunk_seconds),
                                   overlap_seconds=float(cfg.overlap_seconds), overwrite=bool(cfg.overwrite))
        except InferenceError as error:
            raise EvaluateError(str(error)) from None
        folders[label], cost[label] = enhanced, report.cost
        failed += [f"{source} ({label}): {reason}" for source, reason in report.failed]
    checkpoint, run_dir, stage, model_method = model.checkpoint, model.run_dir, model.stage, model.method
    del model
    conditions = _load_conditions(cfg.conditions, [clean, noisy])
    label = next(iter(folders)) if len(folders) == 1 else registry.short_name(model_method)
    result = evaluate_folders(folders, clean, noisy, conditions=conditions, dnsmos=bool(cfg.dnsmos), jobs=jobs)
    result.failed = failed + result.failed
    codec = OmegaConf.select(run_cfg, "model.codec._target_", default=None)
    method_name = str(OmegaConf.select(run_cfg, "method.name", default="use_ddp"))
    default_method = registry.describe(method_name)
    args = dict(label=label, enhanced=output / "enhanced", reference=clean, noisy=noisy, domain=domain,
                method=str(cfg.method_description or default_method),
                checkpoint={"path": str(checkpoint), "run_dir": None if run_dir is None else str(run_dir), "stage": stage,
                            "codec": codec, "run_name": run_cfg.get("run_name"), "method": method_name},
                clean_prior=_corpus(run_cfg, "prior", domain), noise_prior=_corpus(run_cfg, "noise", domain), cost=cost)
    return result, args


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


# configs/evaluate.yaml is served from Hydra's ConfigStore (as enhance.yaml is): in the configs
# folder, `data.root=` and `noise`-like keys would be read against the training config groups.
ConfigStore.instance().store(name="evaluate", node=OmegaConf.load(CONFIG_DIR / "evaluate.yaml"))


@hydra.main(version_base="1.3", config_path=None, config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    code = evaluate(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    prepare_argv()  # ckpt= paths with '=' in them (older runs' step=N.ckpt) are taken as typed
    _main()


if __name__ == "__main__":
    main()
