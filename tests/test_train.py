"""End-to-end tests of the training command, `python -m usedddp.train [overrides]`.

Every run is a real subprocess (Hydra, Lightning and the recipe as a user gets them), shrunk by
TINY to a few steps of a very small model, with its run directory placed by hydra.run.dir.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import usedddp.config  # CONFIG_DIR; registers the ${usedddp_demo_root:} resolver
from usedddp.models.build import build_module
from usedddp.assets import DEMO_ROOT

CONFIG_DIR = usedddp.config.CONFIG_DIR

# model=tiny and smaller, half-second batches of 2, 2 validation clips of at most 1 s, 2 steps
# per stage: a stage costs a second or two on a CPU. Keyed by override name so that a test can
# replace any of them (see `args`).
TINY = {
    "model": "tiny",
    "model.branch.dim": "32",
    "model.branch.depth": "1",
    "model.codec.encoder_dim": "4",
    "model.codec.decoder_dim": "32",
    "model.discriminator.fft_sizes": "[256]",
    "model.discriminator.channels": "4",
    "model.val_dnsmos": "false",  # DNSMOS costs seconds a clip; the reference-free test still scores it
    "data.segment_seconds": "0.5",
    "data.batch_size": "2",
    "data.num_workers": "0",
    "data.val_clips": "2",
    "data.val_max_seconds": "1.0",
    # per-stage budgets, as the experiments give them (a test's trainer.max_steps=N would win)
    "stage_max_steps": "{1:2,2:2,3:2}",
    "trainer.val_check_interval": "2",
    "trainer.enable_progress_bar": "false",
    "n_examples": "1",
}
SAMPLE_RATE = 16000  # model=tiny
CLIP_SAMPLES = SAMPLE_RATE  # data.val_max_seconds=1.0
TIMEOUT_S = 300


def args(*extra: str) -> list[str]:
    """TINY as overrides, with `extra` appended; an extra key replaces TINY's value for it."""
    keys = {item.split("=", 1)[0] for item in extra}
    return [f"{k}={v}" for k, v in TINY.items() if k not in keys] + list(extra)


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    # The default logger is wandb: keep test runs offline whatever the developer's environment.
    env.pop("WANDB_API_KEY", None)
    env["WANDB_MODE"] = "offline"
    return env


def _tail(text: str, n: int = 6000) -> str:
    return text[-n:]


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group started for `proc` (under DDP it holds the other ranks too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def train(run_dir: Path, overrides: list[str], *, expect_ok: bool = True, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `python -m usedddp.train hydra.run.dir=run_dir *overrides` next to run_dir."""
    cmd = [sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.Popen(cmd, cwd=run_dir.parent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        pytest.fail(f"training timed out after {timeout} s: {' '.join(cmd)}\n--- output tail ---\n{_tail(out)}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, None)
    if expect_ok:
        assert result.returncode == 0, f"exit code {result.returncode}: {' '.join(cmd)}\n--- output tail ---\n{_tail(out)}"
    return result


def read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    assert path.is_file(), f"no summary.json in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    return json.loads(path.read_text())


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics_rows(run_dir: Path, stage: int) -> list[dict]:
    path = run_dir / "logs" / f"stage{stage}" / "metrics.csv"
    assert path.is_file(), f"missing {path}"
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_log(run_dir: Path) -> str:
    path = run_dir / "train.log"
    assert path.is_file(), f"missing {path}"
    return path.read_text()


# -- fake audio -----------------------------------------------------------------------------


def _signal(seconds: float, rate: int, seed: int, channels: int = 1, speech: bool = True) -> np.ndarray:
    """A voiced-speech stand-in (amplitude-modulated harmonics) or a noise recording stand-in."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    if speech:
        f0 = rng.uniform(100, 220)
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 6))
        x *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    else:
        x = rng.standard_normal(t.size) + np.sin(2 * np.pi * rng.uniform(50, 400) * t)
    x = 0.3 * x / np.abs(x).max()
    if channels > 1:
        x = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def write_audio(path: Path, seconds: float, rate: int, seed: int, channels: int = 1, speech: bool = True,
                noise_level: float = 0.0) -> Path:
    x = _signal(seconds, rate, seed, channels, speech)
    if noise_level:
        x = x + noise_level * _signal(seconds, rate, seed + 1000, channels, speech=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1, 1), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def fake_vctk(tmp_path_factory) -> Path:
    """VCTK-DEMAND's standard layout, a handful of 48 kHz 16-bit files of about 1 s."""
    root = tmp_path_factory.mktemp("VCTK-DEMAND")
    for i, spk in enumerate(["p226", "p226", "p227", "p227"]):
        name = f"{spk}_{i + 1:03d}.wav"
        write_audio(root / "clean_trainset_28spk_wav" / name, 1.1, 48000, seed=i)
        # the noisy training set's clean parts are other utterances than the prior's
        write_audio(root / "noisy_trainset_28spk_wav" / name, 1.0, 48000, seed=100 + i, noise_level=0.3)
    for i, spk in enumerate(["p232", "p232", "p257"]):
        name = f"{spk}_{i + 1:03d}.wav"
        clean = _signal(1.0, 48000, seed=200 + i)
        noisy = clean + 0.3 * _signal(1.0, 48000, seed=300 + i, speech=False)
        for folder, x in (("clean_testset_wav", clean), ("noisy_testset_wav", noisy)):
            (root / folder).mkdir(exist_ok=True)
            sf.write(str(root / folder / name), np.clip(x, -1, 1), 48000, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def noisy_only_folder(tmp_path_factory) -> Path:
    """Real-noisy-recordings stand-in with no references: nested folders, mixed rates,
    channel counts and formats."""
    root = tmp_path_factory.mktemp("my_recordings")
    specs = [
        ("session1/take1.wav", 44100, 2),
        ("session1/take2.flac", 16000, 1),
        ("session1/mic_b/take3.wav", 16000, 1),
        ("session2/take4.wav", 44100, 2),
        ("session2/deep/er/take5.flac", 44100, 1),
        ("take6.wav", 16000, 1),
    ]
    for i, (rel, rate, channels) in enumerate(specs):
        write_audio(root / rel, 1.2, rate, seed=i, channels=channels, noise_level=0.4)
    (root / "notes.txt").write_text("not audio\n")
    return root


# -- 1. the default run: the embedded demo corpus, stages 1-2-3 -------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    return run_dir, train(run_dir, args())  # no experiment override: experiment=demo, data=demo


def test_default_run_writes_config_summary_and_logs(demo_run):
    run_dir, result = demo_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.run_name == "demo" and config.data.domain == "demo"
    assert "run directory:" in result.stdout and "wall time:" in result.stdout, _tail(result.stdout)

    summary = read_summary(run_dir)
    assert summary["run_dir"] == str(run_dir)
    assert set(summary["stages"]) == {"1", "2", "3"}
    assert summary["prior"]["name"] == "demo"
    assert summary["prior"]["dir"] == str(DEMO_ROOT / "clean_prior")
    assert isinstance(summary["prior"]["in_domain"], bool)
    assert summary["prior"]["in_domain"] == (summary["prior"]["domain"] == summary["data"]["domain"])
    assert summary["noise"]["dir"] == str(DEMO_ROOT / "noise_prior")
    assert summary["init_from"] is None and summary["resumed_from"] is None
    assert summary["skipped_nonfinite_steps"] == {} and summary["skipped_files"] == {}

    input_sisdr = set()
    for stage, record in summary["stages"].items():
        assert record["steps"] == 2, (stage, record)
        metrics = record["metrics"]
        for key in ("val/si_sdr", "val/input/si_sdr", "val/mix/si_sdr", "val/pesq_wb", "val/estoi"):
            assert key in metrics and np.isfinite(metrics[key]), (stage, key, metrics)
        input_sisdr.add(metrics["val/input/si_sdr"])
        # The noisy-input score is a property of the validation clips alone: the same every stage.
    assert len(input_sisdr) == 1, input_sisdr

    for stage, record in summary["stages"].items():  # the memory guard's estimate before each stage
        estimate = record["memory_estimate"]
        assert estimate["batch_size"] == 2 and 0 < estimate["per_item_gib"] < estimate["total_gib"], (stage, estimate)
    assert "memory check, training stage 3" in train_log(run_dir)

    for stage in (1, 2, 3):
        rows = metrics_rows(run_dir, stage)
        assert rows and "val/si_sdr" in rows[0], rows[:1]
        assert any(row["val/si_sdr"] for row in rows)


def test_default_run_checkpoints_every_stage(demo_run):
    run_dir, _ = demo_run
    summary = read_summary(run_dir)
    for stage in (1, 2, 3):
        ckpt_dir = run_dir / f"stage{stage}" / "checkpoints"
        last, best = ckpt_dir / "last.ckpt", ckpt_dir / "best.ckpt"
        assert last.is_file() and best.is_file(), sorted(p.name for p in ckpt_dir.iterdir())
        assert summary["stages"][str(stage)]["checkpoints"] == {"last": str(last), "best": str(best)}
        ckpt = load_ckpt(last)
        assert ckpt["global_step"] == 2
        assert ckpt["usedddp"]["stage"] == stage
        assert any(k.startswith("generator.") for k in ckpt["state_dict"])
        assert any(k.startswith("discriminators.noisy.") for k in ckpt["state_dict"])


def test_default_run_writes_stage3_examples(demo_run):
    run_dir, _ = demo_run
    out = run_dir / "examples" / "stage3"
    kinds = {}
    for kind in ("noisy", "clean", "noise", "reference"):
        files = sorted(out.glob(f"*_{kind}.wav"))
        assert len(files) == 1, (kind, sorted(p.name for p in out.iterdir()))  # n_examples=1
        kinds[kind] = files[0]
    stem = kinds["noisy"].name[: -len("_noisy.wav")]
    source = DEMO_ROOT / "noisy_testset" / f"{stem}.flac"  # the first validation clip
    assert source.is_file(), source
    expected = min(sf.info(str(source)).frames, CLIP_SAMPLES)
    for kind, path in kinds.items():
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
        assert rate == SAMPLE_RATE, (kind, rate)
        assert wav.shape == (expected, 1), (kind, wav.shape)
        assert np.isfinite(wav).all()
    summary = read_summary(run_dir)
    assert sorted(summary["stages"]["3"]["examples"]) == sorted(str(p) for p in kinds.values())


# -- 2. per-stage budgets -------------------------------------------------------------------


def test_stage_max_steps_bounds_each_stage(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, args("stage_max_steps={1:3,2:1,3:2}"))
    summary = read_summary(run_dir)
    expected = {1: 3, 2: 1, 3: 2}
    assert {int(k): v["steps"] for k, v in summary["stages"].items()} == expected
    for stage, steps in expected.items():
        ckpt = load_ckpt(run_dir / f"stage{stage}" / "checkpoints" / "last.ckpt")
        assert (ckpt["global_step"], ckpt["usedddp"]["stage"]) == (steps, stage)


# -- 3. experiment=vctk_unsup on a (fake) VCTK-DEMAND ---------------------------------------


def test_vctk_unsup_experiment_on_vctk_layout(tmp_path, fake_vctk):
    run_dir = tmp_path / "run"
    # The experiment selects model=dac16k and trainer=gpu: override back to tiny on a CPU. Its
    # stage_max_steps (100000 a stage) and TINY's (2) give way to the budget typed here.
    train(run_dir, args("experiment=vctk_unsup", f"data.root={fake_vctk}", "trainer=default", "trainer.max_steps=1"))
    summary = read_summary(run_dir)
    assert {k: v["steps"] for k, v in summary["stages"].items()} == {"1": 1, "2": 1, "3": 1}
    assert summary["data"] == {"domain": "vctk", "root": str(fake_vctk)}
    assert summary["prior"]["name"] == "vctk" and summary["prior"]["in_domain"] is True
    assert summary["prior"]["dir"] == str(fake_vctk / "clean_trainset_28spk_wav")
    assert summary["noise"]["name"] == "demo" and summary["noise"]["in_domain"] is False
    for stage in ("1", "2", "3"):
        record = summary["stages"][stage]
        assert record["steps"] == 1
        # VCTK-DEMAND's test set has references: validation scores the clean stream.
        assert np.isfinite(record["metrics"]["val/si_sdr"]) and np.isfinite(record["metrics"]["val/input/si_sdr"])
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.run_name == "vctk_unsup" and config.trainer.accelerator == "cpu"
    assert config.model.codec.encoder_dim == 4 and config.model.codec.decoder_dim == 32
    log = train_log(run_dir)
    assert "IN-DOMAIN" in log
    assert "noisy train (vctk): 4 files" in log, _tail(log)
    assert sorted(p.name for p in (run_dir / "examples" / "stage3").glob("*_reference.wav")) == ["p232_001_reference.wav"]


# -- 4. a folder of noisy recordings only: reference-free validation -------------------------


def test_noisy_only_folder_is_reference_free(tmp_path, noisy_only_folder):
    run_dir = tmp_path / "run"
    # data=folder's default of 4 loader workers, cut to 2 (the real multi-process loading path).
    train(run_dir, args("data=folder", f"data.root={noisy_only_folder}", "data.num_workers=2"))
    summary = read_summary(run_dir)
    assert summary["data"] == {"domain": str(noisy_only_folder), "root": str(noisy_only_folder)}
    assert summary["prior"]["in_domain"] is False
    assert summary["skipped_files"] == {}
    assert set(summary["stages"]) == {"1", "2", "3"}
    for stage, record in summary["stages"].items():
        metrics = record["metrics"]
        assert np.isfinite(metrics["val/mix/si_sdr"]), (stage, metrics)
        # DNSMOS is the reference-free quality signal: scored on the clean stream and the input.
        assert 1.0 <= metrics["val/dnsmos/ovrl"] <= 5.0 and 1.0 <= metrics["val/input/dnsmos/ovrl"] <= 5.0, (stage, metrics)
        assert not any(k in metrics for k in ("val/si_sdr", "val/input/si_sdr", "val/pesq_wb", "val/estoi")), (stage, metrics)
        best = Path(record["checkpoints"]["best"])
        assert best.is_file(), (stage, record["checkpoints"])
        states = load_ckpt(best)["callbacks"]
        monitors = {state.get("monitor") for state in states.values()}
        assert "val/dnsmos/ovrl" in monitors and "val/si_sdr" not in monitors, states.keys()
    log = train_log(run_dir)
    assert re.search(r"noisy train \(.*\): 4 files", log), _tail(log)  # 6 files, 2 held out for validation
    examples = sorted(p.name for p in (run_dir / "examples" / "stage3").iterdir())
    assert examples and not any(name.endswith("_reference.wav") for name in examples), examples


# -- 5. folder priors -------------------------------------------------------------------------


def test_prior_and_noise_folders_are_used(tmp_path):
    prior_dir, noise_dir = tmp_path / "speech", tmp_path / "noises"
    for i in range(3):
        write_audio(prior_dir / f"spk{i}" / f"utt{i}.wav", 1.0, 16000, seed=i)
        write_audio(noise_dir / f"noise{i}.flac", 1.5, 22050, seed=50 + i, speech=False)
    run_dir = tmp_path / "run"
    train(run_dir, args("prior=folder", f"prior.dir={prior_dir}", "noise=folder", f"noise.dir={noise_dir}", "stages=[1]"))
    summary = read_summary(run_dir)
    assert summary["prior"] == {"name": "folder", "dir": str(prior_dir), "domain": str(prior_dir), "in_domain": False}
    assert summary["noise"] == {"name": "folder", "dir": str(noise_dir), "domain": str(noise_dir), "in_domain": False}
    assert summary["stages"]["1"]["steps"] == 2
    log = train_log(run_dir)
    assert f"clean prior: 3 files (3.0 s) from {prior_dir}" in log, _tail(log)
    assert f"noise prior: 3 files (4.5 s) from {noise_dir}" in log, _tail(log)
    assert "IN-DOMAIN" not in log


# -- 6. unusable prior folders fail early, naming the folder ---------------------------------


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_unusable_prior_folder_fails_naming_it(tmp_path, kind):
    prior_dir = tmp_path / "no_such_prior" if kind == "missing" else tmp_path / "empty_prior"
    if kind == "empty":
        (prior_dir / "sub").mkdir(parents=True)
        (prior_dir / "README.txt").write_text("no audio here\n")
    run_dir = tmp_path / "run"
    result = train(run_dir, args("prior=folder", f"prior.dir={prior_dir}", "stages=[1]"), expect_ok=False)
    assert result.returncode != 0, _tail(result.stdout)
    # The override list is echoed too: look for the error itself.
    problem = "folder does not exist" if kind == "missing" else "no audio files found"
    assert re.search(rf"{re.escape(str(prior_dir))}: {problem}", result.stdout), _tail(result.stdout)
    assert not (run_dir / "summary.json").exists()


# -- 7. init_from ------------------------------------------------------------------------------


def test_init_from_a_run_directory(tmp_path):
    first = tmp_path / "stage1_run"
    train(first, args("stages=[1]"))
    source = first / "stage1" / "checkpoints" / "last.ckpt"

    second = tmp_path / "stage3_run"
    train(second, args("stages=[3]", f"init_from={first}"))
    summary = read_summary(second)
    assert summary["init_from"] == str(first) and summary["resumed_from"] is None
    assert set(summary["stages"]) == {"3"}
    # Weights only: the optimiser and the step count start afresh (unlike ckpt_path).
    assert summary["stages"]["3"]["steps"] == 2
    assert load_ckpt(second / "stage3" / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert f"init_from={source}: 0 tensors missing, 0 unexpected" in train_log(second)

    # A different architecture: the tensors that do not match by name are reported.
    third = tmp_path / "deeper_run"
    train(third, args("stages=[3]", f"init_from={source}", "model.branch.depth=2", "stage_max_steps={3:1}"))
    match = re.search(r"init_from=\S+: (\d+) tensors missing, (\d+) unexpected", train_log(third))
    assert match, _tail(train_log(third))
    assert int(match.group(1)) > 0 and int(match.group(2)) == 0, match.group(0)


# -- 8. resuming after a hard kill -------------------------------------------------------------


def test_resume_after_sigkill(tmp_path):
    steps = 30
    common = [f"trainer.max_steps={steps}", "stages=[1]", "callbacks.last.every_n_train_steps=2",
              "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1"]
    first = tmp_path / "killed"
    first.mkdir()
    log_path = tmp_path / "killed.out"
    cmd = [sys.executable, "-m", "usedddp.train", f"hydra.run.dir={first}", *args(*common)]
    copy = tmp_path / "interrupted.ckpt"
    k = None
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + TIMEOUT_S
            last = first / "stage1" / "checkpoints" / "last.ckpt"
            while time.time() < deadline and proc.poll() is None:
                if last.is_file():
                    try:
                        shutil.copyfile(last, copy)
                        step = load_ckpt(copy)["global_step"]
                    except Exception:  # caught mid-write: try again
                        step = -1
                    if step >= 2:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait(timeout=30)
                        k = step
                        break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()
    output = log_path.read_text()
    assert k is not None, (f"the run {'finished' if proc.returncode == 0 else 'ended'} (rc {proc.returncode}) before a "
                           f"checkpoint could be caught; make it longer\n{_tail(output)}")
    assert proc.returncode == -signal.SIGKILL
    assert k < steps, k
    assert not (first / "summary.json").exists()  # it really was interrupted

    second = tmp_path / "resumed"
    result = train(second, args(*common, f"ckpt_path={copy}"))
    summary = read_summary(second)
    assert summary["resumed_from"] == str(copy)
    assert summary["stages"]["1"]["steps"] == steps
    final = load_ckpt(second / "stage1" / "checkpoints" / "last.ckpt")
    assert final["global_step"] == steps and final["usedddp"]["stage"] == 1
    log = train_log(second)
    assert f"resuming stage 1 from {copy}" in log, _tail(log)
    assert "Restored all states from the checkpoint" in result.stdout or "Restoring states from the checkpoint" in result.stdout, _tail(result.stdout)
    # Lightning restored step k: the resumed run logs and checkpoints only steps after it.
    train_steps = [int(row["step"]) for row in metrics_rows(second, 1) if row.get("train/g/total")]
    assert train_steps, metrics_rows(second, 1)[:3]
    assert min(train_steps) >= k, (k, train_steps[:5])
    assert max(train_steps) == steps - 1, (k, train_steps[-5:])
    assert len(train_steps) == steps - k, (k, train_steps)
    numbered = [int(m.group(1)) for p in (second / "stage1" / "checkpoints").glob("step_*.ckpt")
                if (m := re.fullmatch(r"step_(\d{6})\.ckpt", p.name))]
    assert numbered and min(numbered) > k, (k, numbered)


# -- 9. DDP on two CPU processes -------------------------------------------------------------


def test_ddp_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "run"
    result = train(run_dir, args("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                                 "trainer.strategy=ddp_find_unused_parameters_true", "stages=[1,3]",
                                 "stage_max_steps={1:2,3:2}"))
    assert "Starting with 2 processes" in result.stdout or "MEMBER: 2/2" in result.stdout, _tail(result.stdout)
    summary = read_summary(run_dir)
    assert {k: v["steps"] for k, v in summary["stages"].items()} == {"1": 2, "3": 2}
    for stage in ("1", "3"):
        # Written by rank 0, the rank that writes the examples (a rank-1 summary has none).
        assert summary["stages"][stage].get("examples"), summary["stages"][stage]
        assert np.isfinite(summary["stages"][stage]["metrics"]["val/si_sdr"])
        assert load_ckpt(run_dir / f"stage{stage}" / "checkpoints" / "last.ckpt")["global_step"] == 2
    # Lightning re-launched rank 1 into the same run directory (its own log, no second config).
    assert (run_dir / "train_ddp_process_1.log").is_file(), sorted(p.name for p in run_dir.iterdir())
    assert [p.name for p in run_dir.parent.iterdir()] == ["run"]
    assert result.stdout.count("run directory:") == 1, _tail(result.stdout)


# -- 9b. the memory guard ----------------------------------------------------------------------


def test_memory_guard_refuses_a_stage_that_does_not_fit(tmp_path):
    """A step estimated over the machine's memory (faked by memory_guard.available_gb) stops
    before the stage with exit 2 and the overrides that help, not with a kernel kill; the
    stages before it ran."""
    run_dir = tmp_path / "run"
    # Room for the process as it is, not for the stage-3 step of a batch of 64.
    result = train(run_dir, args("stages=[2,3]", "stage_max_steps={2:1,3:1}", "data.batch_size=64",
                                 "memory_guard.available_gb=1.6"), expect_ok=False)
    assert result.returncode == 2, _tail(result.stdout)
    error = result.stdout[result.stdout.index("error: "):]
    assert "training stage 2: one step of 64 x 0.5 s is estimated to need" in error, _tail(result.stdout)
    assert "1.6 GiB available" in error and "data.segment_seconds" in error and "memory_guard.enabled=false" in error
    assert "Traceback" not in result.stdout
    # Off, the same command gets past the check (one step of stage 2 at batch 64 fits this machine).
    ok = train(tmp_path / "off", args("stages=[2]", "stage_max_steps={2:1}", "data.batch_size=64",
                                      "memory_guard.available_gb=1.6", "memory_guard.enabled=false"))
    assert read_summary(tmp_path / "off")["stages"]["2"]["memory_estimate"] is None, _tail(ok.stdout)


# -- 10. every experiment composes ------------------------------------------------------------

# The overrides each experiment needs before it can run (the placeholder is never read here).
# A new configs/experiment/*.yaml must be added: its test fails until it is.
EXPERIMENT_OVERRIDES = {
    "demo": [],
    "vctk_unsup": ["data.root=/data/VCTK-DEMAND"],
    "codec_ablation": ["dac_weights=/models/weights_16khz.pth"],  # read by model/codec=dac16k_release only
    "udiffse_prior": [],
    "rvae_prior": [],
}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_experiments_are_found():
    assert "demo" in EXPERIMENTS and "vctk_unsup" in EXPERIMENTS, EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    assert name in EXPERIMENT_OVERRIDES, f"configs/experiment/{name}.yaml has no entry in EXPERIMENT_OVERRIDES (tests/test_train.py)"
    required = EXPERIMENT_OVERRIDES[name]
    # USE-DDP experiments are composed with the tiny model; a learned prior's experiment keeps its own.
    model = [] if name in ("udiffse_prior", "rvae_prior") else ["model=tiny"]
    cfg = _compose([f"experiment={name}", *model, f"paths.output_dir={tmp_path}", *required])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["run_name"]
    stages = [int(s) for s in cfg.stages]
    assert stages and set(stages) <= {1, 2, 3}, stages
    for key, budget in (cfg.stage_max_steps or {}).items():
        assert str(key) in ("1", "2", "3", "prior") and int(budget) > 0, (key, budget)
    for node in (cfg.prior, cfg.noise):
        assert {"name", "dir", "domain"} <= set(node), node
    datamodule = instantiate(cfg.data)
    assert datamodule.sample_rate == cfg.model.sample_rate
    module = build_module(cfg.model)
    assert module.sample_rate == cfg.model.sample_rate
    for cb_cfg in cfg.callbacks.values():
        instantiate(cb_cfg, **({"dirpath": str(tmp_path / "ckpt")} if cb_cfg._target_.endswith("ModelCheckpoint") else {}))
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if required:  # the overrides really are required
        bare = _compose([f"experiment={name}", *model, f"paths.output_dir={tmp_path}"])
        with pytest.raises(Exception, match="Missing mandatory value"):
            OmegaConf.to_container(bare, resolve=True, throw_on_missing=True)


# -- 11. the codec choices and the codec ablation ----------------------------------------------

CODECS = sorted(p.stem for p in (CONFIG_DIR / "model" / "codec").glob("*.yaml"))
# TINY without its model choice and DAC-only codec sizes: the branches, discriminators and data
# shrunk the same way for every codec.
SHRUNK = [f"{k}={v}" for k, v in TINY.items() if k != "model" and not k.startswith("model.codec.")]


@pytest.mark.parametrize("codec", CODECS)
def test_codec_choice_builds_a_generator(codec, tmp_path):
    # Every configs/model/codec/*.yaml composes over the default model and builds a generator whose
    # streams have the input's length (the 74 M-parameter DAC 16 kHz codec included, random weights).
    # dac16k_release reads the top-level dac_weights that experiment=codec_ablation defines.
    extra = ["+dac_weights=null"] if codec == "dac16k_release" else []
    cfg = _compose([f"model/codec={codec}", *extra, f"paths.output_dir={tmp_path}", *[o for o in SHRUNK if o.startswith("model.")]])
    if codec == "dac16k_release":
        assert cfg.model.codec.weights is None
    module = build_module(cfg.model)
    assert module.generator.codec.latent_dim > 0
    wav = 0.05 * torch.randn(2, 1, 4321)
    with torch.no_grad():
        out = module.generator(wav)
    assert out.clean.shape == out.noise.shape == wav.shape
    assert torch.isfinite(out.reconstruction).all()


def test_default_model_is_the_stft_codec_and_dac_tiny_is_one_override_away():
    default, dac = _compose([]), _compose(["model/codec=dac_tiny"])
    assert default.model.codec._target_.endswith("STFTCodec")
    assert dac.model.codec._target_.endswith("DACCodec") and dac.model.codec.encoder_dim == 8
    # Only the codec differs: the same branches, discriminators, losses and optimiser.
    assert {k: v for k, v in default.model.items() if k != "codec"} == {k: v for k, v in dac.model.items() if k != "codec"}


def test_codec_ablation_multirun(tmp_path):
    # The README's codec ablation, one Hydra multirun, shrunk to a step per stage: one run
    # directory per codec, each with its own summary naming its codec.
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "usedddp.train", "-m", "experiment=codec_ablation", "model/codec=stft,dac_tiny",
           f"hydra.sweep.dir={sweep}", "logger=csv", *SHRUNK, "stage_max_steps={1:1,2:1,3:1}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=2 * TIMEOUT_S)
    assert proc.returncode == 0, f"exit code {proc.returncode}: {' '.join(cmd)}\n{_tail(proc.stdout)}"
    summaries = sorted(sweep.rglob("summary.json"))
    assert len(summaries) == 2, (summaries, _tail(proc.stdout))
    codecs = {}
    for path in summaries:
        summary = json.loads(path.read_text())
        codecs[summary["codec"]["choice"]] = path.parent
        assert set(summary["stages"]) == {"1", "2", "3"}
        for record in summary["stages"].values():
            assert record["steps"] == 1
            metrics = record["metrics"]
            assert all(np.isfinite(metrics[k]) for k in ("val/si_sdr", "val/input/si_sdr", "val/estoi", "val/input/estoi",
                                                         "val/pesq_wb", "val/input/pesq_wb")), metrics
    assert set(codecs) == {"stft", "dac_tiny"}, codecs
    # One flat directory per job, named by its codec (not nested at the "/" of model/codec=...).
    assert {path.relative_to(sweep).as_posix() for path in codecs.values()} == {"0_codec=stft", "1_codec=dac_tiny"}
    assert OmegaConf.load(codecs["dac_tiny"] / ".hydra" / "config.yaml").run_name == "codec_ablation"
