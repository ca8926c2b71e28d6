"""Tests of `python -m usedddp.evaluate` in its two forms (folder, checkpoint).

Real demo-corpus clips are the inputs: the noisy test mixtures, their clean references, and
"systems" whose scores are known in advance (the references themselves, resampled copies).
The commands run in subprocesses, as a user runs them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from test_enhance import _make_run  # an untrained tiny run directory, built without training
from usedddp.assets import DEMO_ROOT
from usedddp.evaluate import (
    Evaluation,
    condition_columns,
    evaluate_folders,
    read_conditions,
    summarise,
)

TIMEOUT_S = 300
N_FILES = 4  # of the 16 demo test pairs: enough for two SNR conditions, fast enough for CI


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """A copy of the first N_FILES demo test pairs (noisy/, clean/) and their conditions CSV,
    chosen so that at least two SNR conditions appear."""
    root = tmp_path_factory.mktemp("testset")
    rows = list(csv.DictReader((DEMO_ROOT / "testset_conditions.csv").open()))
    rows.sort(key=lambda r: (float(r["snr_db"]), r["file"]))
    chosen = [rows[0], rows[1], rows[-2], rows[-1]][:N_FILES]  # 0 dB and 15 dB
    for folder in ("noisy", "clean"):
        (root / folder).mkdir()
    for row in chosen:
        shutil.copy(DEMO_ROOT / "noisy_testset" / row["file"], root / "noisy" / row["file"])
        shutil.copy(DEMO_ROOT / "clean_testset" / row["file"], root / "clean" / row["file"])
    with (root / "testset_conditions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(chosen[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return root


def evaluate(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "usedddp.evaluate", f"hydra.run.dir={tmp / 'hydra'}", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)


def _overall(summary: dict) -> dict[str, dict]:
    return {row["system"]: row for row in summary["results"]["overall"]}


def _mean(summary: dict, system: str, metric: str) -> float:
    return _overall(summary)[system][metric]["mean"]


# --------------------------------------------------------------------------------------------
# The folder form


def test_references_scored_against_themselves_and_noisy_row(tmp_path, test_set):
    """A 'system' that outputs the references: intrusive metrics at their ceilings, the noisy row
    below them, per-file CSV + JSON + Markdown written with the provenance recorded."""
    out = tmp_path / "eval"
    proc = evaluate(tmp_path, f"enhanced={test_set / 'clean'}", f"reference={test_set / 'clean'}",
                    f"noisy={test_set / 'noisy'}", f"output={out}", "label=oracle", "jobs=2")
    assert proc.returncode == 0, proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(_overall(summary)) == {"noisy", "oracle"}
    assert _mean(summary, "oracle", "pesq_wb") > 4.5
    assert _mean(summary, "oracle", "stoi") > 0.999
    assert _mean(summary, "oracle", "si_sdr") > 60
    assert _mean(summary, "oracle", "csig") > 4.5 and _mean(summary, "oracle", "covl") > 4.5
    assert _mean(summary, "oracle", "hf_si_sdr") > 60 and _mean(summary, "oracle", "hf_level") == pytest.approx(0.0, abs=1e-6)
    assert _mean(summary, "noisy", "hf_level") > 0  # the noise adds 4-8 kHz energy
    assert _mean(summary, "oracle", "pesq_nb_raw") == pytest.approx(4.5, abs=1e-4)  # the raw P.862 ceiling
    for metric in ("pesq_wb", "pesq_nb", "pesq_nb_raw", "estoi", "si_sdr", "hf_si_sdr", "csig", "cbak", "covl"):
        assert _mean(summary, "noisy", metric) < _mean(summary, "oracle", metric), metric
    # The noisy inputs' SI-SDR follows the SNRs they were mixed at (0 and 15 dB).
    by_snr = summary["results"]["conditions"]["snr_db"]
    assert list(by_snr) == ["0", "15"]
    noisy_sdr = {snr: next(r for r in rows if r["system"] == "noisy")["si_sdr"]["mean"] for snr, rows in by_snr.items()}
    assert noisy_sdr["0"] < noisy_sdr["15"]
    assert all("dnsmos_ovrl" in row for row in _overall(summary).values())

    meta = summary["provenance"]
    assert meta["sample_rate"] == 16000 and "wide-band" in meta["pesq_mode"] and "narrow-band" in meta["pesq_mode"]
    assert "sig_bak_ovr.onnx" in meta["dnsmos_model"]
    assert {"pesq", "pystoi", "speechmos", "onnxruntime", "torch"} <= set(meta["versions"])
    assert summary["results"]["metrics"] == ["pesq_wb", "pesq_nb", "pesq_nb_raw", "stoi", "estoi", "si_sdr", "hf_si_sdr", "hf_level",
                                             "csig", "cbak", "covl", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"]
    assert "pypesq" in meta["metric_definitions"]["pesq_nb_raw"]
    assert "4-8 kHz" in meta["metric_definitions"]["hf_si_sdr"] and "-50" in meta["metric_definitions"]["hf_level"]
    with (out / "per_file.csv").open(newline="") as f:
        assert next(csv.reader(f)) == ["file", "system", *meta["test_set"]["condition_columns"], *summary["results"]["metrics"],
                                       "duration_s", "length_diff"]
    rows = list(csv.DictReader((out / "per_file.csv").open()))
    assert len(rows) == 2 * N_FILES and {r["system"] for r in rows} == {"noisy", "oracle"}
    assert all(r["snr_db"] in ("0", "15") for r in rows)
    markdown = (out / "summary.md").read_text()
    assert "| noisy |" in markdown and "| oracle |" in markdown and "Δ vs noisy" in markdown
    assert "| SI-SDR (dB) | SI-SDR 4-8k (dB) | level 4-8k (dB) |" in markdown
    assert "| noisy |" in proc.stdout  # the table is printed


def test_resampled_stereo_copies_match_their_references(tmp_path, test_set):
    """Estimates at 48 kHz stereo (any rate, any channel count) are resampled and downmixed to
    16 kHz mono: their scores against the 16 kHz references stay near the ceiling."""
    est = tmp_path / "est48k"
    est.mkdir()
    for path in sorted((test_set / "clean").glob("*.flac"))[:2]:
        data, sr = sf.read(str(path), dtype="float32")
        t = np.arange(int(len(data) * 3))
        up = np.interp(t / 3, np.arange(len(data)), data).astype(np.float32)
        sf.write(str(est / path.with_suffix(".wav").name), np.stack([up, up], axis=1), 48000, subtype="FLOAT")
    result = evaluate_folders(est, test_set / "clean", dnsmos=False, progress=False)
    assert not result.failed
    assert result.unmatched["reference"] and len(result.unmatched["reference"]) == N_FILES - 2
    for row in result.rows:
        assert row["pesq_wb"] > 4.0 and row["stoi"] > 0.99, row
        assert abs(row["length_diff"]) <= 3


def test_low_passed_references_fail_the_band_measures_only(tmp_path, test_set):
    """A 'system' that outputs the references low-passed at 3.5 kHz (the clean stream's failure):
    full-band SI-SDR and STOI stay high, the 4-8 kHz band's level says deleted."""
    import scipy.signal

    est = tmp_path / "lowpassed"
    est.mkdir()
    sos = scipy.signal.butter(16, 3500, fs=16000, output="sos")
    for path in sorted((test_set / "clean").glob("*.flac")):
        data, sr = sf.read(str(path), dtype="float64")
        sf.write(str(est / path.name), scipy.signal.sosfiltfilt(sos, data), sr, subtype="PCM_24")
    result = evaluate_folders(est, test_set / "clean", dnsmos=False, progress=False)
    assert not result.failed and len(result.rows) == N_FILES
    for row in result.rows:
        assert row["si_sdr"] > 5 and row["stoi"] > 0.95, row
        assert row["hf_level"] < -30 and row["hf_si_sdr"] < 0, row


def test_bad_estimate_is_reported_and_the_others_scored(tmp_path, test_set):
    est = tmp_path / "est"
    shutil.copytree(test_set / "noisy", est)
    victim = sorted(est.glob("*.flac"))[0]
    victim.write_bytes(b"fLaC" + bytes(100))
    out = tmp_path / "eval"
    proc = evaluate(tmp_path, f"enhanced={est}", f"reference={test_set / 'clean'}", f"output={out}", "dnsmos=false", "jobs=1")
    assert proc.returncode == 1, proc.stdout
    assert f"failed: {victim}" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert _overall(summary)["enhanced"]["files"] == N_FILES - 1
    assert any(str(victim) in f for f in summary["provenance"]["failed"])


def test_existing_evaluation_is_not_overwritten(tmp_path, test_set):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.json").write_text("mine")
    proc = evaluate(tmp_path, f"enhanced={test_set / 'clean'}", f"reference={test_set / 'clean'}", f"output={out}")
    assert proc.returncode == 2 and "overwrite=true" in proc.stdout
    assert (out / "summary.json").read_text() == "mine"


def test_missing_arguments_are_refused(tmp_path):
    proc = evaluate(tmp_path, f"output={tmp_path / 'eval'}")
    assert proc.returncode == 2 and "enhanced=DIR" in proc.stdout


# --------------------------------------------------------------------------------------------
# The checkpoint form


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("run"))


def test_checkpoint_on_a_vctk_layout_test_set(tmp_path, run_dir, test_set):
    """ckpt=RUN data.root=ROOT: the VCTK-DEMAND layout is found, the test set enhanced into
    output/enhanced and scored with a noisy row; the demo clean prior is recorded as out of
    domain for a VCTK test set; conditions come from logfiles/log_testset.txt."""
    root = tmp_path / "vctk"
    shutil.copytree(test_set / "noisy", root / "noisy_testset_wav")
    shutil.copytree(test_set / "clean", root / "clean_testset_wav")
    (root / "logfiles").mkdir()
    names = sorted(p.stem for p in (root / "noisy_testset_wav").glob("*.flac"))
    (root / "logfiles" / "log_testset.txt").write_text(
        "".join(f"{name} {'bus' if i % 2 else 'cafe'} {2.5 if i < 2 else 17.5}\n" for i, name in enumerate(names)))
    out = tmp_path / "eval"
    proc = evaluate(tmp_path, f"ckpt={run_dir}", f"data.root={root}", f"output={out}", "dnsmos=false")
    assert proc.returncode == 0, proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["provenance"]
    assert meta["checkpoint"]["stage"] == 3 and meta["checkpoint"]["run_dir"] == str(run_dir)
    assert meta["test_set"]["domain"] == "vctk"
    assert meta["clean_prior"]["name"] == "demo" and meta["clean_prior"]["in_domain_for_test_set"] is False
    assert set(_overall(summary)) == {"noisy", "USE-DDP stage 3"}
    assert sorted(p.stem for p in (out / "enhanced").glob("*.flac")) == names
    assert set(summary["results"]["conditions"]) == {"noise_type", "snr_db"}
    assert list(summary["results"]["conditions"]["snr_db"]) == ["2.5", "17.5"]
    assert "in-domain for the test set: no" in (out / "summary.md").read_text()


def test_checkpoint_on_its_own_held_out_set(tmp_path, run_dir):
    """With no data.root, the run's own held-out folders (the demo test set) are used; the demo
    clean prior (other speakers than the test set's) is recorded as not in-domain."""
    out = tmp_path / "eval"
    proc = evaluate(tmp_path, f"ckpt={run_dir}", f"output={out}", "dnsmos=false", "jobs=2")
    assert proc.returncode == 0, proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["test_set"]["domain"] == "demo"
    assert summary["provenance"]["clean_prior"]["domain"] == "demo_other_speakers"
    assert summary["provenance"]["clean_prior"]["in_domain_for_test_set"] is False
    assert _overall(summary)["noisy"]["files"] == 16
    assert list(summary["results"]["conditions"]["snr_db"]) == ["0", "5", "10", "15"]


def test_checkpoint_with_unknown_root_is_refused(tmp_path, run_dir):
    proc = evaluate(tmp_path, f"ckpt={run_dir}", f"data.root={tmp_path}", f"output={tmp_path / 'eval'}")
    assert proc.returncode == 2 and "no test set found" in proc.stdout


# --------------------------------------------------------------------------------------------
# Pieces


def test_read_conditions_both_formats(tmp_path):
    (tmp_path / "c.csv").write_text("file,snr_db,noise\na/x.flac,5,bus\ny.wav,10,cafe\n")
    assert read_conditions(tmp_path / "c.csv") == {"a/x": {"snr_db": "5", "noise": "bus"}, "y": {"snr_db": "10", "noise": "cafe"}}
    (tmp_path / "log.txt").write_text("p232_001 living 17.5\np232_002 bus 2.5\n")
    assert read_conditions(tmp_path / "log.txt")["p232_002"] == {"noise_type": "bus", "snr_db": "2.5"}


def test_identifier_columns_are_not_conditions():
    conditions = {f"f{i}": {"snr_db": str(i % 2), "speaker": f"s{i}"} for i in range(20)}
    assert condition_columns(conditions, list(conditions)) == ["snr_db"]


def test_summary_ignores_nan_scores_and_counts_them():
    result = Evaluation(systems=["noisy", "x"], rows=[
        {"file": "a", "system": "noisy", "pesq_wb": 1.0},
        {"file": "a", "system": "x", "pesq_wb": float("nan")},
        {"file": "b", "system": "noisy", "pesq_wb": 2.0},
        {"file": "b", "system": "x", "pesq_wb": 3.0},
    ])
    overall = {r["system"]: r for r in summarise(result)["overall"]}
    assert overall["noisy"]["pesq_wb"] == {"mean": 1.5, "std": 0.5, "n": 2}
    assert overall["x"]["pesq_wb"]["mean"] == 3.0 and overall["x"]["pesq_wb"]["n"] == 1 and overall["x"]["files"] == 2
