"""`python -m usedddp.compare`: every method on one test set, beside the training-free baselines.

The baselines and the registry are checked in-process; the command runs in subprocesses on two
1 s demo pairs with an untrained tiny USE-DDP run (built without training, as test_enhance does)
and the tiny UDiffSE prior of test_udiffse (3 steps), shrunk to a few seconds per invocation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_enhance import _make_run  # an untrained tiny USE-DDP run directory, built without training
from test_train import _env, _tail
from test_udiffse import one_second_pairs, prior_run  # noqa: F401  (prior_run: the module fixture, the tiny UDiffSE prior run)
from usedddp import metrics
from usedddp.assets import DEMO_ROOT
from usedddp.methods import registry
from usedddp.methods.baselines import ORACLE_WIENER_LABEL, NoiseReduceEnhancer, oracle_wiener

TIMEOUT_S = 600
UDIFFSE_CHEAP = "variants.udiffse=[{sampler:em,reverse_steps:2,em_iterations:2,n_samples:2},{sampler:fast,reverse_steps:2,n_samples:2}]"


# -- the baselines and the registry, in-process ----------------------------------------------------


def _mixture(seconds: float = 2.0, sr: int = 16000, snr_db: float = 0.0, seed: int = 0):
    """A speech-like clean signal (harmonics of a gliding pitch, syllable-rate envelope) and a
    mixture with white noise at `snr_db`."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    clean = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    noise = rng.standard_normal(t.size)
    noise *= np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return torch.tensor(clean, dtype=torch.float32), torch.tensor(clean + noise, dtype=torch.float32)


def test_oracle_wiener_splits_the_input_exactly_and_is_an_upper_bound():
    clean, noisy = _mixture()
    speech, noise = oracle_wiener(noisy, clean)
    assert speech.shape == noise.shape == noisy.shape
    torch.testing.assert_close(speech + noise, noisy, rtol=0, atol=1e-5)
    before = metrics.si_sdr(noisy.double().numpy(), clean.double().numpy())
    after = metrics.si_sdr(speech.double().numpy(), clean.double().numpy())
    assert abs(before) < 0.5 and after > before + 10, (before, after)
    # Batched (1, 1, T) input keeps its shape; the clean reference alone comes back as itself.
    speech, noise = oracle_wiener(clean[None, None], clean[None, None])
    assert speech.shape == (1, 1, clean.numel())
    torch.testing.assert_close(speech[0, 0], clean, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        oracle_wiener(noisy, clean[:-1])


def test_noisereduce_enhancer_keeps_length_and_rate_and_is_deterministic():
    clean, noisy = _mixture(seconds=1.3)
    enhancer = NoiseReduceEnhancer()
    assert (enhancer.sample_rate, enhancer.hop_length, enhancer.nfe) == (16000, 1, 0)
    x = noisy[None, None]
    out = enhancer(x)
    again = NoiseReduceEnhancer()(x)
    assert out["clean"].shape == x.shape and out["clean"].dtype == torch.float32
    torch.testing.assert_close(out["clean"], again["clean"], rtol=0, atol=0)
    torch.testing.assert_close(out["clean"] + out["noise"], x)
    assert enhancer(x, ("clean",))["noise"] is None and enhancer.nfe == 0
    assert not enhancer.settings["stationary"] and enhancer.settings["noisereduce"]


def test_registry_variants_and_selectors():
    assert registry.scoring_variants("use_ddp") == [{}]
    assert registry.scoring_variants("udiffse") == [{"score": "gaussian", "sampler": "em"}, {"sampler": "em"}, {"sampler": "fast"}]
    assert registry.comparison_variants("udiffse") == [{"sampler": "em"}, {"sampler": "fast"}]
    assert [v["estep"] for v in registry.scoring_variants("rvae")] == ["vem", "mcem", "ldem", "mala"]
    assert registry.selector_keys("rvae") == ("estep",) and registry.describe("rvae").startswith("RVAE-NMF (")
    # No selector given: every variant, the other options applied to each; a selector: as given.
    assert registry.expand_variants("udiffse", {"n_samples": 2})[1] == {"n_samples": 2, "sampler": "em"}
    assert registry.expand_variants("rvae", {"estep": "vem", "em_iterations": 3}) == [{"estep": "vem", "em_iterations": 3}]
    given = {}
    assert registry.expand_variants("use_ddp", given)[0] is given
    assert registry.scoring_variants("unknown") == [{}] and registry.describe("unknown") == "unknown"


def test_import_graph():
    from test_cli import SRC, _importers

    assert _importers([SRC / "compare.py", SRC / "methods" / "baselines.py"], "usedddp.train") == []
    # The registry is read before any model is loaded, and by torch-free tables.
    assert _importers([SRC / "methods" / "registry.py"], "torch") == []
    assert _importers([SRC / "methods" / "registry.py"], "usedddp") == []


def test_a_folder_of_runs_stands_for_its_runs(tmp_path):
    from usedddp.compare import run_paths

    for name, config in (("10_b", "model: {}\n"), ("2_a", "model: {}\n"), ("hydra_of_compare", "runs: x\n")):
        (tmp_path / "sweep" / name / ".hydra").mkdir(parents=True)
        (tmp_path / "sweep" / name / ".hydra" / "config.yaml").write_text(config)
    assert [p.name for p in run_paths([str(tmp_path / "sweep")])] == ["2_a", "10_b"]  # job order, runs only
    assert run_paths([str(tmp_path / "sweep" / "2_a"), str(tmp_path / "nowhere")]) == [tmp_path / "sweep" / "2_a",
                                                                                        tmp_path / "nowhere"]


# -- the command -------------------------------------------------------------------------------------


def _compare(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "usedddp.compare", f"hydra.run.dir={cwd / 'hydra'}", "dnsmos=false", "jobs=1", *overrides]
    return subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Two demo test pairs cut to 1 s: noisy/, clean/."""
    root = tmp_path_factory.mktemp("compare_testset")
    one_second_pairs(root)
    return root


@pytest.fixture(scope="module")
def use_ddp_runs(tmp_path_factory) -> list[Path]:
    """Two untrained tiny USE-DDP runs (same run_name, so told apart by folder name)."""
    root = tmp_path_factory.mktemp("compare_runs")
    return [_make_run(root / name) for name in ("ddp_a", "ddp_b")]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, test_set, use_ddp_runs, prior_run):  # noqa: F811
    """One comparison: a USE-DDP run and the UDiffSE prior (em and fast, cheap), both baselines."""
    work = tmp_path_factory.mktemp("compare")
    args = [f"runs=[{use_ddp_runs[0]},{prior_run}]", f"data.noisy_dir={test_set / 'noisy'}",
            f"data.clean_dir={test_set / 'clean'}", UDIFFSE_CHEAP]
    result = _compare(work, *args, f"output={work / 'out'}")
    assert result.returncode == 0, _tail(result.stdout)
    return work, args, result


def _summary(out: Path) -> dict:
    return json.loads((out / "compare.json").read_text())


def _overall(summary: dict) -> dict[str, dict]:
    return {row["system"]: row for row in summary["results"]["overall"]}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compare_scores_every_system_on_one_test_set(compared):
    work, _, result = compared
    out = work / "out"
    for name in ("compare.md", "compare.json", "per_file.csv", "quality_cost.png"):
        assert (out / name).is_file(), name
    assert (out / "quality_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = _summary(out)
    systems = [row["system"] for row in summary["results"]["overall"]]
    assert systems == ["noisy", "noisereduce", ORACLE_WIENER_LABEL, "USE-DDP stage 3", "UDiffSE em", "UDiffSE fast"], systems
    overall = _overall(summary)
    assert all(row["files"] == 2 for row in overall.values())
    sdr = {s: overall[s]["si_sdr"]["mean"] for s in systems}
    assert max(sdr, key=sdr.get) == ORACLE_WIENER_LABEL, sdr
    assert "pesq_nb_raw" in summary["results"]["metrics"]

    cost = summary["provenance"]["cost"]
    assert list(cost) == systems[1:] and all(c["rtf"] > 0 for c in cost.values())
    assert cost["noisereduce"]["nfe"] == cost[ORACLE_WIENER_LABEL]["nfe"] == 0
    assert cost["USE-DDP stage 3"]["nfe"] == 2  # one generator pass per (1 s, one-chunk) file
    assert cost["UDiffSE em"]["nfe"] == 2 * (2 * 2 * 2) and cost["UDiffSE fast"]["nfe"] == 2 * (2 * 2)

    meta = summary["provenance"]
    assert meta["failed"] == [] and meta["test_set"]["pairs"] == 2
    assert "pypesq" in meta["metric_definitions"]["pesq_nb_raw"] and meta["versions"]["noisereduce"] != "not installed"
    by_label = {s["label"]: s for s in meta["systems"]}
    assert by_label["UDiffSE fast"]["variant"] == {"sampler": "fast", "reverse_steps": 2, "n_samples": 2}
    runs = {r["method"]: r for r in meta["runs"]}
    assert runs["USE-DDP"]["noise_prior"]["name"] == "demo" and runs["UDiffSE"]["noise_prior"] is None
    assert runs["UDiffSE"]["training_data"] == "the clean prior only" and runs["UDiffSE"]["clean_prior"]["name"] == "demo"

    # Each system's folder has its manifest: what its outputs depend on.
    manifest = json.loads((out / "enhanced" / "udiffse_em" / ".usedddp_system.json").read_text())
    assert manifest["complete"] and manifest["key"]["variant"]["sampler"] == "em" and len(manifest["files"]) == 2
    assert manifest["checkpoint"]["size"] > 0 and manifest["cost"]["nfe"] == 16

    markdown = (out / "compare.md").read_text()
    for heading in ("## Overall", "## Cost", "## Training data and priors", "## Systems"):
        assert heading in markdown, heading
    assert markdown.index("| noisy |") < markdown.index("| noisereduce |") < markdown.index("| USE-DDP stage 3 |")
    rows = (out / "per_file.csv").read_text().splitlines()
    assert rows[0].startswith("file,system,pesq_wb") and len(rows) == 1 + 2 * len(systems)
    assert "| noisy | 2 |" in result.stdout and "NFE/s" in result.stdout  # the tables are printed


def test_the_same_command_again_reuses_every_system(compared):
    work, args, _ = compared
    out = work / "out"
    before, numbers = _mtimes(out / "enhanced"), _summary(out)["results"]
    result = _compare(work, *args, f"output={out}")
    assert result.returncode == 0, _tail(result.stdout)
    assert result.stdout.count("reusing ") >= 5 and "(5 reused, 0 failures)" in result.stdout, _tail(result.stdout)
    assert _mtimes(out / "enhanced") == before  # nothing enhanced again
    again = _summary(out)["results"]
    assert [r["system"] for r in again["overall"]] == [r["system"] for r in numbers["overall"]]
    for old, new in zip(numbers["overall"], again["overall"]):
        for metric in numbers["metrics"]:
            assert new[metric]["mean"] == pytest.approx(old[metric]["mean"], rel=1e-9, abs=1e-12), (old["system"], metric)


def test_a_run_added_later_is_the_only_one_enhanced_and_same_method_runs_get_distinct_labels(compared, use_ddp_runs,
                                                                                               prior_run, test_set, tmp_path):  # noqa: F811
    work, _, _ = compared
    out = tmp_path / "out"
    shutil.copytree(work / "out", out)  # copy2: modification times kept; the manifests name no output path
    before = _mtimes(out / "enhanced")
    result = _compare(tmp_path, f"runs=[{use_ddp_runs[0]},{use_ddp_runs[1]},{prior_run}]", f"output={out}",
                      f"data.noisy_dir={test_set / 'noisy'}", f"data.clean_dir={test_set / 'clean'}", UDIFFSE_CHEAP)
    assert result.returncode == 0, _tail(result.stdout)
    assert "(5 reused, 0 failures)" in result.stdout, _tail(result.stdout)
    after = _mtimes(out / "enhanced")
    assert {k: after[k] for k in before} == before
    systems = [row["system"] for row in _summary(out)["results"]["overall"]]
    assert systems[3:5] == ["ddp_a: USE-DDP stage 3", "ddp_b: USE-DDP stage 3"], systems
    assert len(systems) == len(set(systems)) == 7


def test_failed_runs_are_reported_and_the_others_scored(compared, use_ddp_runs, prior_run, test_set, tmp_path):  # noqa: F811
    work, _, _ = compared
    out = tmp_path / "out"
    shutil.copytree(work / "out", out)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint" * 64)
    missing = tmp_path / "no_such_run"
    result = _compare(tmp_path, f"runs=[{use_ddp_runs[0]},{missing},{broken},{prior_run}]", f"output={out}",
                      f"data.noisy_dir={test_set / 'noisy'}", f"data.clean_dir={test_set / 'clean'}", UDIFFSE_CHEAP)
    assert result.returncode == 1, _tail(result.stdout)
    failures = [line for line in result.stdout.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 2 and str(missing) in failures[0] and str(broken) in failures[1], failures
    summary = _summary(out)
    assert [row["system"] for row in summary["results"]["overall"]] == [
        "noisy", "noisereduce", ORACLE_WIENER_LABEL, "USE-DDP stage 3", "UDiffSE em", "UDiffSE fast"]
    assert len(summary["provenance"]["failed"]) == 2 and "## Failures" in (out / "compare.md").read_text()


def test_runs_with_different_held_out_sets_are_refused(prior_run, test_set, tmp_path):  # noqa: F811
    # A copy of the prior's checkpoint whose stored config holds out another test set.
    state = torch.load(prior_run / "prior" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state["usedddp"]["config"]["data"]["val_noisy_dir"] = str(test_set / "noisy")
    state["usedddp"]["config"]["data"]["val_clean_dir"] = str(test_set / "clean")
    other = tmp_path / "other" / "last.ckpt"
    other.parent.mkdir()
    torch.save(state, other)
    result = _compare(tmp_path, f"runs=[{prior_run},{other}]", f"output={tmp_path / 'out'}")
    assert result.returncode == 2, _tail(result.stdout)
    message = next(line for line in result.stdout.splitlines() if line.startswith("error: "))
    assert "held-out test sets differ" in message and str(prior_run) in message and str(other) in message
    assert str(DEMO_ROOT / "noisy_testset") in message and str(test_set / "noisy") in message, message
    assert not (tmp_path / "out").exists()


def test_an_output_with_a_comparison_on_another_test_set_is_refused(compared, prior_run, tmp_path):  # noqa: F811
    work, _, _ = compared
    out = work / "out"
    before = (out / "compare.json").read_bytes()
    other = tmp_path / "noisy"
    other.mkdir()
    shutil.copy(next((work / "out" / "enhanced" / "noisereduce").glob("*.flac")), other / "x.flac")
    result = _compare(tmp_path, f"runs=[{prior_run}]", f"output={out}", f"data.noisy_dir={other}")
    assert result.returncode == 2, _tail(result.stdout)
    assert "is a comparison on another test set" in result.stdout and "overwrite=true" in result.stdout, _tail(result.stdout)
    assert (out / "compare.json").read_bytes() == before
