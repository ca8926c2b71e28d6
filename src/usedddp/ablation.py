"""Tables of an ablation run as a Hydra multirun: which runs, scored how, on which test set.

    python -m usedddp.train -m prior=demo,demo_matched          # the runs: multirun/demo/<time>/<job>/
    python scripts/evaluate_runs.py multirun/demo/<time>        # each run: <job>/evaluation/summary.json
    python scripts/ablation_table.py multirun/demo/<time> [--condition snr_db]

Plain functions (rows are dicts: `pandas.DataFrame(rows)` where pandas is wanted); used by both
scripts and by notebooks/prior_ablation.ipynb:

    runs = find_runs(MULTIRUN_DIR)         # every training run below it, sorted by Hydra job number
    rows = results_table(runs)             # the noisy input once, then one row per run
    print(reporting.ablation_table(rows))  # usedddp.reporting renders them

A run is a directory with `.hydra/config.yaml` and `.hydra/overrides.yaml` whose config is a
training config; its evaluation is `<run>/evaluation/summary.json`, written by
`python -m usedddp.evaluate ckpt=<run> output=<run>/evaluation`. A row is labelled by the
overrides that differ between the runs (`prior=demo_matched`; `model/codec=stft` in a codec
sweep), so any sweep tabulates the same way. Only runs scored on one test set (the same noisy
folder, the same number of files) are put in one table: their noisy rows must be one row.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from usedddp.reporting import NOISY, Summary, SummaryError, ablation_table, index_audio, read_summary

EVALUATION_DIR = "evaluation"  # <run>/evaluation/summary.json (evaluation_stage2/ for --stage 2)
# Two runs' noisy rows (the same files, the same metric code) may differ by rounding only.
NOISY_TOLERANCE = 1e-3


def evaluation_name(stage: int | None) -> str:
    """<run>/evaluation for the latest stage's checkpoint, <run>/evaluation_stageN for stage N's."""
    return EVALUATION_DIR if stage is None else f"{EVALUATION_DIR}_stage{stage}"


class AblationError(ValueError):
    """The runs cannot be put in one table (none found, none evaluated, different test sets)."""


@dataclass
class Run:
    dir: Path
    overrides: list[str]
    config: dict
    job_num: int | None = None
    choices: dict = field(default_factory=dict)  # Hydra's config-group choices (model/codec: stft, ...)
    summary: Summary | None = None  # the evaluation summary, when there is one
    label: str = ""
    evaluation: str = EVALUATION_DIR  # the evaluation's folder name inside the run

    @property
    def evaluation_dir(self) -> Path:
        return self.dir / self.evaluation

    @property
    def enhanced_dir(self) -> Path:
        return self.evaluation_dir / "enhanced"

    @property
    def clean_prior(self) -> dict:
        """The evaluation's record of the clean prior, or the run config's (no test-set flag then)."""
        if self.summary and self.summary["provenance"].get("clean_prior"):
            return self.summary["provenance"]["clean_prior"]
        prior = self.config.get("prior") or {}
        return {"name": prior.get("name"), "domain": prior.get("domain"), "in_domain_for_test_set": None}

    @property
    def in_domain(self) -> bool | None:
        """Whether the clean prior is in-domain for the test set it was evaluated on (None: unknown)."""
        return self.clean_prior.get("in_domain_for_test_set")

    @property
    def codec(self) -> str | None:
        if self.choices.get("model/codec"):
            return str(self.choices["model/codec"])
        target = (self.summary or {}).get("provenance", {}).get("checkpoint", {}) or {}
        target = target.get("codec") or ((self.config.get("model") or {}).get("codec") or {}).get("_target_")
        return None if not target else str(target).rsplit(".", 1)[-1]

    @property
    def stage(self) -> int | None:
        return ((self.summary or {}).get("provenance", {}).get("checkpoint") or {}).get("stage")

    @property
    def audit_warnings(self) -> list[str] | None:
        """The corpus audit's warnings at the run's start ("bandwidth (prior)", ...), from its
        training summary.json; None for a run trained before the audit existed."""
        path = self.dir / "summary.json"
        try:
            audit = json.loads(path.read_text()).get("audit") if path.is_file() else None
        except (OSError, ValueError):
            return None
        if not audit:
            return None
        return [f"{w['kind']} ({w['corpus']})" for w in audit.get("warnings", [])]


# --------------------------------------------------------------------------------------------
# Finding runs


def _is_run(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() and (path / ".hydra" / "overrides.yaml").is_file()


def find_runs(multirun_dir: str | Path, evaluation: str = EVALUATION_DIR) -> list[Run]:
    """Every training run under `multirun_dir` (or that directory itself, if it is one run),
    sorted by Hydra job number, labelled by the overrides that vary, with its evaluation summary
    loaded when `<run>/<evaluation>/summary.json` exists (`evaluation`: the folder's name,
    `evaluation` or e.g. `evaluation_stage2` for an earlier stage's checkpoints)."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise AblationError(f"{root}: not a directory")
    found: list[Path] = []

    def walk(path: Path) -> None:
        if _is_run(path):
            found.append(path)  # not below: a run's own subfolders (its evaluation's log) are not runs
            return
        for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            walk(child)

    walk(root)
    runs = []
    for path in found:
        config = OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "config.yaml"), resolve=False)
        if not isinstance(config, dict) or "prior" not in config or "stages" not in config:
            continue  # a Hydra output of another command (an evaluation, an enhancement)
        overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "overrides.yaml")) or []]
        run = Run(dir=path, overrides=overrides, config=config, evaluation=evaluation)
        hydra_yaml = path / ".hydra" / "hydra.yaml"
        if hydra_yaml.is_file():
            hydra_cfg = OmegaConf.load(hydra_yaml).get("hydra") or OmegaConf.create({})
            num = OmegaConf.select(hydra_cfg, "job.num", default=None, throw_on_resolution_failure=False)
            run.job_num = int(num) if isinstance(num, int) else None
            choices = OmegaConf.select(hydra_cfg, "runtime.choices", default=None, throw_on_resolution_failure=False)
            run.choices = OmegaConf.to_container(choices, resolve=False) if choices is not None else {}
        summary_path = run.evaluation_dir / "summary.json"
        if summary_path.is_file():
            try:
                run.summary = read_summary(summary_path)
            except SummaryError as error:
                raise AblationError(f"{error}; re-evaluate the run (scripts/evaluate_runs.py DIR --force)") from None
        runs.append(run)
    if not runs:
        raise AblationError(f"{root}: no training run below it (a run has .hydra/config.yaml and .hydra/overrides.yaml)")
    runs.sort(key=lambda r: (r.job_num is None, r.job_num if r.job_num is not None else 0, _natural_key(r.dir.name)))
    _label(runs)
    return runs


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def varying_overrides(runs: list[Run]) -> list[str]:
    """The override keys whose values are not the same in every run, in command-line order."""
    parsed = [_parse_overrides(r.overrides) for r in runs]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def _label(runs: list[Run]) -> None:
    keys = varying_overrides(runs)
    for run in runs:
        parsed = _parse_overrides(run.overrides)
        parts = [f"{k}={parsed[k]}" for k in keys if k in parsed]
        run.label = ",".join(parts) or f"prior={run.clean_prior.get('name')}"


def latest_sweep(*roots: str | Path) -> Path | None:
    """The newest directory directly under the first of `roots` that has one (e.g. multirun/demo)."""
    for root in map(Path, roots):
        if root.is_dir():
            sweeps = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
            if sweeps:
                return sweeps[-1]
    return None


# --------------------------------------------------------------------------------------------
# Tables


def evaluated(runs: list[Run]) -> list[Run]:
    """The runs with an evaluation summary; warns about the others."""
    done = [r for r in runs if r.summary is not None]
    missing = [r for r in runs if r.summary is None]
    if missing:
        warnings.warn(f"{len(missing)} run(s) not evaluated, left out: " + ", ".join(str(r.dir) for r in missing), stacklevel=2)
    if not done:
        raise AblationError("no run has an evaluation (<run>/evaluation/summary.json); run scripts/evaluate_runs.py first")
    return done


def scored_test_set(run: Run) -> dict:
    return run.summary["provenance"]["test_set"]


def check_same_test_set(runs: list[Run]) -> dict:
    """The one test set all runs were scored on (raises AblationError listing them otherwise);
    warns when their noisy rows disagree (other metric versions, other files of the same names)."""
    def signature(run: Run) -> tuple:
        test = scored_test_set(run)
        folder = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731
        return folder(test.get("noisy")), folder(test.get("reference")), int(test.get("pairs") or 0)

    signatures = {signature(r) for r in runs}
    if len(signatures) > 1:
        lines = [f"  {r.label}: noisy {signature(r)[0]}, reference {signature(r)[1]}, {signature(r)[2]} files" for r in runs]
        raise AblationError("the runs were scored on different test sets; evaluate them on one "
                            "(scripts/evaluate_runs.py DIR --force data.root=...):\n" + "\n".join(lines))
    first = _noisy_row(runs[0])
    for run in runs[1:]:
        other = _noisy_row(run)
        for metric in set(first) & set(other):
            a, b = _mean(first.get(metric)), _mean(other.get(metric))
            if a is not None and b is not None and abs(a - b) > NOISY_TOLERANCE:
                warnings.warn(f"noisy {metric}: {a:.4f} in {runs[0].dir} but {b:.4f} in {run.dir} (same test set?)", stacklevel=2)
                break
    return scored_test_set(runs[0])


def _noisy_row(run: Run, table: list[dict] | None = None) -> dict:
    table = run.summary["results"]["overall"] if table is None else table
    return next((r for r in table if r["system"] == NOISY), {})


def _system_row(table: list[dict]) -> dict:
    return next((r for r in table if r["system"] != NOISY), {})


def _mean(stat) -> float | None:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return None
    value = float(stat["mean"])
    return value if math.isfinite(value) else None


def common_metrics(runs: list[Run]) -> list[str]:
    """Metrics every summary has, in the evaluation's order; warns about those only some have (an
    evaluation from before a metric existed, e.g. the 4-8 kHz ones: re-evaluate with --force)."""
    lists = [r.summary["results"].get("metrics", []) for r in runs]
    common = [m for m in lists[0] if all(m in other for other in lists[1:])]
    partial = [m for m in dict.fromkeys(m for other in lists for m in other) if m not in common]
    if partial:
        warnings.warn(f"metric(s) {', '.join(partial)} not in every evaluation, left out of the table "
                      "(scripts/evaluate_runs.py DIR --force re-scores the older ones)", stacklevel=3)
    return common


def _row(run: Run | None, table_row: dict, metrics: list[str], **extra) -> dict:
    if run is None:
        head = {"label": NOISY, "system": NOISY, "prior": None, "prior_domain": None, "in_domain": None,
                "stage": None, "codec": None, "run_dir": None, "audit": None}
    else:
        prior = run.clean_prior
        head = {"label": run.label, "system": table_row.get("system"), "prior": prior.get("name"),
                "prior_domain": prior.get("domain"), "in_domain": run.in_domain, "stage": run.stage,
                "codec": run.codec, "run_dir": str(run.dir), "audit": run.audit_warnings}
    row = {**extra, **head, "files": table_row.get("files")}
    for metric in metrics:
        stat = table_row.get(metric)
        row[metric] = _mean(stat)
        row[f"{metric}_std"] = None if not isinstance(stat, dict) else stat.get("std")
    return row


def results_table(runs: list[Run]) -> list[dict]:
    """The noisy input (once), then one row per evaluated run: label, clean prior, its domain,
    in-domain for the test set, stage, codec, files, the mean (and `<metric>_std`) of every metric."""
    runs = evaluated(runs)
    check_same_test_set(runs)
    metrics = common_metrics(runs)
    rows = [_row(None, _noisy_row(runs[0]), metrics)]
    rows += [_row(run, _system_row(run.summary["results"]["overall"]), metrics) for run in runs]
    return rows


def condition_columns(runs: list[Run]) -> list[str]:
    """Condition columns (snr_db, noise_type, ...) with per-condition tables in every summary."""
    runs = [r for r in runs if r.summary is not None]
    if not runs:
        return []
    columns = [list(r.summary["results"].get("conditions", {})) for r in runs]
    return [c for c in columns[0] if all(c in other for other in columns[1:])]


def condition_table(runs: list[Run], column: str) -> list[dict]:
    """Per value of `column` (e.g. snr_db): the noisy row, then one row per run; every row has
    `column` first and otherwise the shape of `results_table`'s rows."""
    runs = evaluated(runs)
    check_same_test_set(runs)
    if column not in condition_columns(runs):
        known = ", ".join(condition_columns(runs)) or "none"
        raise AblationError(f"condition {column!r} is not in every evaluation (known: {known})")
    metrics = common_metrics(runs)
    groups = runs[0].summary["results"]["conditions"][column]
    rows = []
    for value in groups:
        rows.append(_row(None, _noisy_row(runs[0], groups[value]), metrics, **{column: value}))
        for run in runs:
            table = run.summary["results"]["conditions"][column].get(value, [])
            rows.append(_row(run, _system_row(table), metrics, **{column: value}))
    return rows


# --------------------------------------------------------------------------------------------
# Markdown


def report(multirun_dir: str | Path, condition: str | None = None, metrics: str | list[str] = "main",
           evaluation: str = EVALUATION_DIR) -> str:
    """The overall table and, with `condition` ("all" for every one), the per-condition tables,
    as Markdown with a line saying what the test set was."""
    runs = find_runs(multirun_dir, evaluation)
    rows = results_table(runs)
    done = [r for r in runs if r.summary is not None]
    test = scored_test_set(done[0])
    parts = [f"Runs under `{Path(multirun_dir)}` (`<run>/{evaluation}/`); test set: noisy `{test.get('noisy')}`, reference "
             f"`{test.get('reference')}` (domain {test.get('domain')}), {test.get('pairs')} files. "
             "Means over files; in-domain: the clean prior's domain is the test set's.", "", ablation_table(rows, metrics)]
    columns = condition_columns(done) if condition == "all" else [condition] if condition else []
    for column in columns:
        parts += ["", f"Per {column}:", "", ablation_table(condition_table(runs, column), metrics, condition=column)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# One clip across runs (the notebook's examples)


def example_clips(runs: list[Run]) -> dict[str, dict[str, Path]]:
    """{clip key: {"noisy": path, "reference": path or absent, <run label>: enhanced path}} for
    every clip that every evaluated run enhanced, sorted by key."""
    runs = evaluated(runs)
    test = scored_test_set(runs[0])
    # Not required: a test set moved away since, or a run whose enhanced clips were deleted, has no examples.
    noisy = index_audio(test["noisy"], required=False) if test.get("noisy") else {}
    reference = index_audio(test["reference"], required=False) if test.get("reference") else {}
    enhanced = [index_audio(r.enhanced_dir, required=False) for r in runs]
    keys = sorted(set(noisy).intersection(*enhanced)) if enhanced else []
    out = {}
    for key in keys:
        paths = {"noisy": noisy[key]}
        if key in reference:
            paths["reference"] = reference[key]
        paths.update({r.label: e[key] for r, e in zip(runs, enhanced)})
        out[key] = paths
    return out


def per_file(run: Run) -> list[dict]:
    """The rows of the run's `evaluation/per_file.csv` (file, system, conditions, scores; as text)."""
    path = run.evaluation_dir / "per_file.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
