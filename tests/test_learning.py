"""A learning proof that can fail: a short, step-budgeted run of the default configuration
(`model=tiny_stft`: the fixed STFT codec, model/codec=stft) must make the clean stream better
than the noisy input on the held-out demo clips.

It guards against changes that silently break learning (a loss that stops reaching the mask, a
wrong sign, a broken STFT inversion, a data pipeline that feeds the wrong target): the pipeline
tests elsewhere run two steps and only check that numbers are finite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The default run's model and data, stage 1 only (supervised on simulated mixtures) with the default
# run's stage-1 budget, a step budget, not a time limit: the result does not depend on how fast or
# how loaded the machine is.
STEPS = 100
OVERRIDES = [
    "stages=[1]",
    f"stage_max_steps={{1:{STEPS}}}",
    f"trainer.val_check_interval={STEPS}",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "model.val_dnsmos=false",
    "n_examples=0",
]
# Held-out SI-SDR of the clean stream minus the noisy input's (8 demo clips, input 8.98 dB),
# measured on 2 CPU cores after these 100 steps: +1.63 dB at the default seed (1234; the default
# run's stage 1 is this run), +1.70, +1.38 and +1.77 dB at seeds 1, 2 and 3 (after 50 steps:
# +1.26, +0.84, +0.98, +1.49, too close to a threshold to leave headroom). Threshold +0.8 dB:
# 0.58 dB below the worst seed. A model that does not learn scores +0 dB (both streams start at
# x/2, whose SI-SDR is the input's; with the learning rate at 0 this run scores +0.00 dB).
MARGIN_MEASURED_DB = 1.63
MIN_MARGIN_DB = 0.8
TIMEOUT_S = 1800  # a step budget: the timeout only catches a hung run (a shared CPU can be 5x slower)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("learning") / "run"
    cmd = [sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *OVERRIDES]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"exit code {result.returncode}: {' '.join(cmd)}\n{result.stdout[-6000:]}"
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_short_stft_run_beats_the_noisy_input(short_run):
    record = short_run[1]["stages"]["1"]
    assert record["steps"] == STEPS
    metrics = record["metrics"]
    margin = metrics["val/si_sdr"] - metrics["val/input/si_sdr"]
    assert margin >= MIN_MARGIN_DB, (
        f"after {STEPS} steps the clean stream scores {metrics['val/si_sdr']:.2f} dB SI-SDR against the noisy input's "
        f"{metrics['val/input/si_sdr']:.2f} dB: {margin:+.2f} dB, below the {MIN_MARGIN_DB:+.2f} dB this run reached "
        f"with headroom ({MARGIN_MEASURED_DB:+.2f} dB measured); learning is broken")


def test_the_trained_run_enhances_through_the_enhance_path(short_run):
    # The enhance command rebuilds the STFT model from the run's config and loads its weights
    # strictly; chunked enhancement (1 s chunks, 0.25 s overlap) agrees with the whole clip.
    from usedddp.audio import load_audio
    from usedddp.assets import DEMO_ROOT
    from usedddp.enhance import enhance_waveform, load_enhancer
    from usedddp.metrics import si_sdr

    generator, _ = load_enhancer(short_run[0], "cpu")
    assert type(generator.codec).__name__ == "STFTCodec"
    name = sorted((DEMO_ROOT / "noisy_testset").glob("*.flac"))[0].name
    noisy, clean = (load_audio(DEMO_ROOT / folder / name, 16000) for folder in ("noisy_testset", "clean_testset"))
    gain = 10 ** (-25 / 20) / noisy.pow(2).mean().sqrt()
    whole, _ = enhance_waveform(generator, noisy * gain)
    chunked, _ = enhance_waveform(generator, noisy * gain, 16000, 4000)
    assert whole.shape == noisy.shape
    assert si_sdr(chunked, whole) > 25.0
    # Trained: no longer the initial x/2, whose SI-SDR is the input's.
    assert abs(si_sdr(whole, clean) - si_sdr(noisy, clean)) > 0.1
