"""The prior-corpus ablation end to end, on tiny runs made here.

A real Hydra multirun of the training command over two clean priors (prior=demo: other speakers;
prior=demo_matched: the test speakers, in-domain), shrunk by test_train's TINY overrides to one
stage of two steps; then scripts/evaluate_runs.py scores both runs on the same four-clip test set,
scripts/ablation_table.py prints the table, and notebooks/prior_ablation.ipynb is executed with
nbclient on the runs. Every command runs in a subprocess, as a user runs it.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from test_train import args as tiny_args  # TINY: a stage of a very small model in seconds
from usedddp import ablation, reporting
from usedddp.assets import DEMO_ROOT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "prior_ablation.ipynb"
TIMEOUT_S = 300
# Sweep folders named like Hydra's default ones (`0_prior=demo,...`): commas and `=` in a run's
# path must survive being handed to the evaluate command as an override.
SUBDIR = "hydra.sweep.subdir='${hydra.job.num}_prior=${prior.name},tiny'"
LABELS = ["noisy", "prior=demo", "prior=demo_matched"]


def _run(cmd: list[str], cwd: Path, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Four demo test pairs (0 and 15 dB) in noisy/ and clean/, with their conditions CSV beside them."""
    root = tmp_path_factory.mktemp("testset")
    rows = sorted(csv.DictReader((DEMO_ROOT / "testset_conditions.csv").open()), key=lambda r: (float(r["snr_db"]), r["file"]))
    chosen = [rows[0], rows[1], rows[-2], rows[-1]]
    for row in chosen:
        for src, dst in (("noisy_testset", "noisy"), ("clean_testset", "clean")):
            (root / dst).mkdir(exist_ok=True)
            shutil.copy(DEMO_ROOT / src / row["file"], root / dst / row["file"])
    with (root / "testset_conditions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(chosen[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, test_set) -> tuple[Path, subprocess.CompletedProcess]:
    """The multirun (two tiny stage-1 runs), then scripts/evaluate_runs.py on it."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "demo"
    # data.prior_pitch_hz=null: the one-voice prior as it is, so that its audit warns (voice_range).
    train = _run([sys.executable, "-m", "usedddp.train", "-m", "prior=demo,demo_matched", "stages=[1]", "logger=csv",
                  "data.prior_pitch_hz=null",
                  f"hydra.sweep.dir={sweep_dir}", SUBDIR, *tiny_args()], cwd=sweep_dir.parent)
    assert train.returncode == 0, train.stdout[-6000:]
    evaluate = _run([sys.executable, str(ROOT / "scripts" / "evaluate_runs.py"), str(sweep_dir), "dnsmos=false", "jobs=1",
                     f"data.noisy_dir={test_set / 'noisy'}", f"data.clean_dir={test_set / 'clean'}", "data.domain=demo",
                     "--condition", "snr_db"], cwd=sweep_dir.parent)
    return sweep_dir, evaluate


def _table_lines(text: str) -> dict[str, list[str]]:
    """{run cell: cells} of the rows of the first Markdown table with a `run` column in `text`."""
    out, inside = {}, False
    for line in text.splitlines():
        if line.startswith("| run |"):
            inside = True
        elif inside and line.startswith("|---"):
            continue
        elif inside and line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out[cells[0]] = cells
        elif inside:
            break
    return out


def test_multirun_evaluated_and_tabulated(sweep):
    sweep_dir, evaluate = sweep
    assert evaluate.returncode == 0, evaluate.stdout[-6000:]
    runs = ablation.find_runs(sweep_dir)
    assert [r.dir.name for r in runs] == ["0_prior=demo,tiny", "1_prior=demo_matched,tiny"]
    for run in runs:
        assert (run.evaluation_dir / "summary.json").is_file() and (run.evaluation_dir / "per_file.csv").is_file()
        assert len(list(run.enhanced_dir.glob("*.flac"))) == 4

    rows = ablation.results_table(runs)
    assert [r["label"] for r in rows] == LABELS
    assert [r["prior"] for r in rows] == [None, "demo", "demo_matched"]
    assert [r["in_domain"] for r in rows] == [None, False, True]
    assert [r["stage"] for r in rows] == [None, 1, 1]
    assert all(r["files"] == 4 for r in rows)
    assert all(r["si_sdr"] is not None and r["pesq_wb"] is not None for r in rows)
    assert all(r["hf_si_sdr"] is not None and r["hf_level"] is not None for r in rows)  # the 4-8 kHz band measures
    assert "dnsmos_ovrl" not in rows[0]  # dnsmos=false: not scored, not a column
    # The corpus audit each run made at its start: the one-voice prior (not pitch-shifted here) does
    # not cover the male test voice; the in-domain prior (the test speakers themselves) does. Both
    # runs' test set holds two noisy "clean" references.
    assert [r["audit"] for r in rows] == [None, ["noisy_reference (test)", "voice_range (prior)"], ["noisy_reference (test)"]]

    # The script printed the same table, the in-domain run flagged, then the per-SNR table.
    printed = _table_lines(evaluate.stdout)
    assert set(printed) == {"noisy", "prior=demo", "prior=demo_matched (in-domain)"}, evaluate.stdout[-3000:]
    assert printed["prior=demo_matched (in-domain)"][1:3] == ["demo_matched", "**yes**"]
    assert printed["prior=demo"][1:3] == ["demo", "no"]
    assert "Per snr_db:" in evaluate.stdout
    assert "| SI-SDR 4-8k (dB) | level 4-8k (dB) |" in evaluate.stdout
    # The audit warnings column.
    assert printed["prior=demo"][-1] == "noisy_reference (test), voice_range (prior)"
    assert printed["prior=demo_matched (in-domain)"][-1] == "noisy_reference (test)"
    assert printed["noisy"][-1] == "–"

    by_snr = ablation.condition_table(runs, "snr_db")
    assert [(r["snr_db"], r["label"]) for r in by_snr] == [(snr, label) for snr in ("0", "15") for label in LABELS]


def test_table_script_and_already_evaluated_runs(sweep, tmp_path):
    sweep_dir, _ = sweep
    out = tmp_path / "table.md"
    proc = _run([sys.executable, str(ROOT / "scripts" / "ablation_table.py"), str(sweep_dir), "--condition", "snr_db",
                 "--markdown", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert set(_table_lines(proc.stdout)) == {"noisy", "prior=demo", "prior=demo_matched (in-domain)"}
    assert "| 15 | prior=demo_matched (in-domain) |" in out.read_text()

    again = _run([sys.executable, str(ROOT / "scripts" / "evaluate_runs.py"), str(sweep_dir)], cwd=tmp_path)
    assert again.returncode == 0, again.stdout
    assert again.stdout.count("already evaluated (") == 2 and "evaluated 0, skipped 2" in again.stdout


def test_runs_scored_on_different_test_sets_are_refused(sweep):
    sweep_dir, _ = sweep
    runs = ablation.find_runs(sweep_dir)
    runs[1].summary = copy.deepcopy(runs[1].summary)
    runs[1].summary["provenance"]["test_set"]["pairs"] = 16
    with pytest.raises(ablation.AblationError, match="different test sets"):
        ablation.results_table(runs)


def test_failed_evaluation_is_reported_and_exit_code_is_1(sweep, tmp_path):
    """A run without a checkpoint: evaluate refuses it, the script says so and exits 1."""
    sweep_dir, _ = sweep
    broken = tmp_path / "sweep" / "0_broken"
    shutil.copytree(sweep_dir / "0_prior=demo,tiny" / ".hydra", broken / ".hydra")
    proc = _run([sys.executable, str(ROOT / "scripts" / "evaluate_runs.py"), str(broken.parent), "dnsmos=false"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "FAILED" in proc.stdout and "failed 1" in proc.stdout


def test_notebook_runs_on_the_sweep(sweep, tmp_path, monkeypatch):
    """notebooks/prior_ablation.ipynb, executed by nbclient with USEDDDP_RUNS_DIR set: its table
    has the noisy row and both priors (the in-domain one flagged), and it draws plots and players."""
    from nbclient import NotebookClient

    sweep_dir, _ = sweep
    monkeypatch.setenv("USEDDDP_RUNS_DIR", str(sweep_dir))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    table = next(m for m in markdown if m.startswith("| run |"))
    assert list(_table_lines(table)) == ["noisy", "prior=demo", "prior=demo_matched (in-domain)"]
    assert any(m.startswith("| snr_db |") for m in markdown)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # bars, per-SNR lines, spectrograms
    assert sum("<audio" in o.get("data", {}).get("text/html", "") for o in outputs) == 4  # noisy, reference, 2 runs


def test_stored_notebook_has_no_outputs_and_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "clear the notebook's outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "USEDDDP_RUNS_DIR" in code[0].source


def test_labels_are_the_overrides_that_vary(tmp_path):
    """A codec sweep is labelled by its codec override; common overrides are left out."""
    for num, codec in enumerate(("stft", "dac_tiny")):
        hydra_dir = tmp_path / f"{num}_x" / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "config.yaml").write_text("stages: [1]\nprior: {name: demo, dir: x, domain: d}\n")
        (hydra_dir / "overrides.yaml").write_text(f"- model/codec={codec}\n- trainer.max_steps=2\n")
        (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n  runtime:\n    choices:\n      model/codec: {codec}\n")
    runs = ablation.find_runs(tmp_path)
    assert [r.label for r in runs] == ["model/codec=stft", "model/codec=dac_tiny"]
    assert [r.codec for r in runs] == ["stft", "dac_tiny"]
    with pytest.raises(ablation.AblationError, match="no run has an evaluation"):
        ablation.results_table(runs)


def test_matched_prior_is_the_test_speakers_and_no_mixture_source():
    """clean_prior_matched: the three test speakers only, every file in MANIFEST.csv, none of them a
    source of a noisy or clean file; prior=demo_matched is in-domain for data=demo, prior=demo not."""
    from test_train import _compose

    rows = list(csv.DictReader((DEMO_ROOT / "MANIFEST.csv").open()))
    matched = [r for r in rows if r["kind"] == "clean_prior_matched"]
    others = {source for r in rows if r["kind"] != "clean_prior_matched" for source in r["derived_from"].split(";")}
    test_speakers = {r["speaker"] for r in rows if r["kind"] == "clean_test"}
    assert {r["speaker"] for r in matched} == test_speakers and len(test_speakers) == 3
    assert not {r["derived_from"] for r in matched} & others
    on_disk = {p.relative_to(DEMO_ROOT).as_posix() for p in (DEMO_ROOT / "clean_prior_matched").rglob("*.flac")}
    assert on_disk == {r["path"] for r in matched}
    assert 60 <= sum(float(r["duration_s"]) for r in matched) <= 150
    for prior, in_domain in (("demo_matched", True), ("demo", False)):
        cfg = _compose([f"prior={prior}", "paths.output_dir=unused"])
        assert (cfg.prior.domain == cfg.data.domain) is in_domain, prior


def test_stage_option_evaluates_that_stage_into_its_own_folder(tmp_path):
    """--stage N: stage N's last.ckpt, scored into <run>/evaluation_stageN, which the table reads with --stage N."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_runs", ROOT / "scripts" / "evaluate_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = tmp_path / "0_prior=demo,x={1:2}"
    cmd = module.evaluate_command(run, ["dnsmos=false"], force=True, stage=2)
    assert cmd[3:] == [f"ckpt='{run}/stage2/checkpoints/last.ckpt'", f"output='{run}/evaluation_stage2'",
                       f"hydra.run.dir='{run}/evaluation_stage2/log'", "overwrite=true", "dnsmos=false"]
    assert module.evaluate_command(run, [], force=False)[3] == f"ckpt='{run}'"
    assert ablation.evaluation_name(None) == "evaluation" and ablation.evaluation_name(1) == "evaluation_stage1"


def _fake_run(root: Path, num: int, prior: str, metrics: dict[str, float]) -> None:
    """A run directory with an evaluation summary of one noisy and one system row (no training)."""
    hydra_dir = root / f"{num}_{prior}" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "config.yaml").write_text(f"stages: [1]\nprior: {{name: {prior}, dir: x, domain: d}}\n")
    (hydra_dir / "overrides.yaml").write_text(f"- prior={prior}\n")
    (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    stat = lambda v: {"mean": v, "std": 0.0, "n": 2}  # noqa: E731
    summary = {
        "provenance": {"test_set": {"noisy": "n", "reference": "c", "pairs": 2, "domain": "d"},
                       "clean_prior": {"name": prior, "domain": "d", "in_domain_for_test_set": False},
                       "checkpoint": {"stage": 1, "codec": "x.Stft"}},
        "results": {"metrics": list(metrics), "conditions": {}, "overall": [
            {"system": "noisy", "files": 2, **{m: stat(v - 1) for m, v in metrics.items()}},
            {"system": "USE-DDP stage 1", "files": 2, **{m: stat(v) for m, v in metrics.items()}}]},
    }
    (root / f"{num}_{prior}" / "evaluation").mkdir()
    (root / f"{num}_{prior}" / "evaluation" / "summary.json").write_text(json.dumps(summary))


def test_summaries_without_the_band_measures_still_tabulate(tmp_path):
    """An evaluation from before hf_si_sdr/hf_level existed: alone, a table without them; beside a
    newer one, the columns every run has, with a warning naming the ones left out."""
    old = {"pesq_wb": 2.0, "si_sdr": 5.0}
    _fake_run(tmp_path / "old", 0, "demo", old)
    rows = ablation.results_table(ablation.find_runs(tmp_path / "old"))
    assert "hf_level" not in rows[0] and rows[1]["si_sdr"] == 5.0
    assert "SI-SDR 4-8k" not in reporting.ablation_table(rows) and "| SI-SDR (dB) |" in reporting.ablation_table(rows)

    _fake_run(tmp_path / "mixed", 0, "demo", old)
    _fake_run(tmp_path / "mixed", 1, "demo_matched", {**old, "hf_si_sdr": -20.0, "hf_level": -35.0})
    runs = ablation.find_runs(tmp_path / "mixed")
    with pytest.warns(UserWarning, match="hf_si_sdr, hf_level not in every evaluation"):
        rows = ablation.results_table(runs)
    assert [r["label"] for r in rows] == ["noisy", "prior=demo", "prior=demo_matched"]
    assert reporting.metrics_of(rows) == ["pesq_wb", "si_sdr"]

    _fake_run(tmp_path / "new", 0, "demo", {**old, "hf_si_sdr": -20.0, "hf_level": -35.0})
    table = reporting.ablation_table(ablation.results_table(ablation.find_runs(tmp_path / "new")))
    assert "| SI-SDR (dB) | SI-SDR 4-8k (dB) | level 4-8k (dB) |" in table and "| -35.00 |" in table


def test_a_summary_that_is_not_one_is_refused_by_name(tmp_path):
    """A truncated or foreign <run>/evaluation/summary.json: an AblationError naming it, not a KeyError later."""
    _fake_run(tmp_path, 0, "demo", {"pesq_wb": 2.0})
    path = tmp_path / "0_demo" / "evaluation" / "summary.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(ablation.AblationError, match="0_demo/evaluation/summary.json: not JSON"):
        ablation.find_runs(tmp_path)
