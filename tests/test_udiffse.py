"""UDiffSE in the framework: the sampler's invariants, and the train -> enhance -> evaluate path of
a run whose method is udiffse, as a user runs it (shrunk to seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from test_train import _env, _tail
from usedddp.assets import DEMO_ROOT
from usedddp.methods.dsp import CompressedSTFT
from usedddp.methods.sde import OUVESDE
from usedddp.methods.udiffse import (GaussianScore, SamplerConfig, UDiffSEEnhancer, posterior_sample, prior_sample)

SDE = OUVESDE()


def _gaussian(F: int = 16) -> GaussianScore:
    return GaussianScore(torch.linspace(0.05, 1.0, F), SDE)


def _noisy_spec(F: int = 16, T: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(F, T, dtype=torch.complex64, generator=g)


def test_gaussian_score_is_the_exact_score():
    # x_t ~ CN(0, m^2 v + s^2) for x0 ~ CN(0, v): the score -x / (m^2 v + s^2), checked by autograd
    # of the log-density log p = -|x|^2 / var (complex convention: score = d log p / d conj(x) * 1).
    score = _gaussian(4)
    x = torch.randn(2, 4, 3, dtype=torch.complex64)
    t = torch.tensor([0.2, 0.9])
    var = SDE.mean_factor(t)[:, None, None] ** 2 * score.variance[None, :, None] + SDE.std(t)[:, None, None] ** 2
    torch.testing.assert_close(score(x, t), -x / var)
    xr = torch.view_as_real(x).clone().requires_grad_(True)
    logp = -(xr.square().sum(-1) / var).sum()
    (grad,) = torch.autograd.grad(logp, xr)
    torch.testing.assert_close(torch.view_as_complex(grad / 2), -x / var)


def test_zero_likelihood_weight_is_prior_sampling_started_from_the_observation():
    X = _noisy_spec()
    cfg = SamplerConfig(sampler="fast", likelihood_weight=0.0, n_samples=1, reverse_steps=6)
    post, _ = posterior_sample(_gaussian(), SDE, X, cfg, torch.Generator().manual_seed(3))
    prior = prior_sample(_gaussian(), SDE, (1, *X.shape), 6, cfg.corrector_snr, torch.Generator().manual_seed(3), start=X)
    torch.testing.assert_close(post, prior[0], rtol=0, atol=0)
    # ... and a positive weight does change it (the likelihood step is really taken).
    pulled, _ = posterior_sample(_gaussian(), SDE, X, SamplerConfig(sampler="fast", n_samples=1, reverse_steps=6),
                                 torch.Generator().manual_seed(3))
    assert not torch.allclose(pulled, post)


@pytest.mark.parametrize("sampler", ["em", "fast"])
def test_same_seed_same_output_and_the_nfe_count(sampler):
    stft = CompressedSTFT()
    cfg = SamplerConfig(sampler=sampler, reverse_steps=4, em_iterations=2, n_samples=2, seed=5)
    wav = 0.1 * torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0))
    outs = []
    for _ in range(2):
        enhancer = UDiffSEEnhancer(GaussianScore(torch.full((256,), 0.1), SDE), SDE, stft, cfg, 4, 16000, torch.device("cpu"))
        outs.append(enhancer(wav))
        assert enhancer.nfe == cfg.nfe == (2 * 4 * 2 if sampler == "em" else 2 * 4)
    torch.testing.assert_close(outs[0]["clean"], outs[1]["clean"], rtol=0, atol=0)
    assert outs[0]["clean"].shape == wav.shape and torch.isfinite(outs[0]["clean"]).all()
    torch.testing.assert_close(outs[0]["clean"] + outs[0]["noise"], wav)
    other = UDiffSEEnhancer(GaussianScore(torch.full((256,), 0.1), SDE), SDE, stft, SamplerConfig(**{**cfg.as_dict(), "seed": 6}),
                            4, 16000, torch.device("cpu"))(wav)
    assert not torch.allclose(other["clean"], outs[0]["clean"])


def test_sampler_options_are_checked_by_name():
    with pytest.raises(ValueError, match="method.sampler='slow'"):
        SamplerConfig(sampler="slow")
    with pytest.raises(ValueError, match="method.em_iterations=0"):
        SamplerConfig(em_iterations=0)


# -- the commands --------------------------------------------------------------------------------

TINY_PRIOR = ["experiment=udiffse_prior", "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
              "model.backbone.channels=8", "model.backbone.channel_mults=[1,2,2,2]", "model.backbone.groups=4",
              "model.val_sample_seconds=0.5", "model.val_sample_steps=2", "data.segment_seconds=0.5", "data.batch_size=2",
              "data.val_clips=2", "audit.enabled=false", "trainer.enable_progress_bar=false"]
CHEAP = ["method.reverse_steps=2", "method.em_iterations=2", "method.n_samples=2"]


def one_second_pairs(root: Path, n: int = 2) -> tuple[Path, Path]:
    """The first n demo test pairs cut to 1 s, in root/noisy and root/clean: (noisy, clean)."""
    noisy, clean = root / "noisy", root / "clean"
    for folder, source in ((noisy, "noisy_testset"), (clean, "clean_testset")):
        folder.mkdir()
        for p in sorted((DEMO_ROOT / "noisy_testset").glob("*.flac"))[:n]:
            data, sr = sf.read(str(DEMO_ROOT / source / p.name))
            sf.write(str(folder / p.name), data[:sr], sr)
    return noisy, clean


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("udiffse") / "run"
    result = _run([sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *TINY_PRIOR], run_dir.parent)
    assert result.returncode == 0, _tail(result.stdout)
    return run_dir


def test_prior_run_records_its_method_and_checkpoints(prior_run):
    summary = json.loads((prior_run / "summary.json").read_text())
    assert summary["method"] == "udiffse" and summary["stages"]["prior"]["steps"] == 3
    assert np.isfinite(summary["stages"]["prior"]["metrics"]["val/loss"])
    names = sorted(p.name for p in (prior_run / "prior" / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in names and "best.ckpt" in names, names
    state = torch.load(prior_run / "prior" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["usedddp"]["config"]["method"]["name"] == "udiffse" and state["usedddp"]["stage"] == "prior"
    assert any(k.startswith("ema.ema_model.") for k in state["state_dict"])


def test_enhance_and_evaluate_take_the_run_with_no_new_flag(prior_run, tmp_path):
    noisy, clean = one_second_pairs(tmp_path)
    pairs = sorted(noisy.iterdir())
    out = tmp_path / "enhanced"
    result = _run([sys.executable, "-m", "usedddp.enhance", f"hydra.run.dir={tmp_path / 'h1'}", f"ckpt={prior_run}",
                   f"input={noisy}", f"output={out}", "method.sampler=fast", *CHEAP], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    assert "enhanced 2 of 2 files (0 failed)" in result.stdout and "network evaluations per second" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in pairs)

    result = _run([sys.executable, "-m", "usedddp.evaluate", f"hydra.run.dir={tmp_path / 'h2'}", f"ckpt={prior_run}",
                   f"output={tmp_path / 'eval'}", f"data.noisy_dir={noisy}", f"data.clean_dir={clean}", "dnsmos=false",
                   "jobs=1", *CHEAP], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    systems = [row["system"] for row in summary["results"]["overall"]]
    assert systems == ["noisy", "UDiffSE em (Gaussian score)", "UDiffSE em", "UDiffSE fast"], systems
    cost = summary["provenance"]["cost"]
    assert cost["UDiffSE em"]["nfe"] == 2 * (2 * 2 * 2) and cost["UDiffSE fast"]["nfe"] == 2 * (2 * 2)
    assert all(c["rtf"] > 0 for c in cost.values())
    assert "NFE/s" in result.stdout and "pesq_nb_raw" in summary["results"]["metrics"]

    # A bad sampler option is refused, by name, before anything is written.
    result = _run([sys.executable, "-m", "usedddp.enhance", f"hydra.run.dir={tmp_path / 'h3'}", f"ckpt={prior_run}",
                   f"input={noisy}", f"output={tmp_path / 'x'}", "method.sampler=slow"], tmp_path)
    assert result.returncode == 2 and "method.sampler='slow'" in result.stdout, _tail(result.stdout)


def test_prior_training_resumes_from_its_checkpoint(prior_run, tmp_path):
    # ckpt_path restores weights, EMA, optimizer and step: the resumed run continues from step 3.
    run_dir = tmp_path / "resumed"
    last = prior_run / "prior" / "checkpoints" / "last.ckpt"
    overrides = [o for o in TINY_PRIOR if not o.startswith("trainer.max_steps")]
    result = _run([sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *overrides, "trainer.max_steps=5",
                   f"ckpt_path={last}"], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    assert "Restored all states from the checkpoint" in result.stdout or "Restoring states" in result.stdout, _tail(result.stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["prior"]["steps"] == 5
    state = torch.load(run_dir / "prior" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 5
