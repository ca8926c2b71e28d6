"""What the evaluation and the ablation tables share: the metric columns, the index of a folder
of audio by relative path, the evaluation summary.json, and the Markdown tables.

Standard library only: printing a table or reading a summary must not import torch (the
ablation scripts and the notebook run where no model is loaded).

    summary = read_summary(RUN / "evaluation" / "summary.json")
    print(summary_table(summary["results"]["overall"], summary["results"]["metrics"]))
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

# The metric columns, in the order of per_file.csv and of every table.
INTRUSIVE = ("pesq_wb", "pesq_nb", "pesq_nb_raw", "stoi", "estoi", "si_sdr", "hf_si_sdr", "hf_level", "csig", "cbak", "covl")
REFERENCE_FREE = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
METRICS = INTRUSIVE + REFERENCE_FREE
HEADERS = {
    "pesq_wb": "PESQ-wb", "pesq_nb": "PESQ-nb", "pesq_nb_raw": "PESQ-nb raw (pypesq)",
    "stoi": "STOI", "estoi": "ESTOI", "si_sdr": "SI-SDR (dB)",
    "hf_si_sdr": "SI-SDR 4-8k (dB)", "hf_level": "level 4-8k (dB)", "csig": "CSIG", "cbak": "CBAK", "covl": "COVL",
    "dnsmos_sig": "DNSMOS SIG", "dnsmos_bak": "DNSMOS BAK", "dnsmos_ovrl": "DNSMOS OVRL",
}
# With the 4-8 kHz band measures: a clean stream that drops everything above 4 kHz barely moves the others.
MAIN_METRICS = ("pesq_wb", "estoi", "si_sdr", "hf_si_sdr", "hf_level", "csig", "cbak", "covl", "dnsmos_ovrl")
# usedddp.audio.AUDIO_EXTENSIONS, which cannot be imported without torch (a test keeps them equal).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
NOISY = "noisy"  # the system name of the unprocessed input in every table
MISSING = "–"


class FolderError(ValueError):
    """A folder cannot be indexed (missing, no audio, two files with one relative path)."""


class SummaryError(ValueError):
    """A file is not an evaluation summary."""


# --------------------------------------------------------------------------------------------
# Folders


def index_audio(root: str | Path, *, required: bool = True) -> dict[str, Path]:
    """{relative posix path without extension: file} of every audio file below `root`, so that
    `a/b.wav` in one folder matches `a/b.flac` in another. With `required=False` a missing or
    empty folder is an empty index rather than an error; two files that differ only by their
    extension always are one, since neither could be matched."""
    root = Path(root)
    if not root.is_dir():
        if not required:
            return {}
        raise FolderError(f"{root}: {'is not a folder' if root.exists() else 'folder does not exist'}")
    out: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in out:
            raise FolderError(f"{root}: {out[key].name} and {path.name} share the name {key}: cannot match by relative path")
        out[key] = path
    if not out and required:
        raise FolderError(f"{root}: no audio files found (looked recursively for {', '.join(AUDIO_EXTENSIONS)})")
    return out


# --------------------------------------------------------------------------------------------
# The evaluation summary (summary.json)


class Stat(TypedDict):
    mean: float | None  # None: no finite score
    std: float | None
    n: int  # files with a finite score


class Results(TypedDict, total=False):
    metrics: list[str]  # the metric columns scored, in METRICS order
    # One row per system, the noisy input first: {"system": str, "files": int, <metric>: Stat}.
    overall: list[dict[str, Any]]
    conditions: dict[str, dict[str, list[dict[str, Any]]]]  # column -> value -> rows as in overall


class ScoredSet(TypedDict, total=False):
    enhanced: str
    reference: str | None
    noisy: str | None
    domain: str | None
    pairs: int
    condition_columns: list[str]


class Provenance(TypedDict, total=False):
    # total=False: summaries written by older versions, and hand-made ones, lack some keys.
    label: str
    method: str | None
    checkpoint: dict[str, Any] | None  # path, run_dir, stage, codec, run_name
    clean_prior: dict[str, Any] | None  # name, domain, dir, in_domain_for_training_data, in_domain_for_test_set
    noise_prior: dict[str, Any] | None
    test_set: ScoredSet
    sample_rate: int
    resampling: str
    pesq_mode: str
    dnsmos_model: str
    metric_definitions: dict[str, str]
    versions: dict[str, str]
    failed: list[str]
    unmatched: dict[str, list[str]]
    created: str
    seconds: float | None
    command: str


class Summary(TypedDict):
    provenance: Provenance
    results: Results


def json_safe(value):
    # JSON has no NaN/Inf (json.dumps would write the non-standard NaN): None instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_summary(path: str | Path, summary: Summary) -> None:
    """summary.json: non-finite numbers written as null."""
    Path(path).write_text(json.dumps(json_safe(summary), indent=2) + "\n")


def read_summary(path: str | Path) -> Summary:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise SummaryError(f"{path}: not JSON ({error})") from None
    if not (isinstance(data, dict) and isinstance(data.get("provenance"), dict) and isinstance(data.get("results"), dict)
            and isinstance(data["results"].get("overall"), list)):
        raise SummaryError(f"{path}: not an evaluation summary (no provenance, or no results.overall)")
    return data


# --------------------------------------------------------------------------------------------
# Markdown


def markdown_grid(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cell(stat: Stat | None) -> str:
    return fmt(None if not stat else stat["mean"])


def _delta_row(table: list[dict], metrics: Sequence[str]) -> list[str] | None:
    # Only with one system beside the noisy input: with several, whose delta would it be?
    base = next((r for r in table if r["system"] == NOISY), None)
    others = [r for r in table if r["system"] != NOISY]
    if base is None or len(others) != 1:
        return None
    cells = []
    for m in metrics:
        a, b = others[0][m]["mean"], base[m]["mean"]
        cells.append(MISSING if a is None or b is None else f"{a - b:+.2f}")
    return ["Δ vs noisy", ""] + cells


def summary_table(table: list[dict], metrics: Sequence[str]) -> str:
    """The mean of every metric per system of a summary's `overall` (or one condition value's)
    rows, and a Δ row against the noisy input when there is one other system."""
    rows = [[row["system"], str(row["files"])] + [_cell(row[m]) for m in metrics] for row in table]
    delta = _delta_row(table, metrics)
    return markdown_grid(["system", "files"] + [HEADERS[m] for m in metrics], rows + ([delta] if delta else []))


def summary_markdown(summary: Summary) -> str:
    """summary.md: what was scored, how, and the tables (overall, then per condition)."""
    meta, numbers = summary["provenance"], summary["results"]
    lines = [f"# Evaluation: {meta['label']}", ""]
    ckpt = meta.get("checkpoint")
    if ckpt:
        lines += [f"- checkpoint: `{ckpt['path']}` (stage {ckpt.get('stage')}, codec `{ckpt.get('codec')}`)",
                  f"- method: {meta['method']}"]
        prior = meta.get("clean_prior") or {}
        noise = meta.get("noise_prior") or {}
        flag = prior.get("in_domain_for_test_set")
        lines += [f"- clean prior: {prior.get('name')} (domain {prior.get('domain')}; in-domain for the test set: "
                  f"{'**yes**' if flag else 'no' if flag is False else 'unknown'})",
                  f"- noise prior: {noise.get('name')} (domain {noise.get('domain')})"]
    test = meta["test_set"]
    lines += [f"- test set: enhanced `{test['enhanced']}`, reference `{test['reference']}`, noisy `{test['noisy']}`"
              f" (domain {test.get('domain')}); {test['pairs']} files scored, {len(meta['failed'])} failed",
              f"- scoring: {meta['sample_rate']} Hz mono; {meta['resampling']}",
              f"- PESQ: {meta['pesq_mode']}", f"- DNSMOS: {meta['dnsmos_model']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    metrics = numbers["metrics"]
    if "hf_level" in metrics:
        lines[-1:-1] = ["- 4-8k columns: the 4-8 kHz band alone, which full-band scores barely weigh (does the estimate "
                        "keep fricatives?); level 0 dB: kept, -30 dB: deleted (definitions: summary.json)"]
    lines += ["Mean over files (NaN scores excluded; see per_file.csv).", "", summary_table(numbers["overall"], metrics)]
    if meta.get("cost"):
        lines += ["", "## Cost", "", cost_table(meta["cost"])]
    for column, groups in numbers["conditions"].items():
        rows = [[value, row["system"], str(row["files"])] + [_cell(row[m]) for m in metrics]
                for value, table in groups.items() for row in table]
        lines += ["", f"## Per condition: {column}", "",
                  markdown_grid([column, "system", "files"] + [HEADERS[m] for m in metrics], rows)]
    lines += problem_sections(meta, "Failed files")
    return "\n".join(lines) + "\n"


def problem_sections(meta: dict, failed_heading: str) -> list[str]:
    """Markdown lines listing the failures and the files without a partner of a summary's provenance."""
    lines = ["", f"## {failed_heading}", ""] + [f"- {f}" for f in meta["failed"]] if meta["failed"] else []
    unmatched = {k: v for k, v in meta["unmatched"].items() if v}
    if unmatched:
        lines += ["", "## Unmatched files (not scored)", ""] + [f"- {role}: {len(v)} (e.g. `{v[0]}`)" for role, v in unmatched.items()]
    return lines


def cost_table(cost: dict[str, dict]) -> str:
    """Per system: real-time factor (wall seconds of enhancement per second of audio, on the
    machine named in the provenance) and network evaluations (NFE) per second of audio."""
    rows = [[system, fmt(c.get("rtf"), 3), fmt(c.get("nfe_per_second"), 1), fmt(c.get("audio_seconds"), 1)]
            for system, c in cost.items()]
    return markdown_grid(["system", "RTF", "NFE/s", "audio (s)"], rows)


def metrics_of(rows: list[dict]) -> list[str]:
    """The metric columns of usedddp.ablation's table rows, in METRICS order."""
    return [m for m in HEADERS if rows and m in rows[0]]


def display_label(row: dict) -> str:
    return f"{row['label']} (in-domain)" if row.get("in_domain") else str(row["label"])


def _yes_no(flag: bool | None) -> str:
    return MISSING if flag is None else "**yes**" if flag else "no"


def _audit_cell(audit: list[str] | None) -> str:
    # None: a run trained before the audit existed; []: audited, nothing found.
    if audit is None:
        return MISSING
    return ", ".join(audit) or "none"


def ablation_table(rows: list[dict], metrics: str | Sequence[str] = "main", condition: str | None = None) -> str:
    """A Markdown table of usedddp.ablation's `results_table` or `condition_table` rows; in-domain
    runs are flagged in the run column ("prior=demo_matched (in-domain)") and in their own column.
    `metrics`: "main" (MAIN_METRICS, where scored: summaries from before the band measures have
    none), "all", or a list."""
    present = metrics_of(rows)
    if metrics == "main":
        chosen = [m for m in MAIN_METRICS if m in present]
    elif metrics == "all":
        chosen = present
    else:
        chosen = [m for m in metrics if m in present]
    head = ([condition] if condition else []) + ["run", "clean prior", "in-domain", "stage", "codec", "files"]
    head += [HEADERS[m] for m in chosen] + ["audit warnings"]
    cells = []
    for row in rows:
        cells.append(([str(row[condition])] if condition else []) + [
            display_label(row), row["prior"] or MISSING, _yes_no(row["in_domain"]),
            MISSING if row["stage"] is None else str(row["stage"]), row["codec"] or MISSING, str(row["files"] or MISSING)]
            + [fmt(row[m]) for m in chosen] + [_audit_cell(row.get("audit"))])
    return markdown_grid(head, cells)
