"""usedddp.reporting: the folder index, summary.json, the Markdown tables, and that none of it needs torch."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from usedddp import reporting
from usedddp.reporting import (
    FolderError,
    SummaryError,
    ablation_table,
    index_audio,
    read_summary,
    summary_markdown,
    summary_table,
    write_summary,
)


def _stat(mean, std=0.1, n=2):
    return {"mean": mean, "std": std, "n": n}


def _summary(metrics=("pesq_wb", "si_sdr"), systems=(("noisy", 1.5, 2.0), ("x", 3.0, 12.5))) -> dict:
    """A summary as python -m usedddp.evaluate writes it: overall rows and one condition column."""
    rows = [{"system": name, "files": 2, "pesq_wb": _stat(pesq), "si_sdr": _stat(sdr)} for name, pesq, sdr in systems]
    rows = [{k: v for k, v in row.items() if k in ("system", "files", *metrics)} for row in rows]
    return {
        "provenance": {
            "label": "x", "method": None, "checkpoint": None, "clean_prior": None, "noise_prior": None,
            "test_set": {"enhanced": "e", "reference": "c", "noisy": "n", "domain": "demo", "pairs": 2,
                         "condition_columns": ["snr_db"]},
            "sample_rate": 16000, "resampling": "none", "pesq_mode": "wb", "dnsmos_model": "m",
            "metric_definitions": {}, "versions": {"pesq": "0.0.4"}, "failed": [], "unmatched": {"reference": []},
            "created": "2026-01-01T00:00:00+00:00", "seconds": 1.5, "command": "evaluate",
        },
        "results": {"metrics": list(metrics), "overall": rows,
                    "conditions": {"snr_db": {"0": rows, "15": rows}}},
    }


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


# --------------------------------------------------------------------------------------------
# Folders


def test_index_maps_relative_paths_of_nested_audio_only(tmp_path):
    for name in ("a.wav", "sub/b.flac", "sub/deeper/c.OGG", "notes.txt", "sub/d.wav.bak", "sub/e.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.wav").mkdir()  # an audio name that is not a file
    index = index_audio(tmp_path)
    assert index == {"a": tmp_path / "a.wav", "sub/b": tmp_path / "sub" / "b.flac",
                     "sub/deeper/c": tmp_path / "sub" / "deeper" / "c.OGG"}
    assert index_audio(str(tmp_path)) == index  # a str root as well


def test_index_refuses_what_cannot_be_matched(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "b.wav").write_bytes(b"x")
    (tmp_path / "s" / "b.flac").write_bytes(b"x")
    with pytest.raises(FolderError, match="share the name s/b"):
        index_audio(tmp_path)
    with pytest.raises(FolderError, match="share the name"):
        index_audio(tmp_path, required=False)  # not a missing folder: still no way to match

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio")
    with pytest.raises(FolderError, match="no audio files found"):
        index_audio(empty)
    with pytest.raises(FolderError, match="does not exist"):
        index_audio(tmp_path / "missing")
    with pytest.raises(FolderError, match="is not a folder"):
        index_audio(empty / "readme.txt")
    assert index_audio(empty, required=False) == {} and index_audio(tmp_path / "missing", required=False) == {}


def test_audio_extensions_match_the_audio_module():
    from usedddp.audio import AUDIO_EXTENSIONS

    assert reporting.AUDIO_EXTENSIONS == AUDIO_EXTENSIONS


# --------------------------------------------------------------------------------------------
# Metric columns


def test_every_metric_has_a_header_and_a_definition():
    from usedddp.evaluate import metric_definitions

    # metrics_of orders a table's columns by HEADERS: it must be METRICS' order.
    assert tuple(reporting.HEADERS) == reporting.METRICS
    assert set(metric_definitions()) == set(reporting.METRICS)
    assert set(reporting.MAIN_METRICS) <= set(reporting.METRICS)
    assert len(set(reporting.HEADERS.values())) == len(reporting.HEADERS)  # no two columns look alike


# --------------------------------------------------------------------------------------------
# summary.json


def test_summary_round_trips_in_the_format_evaluate_wrote(tmp_path):
    summary = _summary()
    path = tmp_path / "summary.json"
    write_summary(path, summary)
    assert read_summary(path) == summary
    # Byte for byte what evaluate wrote before reporting existed: older summaries read the same.
    assert path.read_text() == json.dumps(summary, indent=2) + "\n"


def test_non_finite_numbers_are_written_as_null(tmp_path):
    summary = _summary()
    summary["results"]["overall"][1]["pesq_wb"] = _stat(float("nan"), std=float("inf"))
    summary["provenance"]["seconds"] = float("-inf")
    path = tmp_path / "summary.json"
    write_summary(path, summary)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    back = read_summary(path)
    assert back["results"]["overall"][1]["pesq_wb"] == {"mean": None, "std": None, "n": 2}
    assert back["provenance"]["seconds"] is None
    assert math.isnan(summary["results"]["overall"][1]["pesq_wb"]["mean"])  # the caller's dict is left alone


@pytest.mark.parametrize("text", ["mine", "[]", "{}", '{"provenance": {}, "results": {"metrics": []}}'])
def test_other_files_are_not_summaries(tmp_path, text):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(SummaryError, match=re.escape(str(path))):
        read_summary(path)


# --------------------------------------------------------------------------------------------
# Markdown


def test_summary_table_has_a_row_per_system_and_a_delta_row():
    summary = _summary()
    text = summary_table(summary["results"]["overall"], ["pesq_wb", "si_sdr"])
    rows = _table_rows(text)
    assert rows[0] == ["system", "files", "PESQ-wb", "SI-SDR (dB)"]
    assert set(rows[1]) == {"---"} and len(rows[1]) == 4
    assert rows[2] == ["noisy", "2", "1.50", "2.00"] and rows[3] == ["x", "2", "3.00", "12.50"]
    assert rows[4] == ["Δ vs noisy", "", "+1.50", "+10.50"]
    assert len(rows) == 2 + 2 + 1


def test_delta_is_zero_for_a_system_that_is_the_noisy_input_and_absent_without_one_system():
    same = _summary(systems=(("noisy", 1.5, 2.0), ("passthrough", 1.5, 2.0)))["results"]["overall"]
    assert _table_rows(summary_table(same, ["pesq_wb", "si_sdr"]))[-1] == ["Δ vs noisy", "", "+0.00", "+0.00"]

    two = _summary(systems=(("noisy", 1.5, 2.0), ("a", 2.0, 3.0), ("b", 2.5, 4.0)))["results"]["overall"]
    assert "Δ" not in summary_table(two, ["pesq_wb"]) and len(_table_rows(summary_table(two, ["pesq_wb"]))) == 2 + 3
    alone = _summary(systems=(("x", 3.0, 12.5),))["results"]["overall"]
    assert "Δ" not in summary_table(alone, ["pesq_wb"])

    unscored = _summary()["results"]["overall"]
    unscored[1]["si_sdr"] = _stat(None, std=None, n=0)
    rows = _table_rows(summary_table(unscored, ["pesq_wb", "si_sdr"]))
    assert rows[3][-1] == "–" and rows[-1] == ["Δ vs noisy", "", "+1.50", "–"]


def test_summary_markdown_has_a_table_per_condition():
    text = summary_markdown(_summary())
    assert text.startswith("# Evaluation: x\n") and text.endswith("\n")
    section = text.split("## Per condition: snr_db", 1)[1]
    rows = _table_rows(section)
    assert rows[0] == ["snr_db", "system", "files", "PESQ-wb", "SI-SDR (dB)"]
    assert [r[:2] for r in rows[2:]] == [["0", "noisy"], ["0", "x"], ["15", "noisy"], ["15", "x"]]
    assert "Unmatched" not in text and "Failed" not in text  # empty lists are not sections


def test_ablation_table_flags_in_domain_runs_and_leaves_gaps_visible():
    head = {"files": 4, "pesq_wb": 1.5, "pesq_wb_std": 0.1, "si_sdr": 2.0, "si_sdr_std": 0.2}
    rows = [
        {"label": "noisy", "prior": None, "in_domain": None, "stage": None, "codec": None, "audit": None, **head},
        {"label": "prior=demo", "prior": "demo", "in_domain": False, "stage": 1, "codec": "stft",
         "audit": ["voice_range (prior)"], **head, "si_sdr": None},
        {"label": "prior=demo_matched", "prior": "demo_matched", "in_domain": True, "stage": 3, "codec": "stft",
         "audit": [], **head, "pesq_wb": 2.25},
    ]
    table = _table_rows(ablation_table(rows))
    assert table[0] == ["run", "clean prior", "in-domain", "stage", "codec", "files", "PESQ-wb", "SI-SDR (dB)", "audit warnings"]
    assert len(table) == 2 + len(rows)
    assert table[2] == ["noisy", "–", "–", "–", "–", "4", "1.50", "2.00", "–"]
    assert table[3] == ["prior=demo", "demo", "no", "1", "stft", "4", "1.50", "–", "voice_range (prior)"]
    assert table[4] == ["prior=demo_matched (in-domain)", "demo_matched", "**yes**", "3", "stft", "4", "2.25", "2.00", "none"]

    by_snr = _table_rows(ablation_table([{**r, "snr_db": "0"} for r in rows], metrics=["si_sdr"], condition="snr_db"))
    assert by_snr[0][:2] == ["snr_db", "run"] and "PESQ-wb" not in by_snr[0]
    assert [r[0] for r in by_snr[2:]] == ["0", "0", "0"]


# --------------------------------------------------------------------------------------------
# No torch


def test_reporting_and_ablation_import_without_torch():
    code = ("import sys, usedddp.reporting, usedddp.ablation; "
            "heavy = sorted({'torch', 'torchaudio', 'lightning'} & set(sys.modules)); print(heavy); assert not heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
