"""Learning proofs that can fail, on the default configuration (`model=tiny_stft`, the embedded
corpus, its wideband clean prior) with the default run's step budgets:

- stages 1-2 (supervised on mixtures simulated from the priors) must remove noise where there is
  much of it: on the held-out test pairs at 0 dB SNR the clean stream's SI-SDR must rise well
  above the noisy input's;
- stage 3 (real noisy recordings, no clean target), started from that stage-2 checkpoint, must
  keep what stages 1-2 learned: held-out SI-SDR and ESTOI may not fall by more than a margin.

They guard against changes that silently break learning (a loss that stops reaching the mask, a
wrong sign, a data pipeline that feeds the wrong target) and against a stage 3 that gives back
what the supervised stages learned, which is the method's failure mode (README, stage 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import usedddp.train

COMMON = ["trainer.enable_progress_bar=false", "logger=csv", "model.val_dnsmos=false", "n_examples=0", "audit.enabled=false"]
TIMEOUT_S = 2400  # step budgets: the timeout only catches a hung run (a shared CPU can be 5x slower)


def default_budgets() -> dict[int, int]:
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train")
    return {int(k): int(v) for k, v in cfg.stage_max_steps.items()}


def train(run_dir: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *COMMON, *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"exit code {result.returncode}: {' '.join(cmd)}\n{result.stdout[-6000:]}"
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory) -> tuple[Path, dict]:
    budgets = default_budgets()
    run_dir = tmp_path_factory.mktemp("learning") / "stages12"
    return run_dir, train(run_dir, ["stages=[1,2]", f"trainer.val_check_interval={budgets[1]}"])


@pytest.fixture(scope="module")
def stage3_run(stage2_run, tmp_path_factory) -> tuple[Path, dict]:
    budgets = default_budgets()
    run_dir = tmp_path_factory.mktemp("learning") / "stage3"
    init = stage2_run[0] / "stage2" / "checkpoints" / "last.ckpt"
    return run_dir, train(run_dir, ["stages=[3]", f"init_from={init}", f"trainer.val_check_interval={budgets[3]}"])


def enhanced_pairs(generator, snr_db: int) -> list[tuple[float, float]]:
    """(input SI-SDR, clean-stream SI-SDR) of the held-out demo pairs at `snr_db`, full length,
    through the enhance command's path."""
    import csv

    import torch

    from usedddp.assets import DEMO_ROOT
    from usedddp.audio import load_audio
    from usedddp.inference import enhance_waveform
    from usedddp.metrics import si_sdr

    rows = list(csv.DictReader(open(DEMO_ROOT / "testset_conditions.csv")))
    out = []
    for row in rows:
        if int(row["snr_db"]) != snr_db:
            continue
        noisy, clean = (load_audio(DEMO_ROOT / folder / row["file"], 16000) for folder in ("noisy_testset", "clean_testset"))
        gain = 10 ** (-25 / 20) / noisy.pow(2).mean().sqrt()
        with torch.no_grad():
            enhanced, _ = enhance_waveform(generator, noisy * gain, noise=False)
        out.append((si_sdr(noisy, clean), si_sdr(enhanced, clean)))
    return out


# Held-out SI-SDR gain of the clean stream at 0 dB SNR (the 4 test pairs at 0 dB, full length)
# after the default stages 1-2 (100 + 50 steps), by `evaluate` of whole default runs: +4.38, +3.93
# and +4.18 dB at seeds 1234, 1 and 2 (SI-SDR 0.11 -> 4.04..4.49 dB); over all 16 pairs 7.80 ->
# 8.99..9.23 dB. Before the pitch-shifted prior and the gate floor it was +4.29 dB at 0 dB but
# broke even over the 16 pairs (README, the clean prior).
# Threshold +1.5 dB. A model that does not learn scores +0 dB: both streams start at x/2.
MEASURED_GAIN_DB = "+3.93 to +4.38 dB at seeds 1234, 1, 2"
MIN_GAIN_DB = 1.5


def test_supervised_stages_remove_noise_at_low_snr(stage2_run):
    from usedddp.inference import load_generator

    summary = stage2_run[1]
    assert [int(s) for s in summary["stages"]] == [1, 2]
    generator = load_generator(stage2_run[0], "cpu").generator
    pairs = enhanced_pairs(generator, 0)
    assert len(pairs) == 4
    gain = float(np.mean([out - inp for inp, out in pairs]))
    assert gain >= MIN_GAIN_DB, (
        f"after stages 1-2 the clean stream gains {gain:+.2f} dB SI-SDR over the noisy input on the 0 dB test pairs, "
        f"below the {MIN_GAIN_DB:+.2f} dB this run reached with headroom ({MEASURED_GAIN_DB} measured); learning is broken")


# Stage 3 (the default 50 steps) against stage 2, end-of-stage validation on the 8 held-out clips.
# Measured with the defaults on three whole default runs: SI-SDR +0.55, +0.06 and +0.17 dB (seeds
# 1234, 1, 2), ESTOI +0.002, +0.000 and +0.001. With the paper's stage 3 and DAC's unclipped
# SI-SDR (model.stage3_prior_mixture=0 model.reconstruction.sisdr_max_db=null), the same 50 steps
# from seed 1's stage-2 checkpoint lost 0.71 dB (9.43 -> 8.72), which this test fails (with the
# defaults of the previous release: -0.74 dB, 8.32 -> 7.58).
MAX_SI_SDR_DROP_DB = 0.3
MAX_ESTOI_DROP = 0.01
STAGE3_MEASURED = "measured: +0.06 to +0.55 dB with the defaults, -0.71 dB with the paper's stage 3"


def test_stage3_keeps_what_stages_1_and_2_learned(stage2_run, stage3_run):
    before = stage2_run[1]["stages"]["2"]["metrics"]
    after = stage3_run[1]["stages"]["3"]["metrics"]
    assert stage3_run[1]["stages"]["3"]["steps"] == default_budgets()[3]
    drop_sisdr = before["val/si_sdr"] - after["val/si_sdr"]
    drop_estoi = before["val/estoi"] - after["val/estoi"]
    assert drop_sisdr <= MAX_SI_SDR_DROP_DB and drop_estoi <= MAX_ESTOI_DROP, (
        f"stage 3 lost {drop_sisdr:+.2f} dB SI-SDR ({before['val/si_sdr']:.2f} -> {after['val/si_sdr']:.2f}) and "
        f"{drop_estoi:+.3f} ESTOI ({before['val/estoi']:.3f} -> {after['val/estoi']:.3f}) of what stages 1-2 learned; "
        f"allowed: {MAX_SI_SDR_DROP_DB} dB and {MAX_ESTOI_DROP} ({STAGE3_MEASURED})")


def test_the_trained_run_enhances_through_the_enhance_path(stage2_run):
    # The enhance command rebuilds the STFT model from the run's config and loads its weights
    # strictly; chunked enhancement (1 s chunks, 0.25 s overlap) agrees with the whole clip.
    from usedddp.assets import DEMO_ROOT
    from usedddp.audio import load_audio
    from usedddp.inference import enhance_waveform, load_generator
    from usedddp.metrics import si_sdr

    generator = load_generator(stage2_run[0], "cpu").generator
    assert type(generator.codec).__name__ == "STFTCodec"
    name = sorted((DEMO_ROOT / "noisy_testset").glob("*.flac"))[0].name
    noisy, clean = (load_audio(DEMO_ROOT / folder / name, 16000) for folder in ("noisy_testset", "clean_testset"))
    gain = 10 ** (-25 / 20) / noisy.pow(2).mean().sqrt()
    whole, _ = enhance_waveform(generator, noisy * gain)
    chunked, _ = enhance_waveform(generator, noisy * gain, 16000, 4000)
    assert whole.shape == noisy.shape
    assert si_sdr(chunked, whole) > 20.0
    # Trained: no longer the initial x/2, whose SI-SDR is the input's.
    assert abs(si_sdr(whole, clean) - si_sdr(noisy, clean)) > 0.1
