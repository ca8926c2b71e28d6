"""The VAE-NMF methods: the prior's loss, the M-step, the E-step samplers against a posterior known
in closed form, the EM's invariants, and the train -> enhance -> evaluate path of a run whose
method is rvae, as a user runs it (shrunk to seconds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train import _env, _tail
from test_udiffse import one_second_pairs
from usedddp.methods.baselines import ORACLE_WIENER_LABEL
from usedddp.methods.dsp import PowerSTFT, normalise_power, sine_window
from usedddp.methods.nmf import mixture_mstep, mixture_nll, nmf_init
from usedddp.methods.vae_nmf import (EMConfig, VAENMFEnhancer, is_frame_local, langevin, mala, metropolis_hastings,
                                     vae_nmf_em)
from usedddp.methods.wiener import wiener_gain
from usedddp.models.components.vae import RVAE, FrameVAE, gaussian_kl
from usedddp.models.vae_module import VAEPriorModule, is_divergence_frames

# -- the prior's loss ----------------------------------------------------------------------------


def test_is_loss_is_zero_at_the_spectrograms_own_variance_and_larger_elsewhere():
    g = torch.Generator().manual_seed(0)
    power = torch.rand(3, 20, 513, generator=g, dtype=torch.float64) * 10 + 1e-3
    at_truth = is_divergence_frames(power, power.log())
    assert torch.allclose(at_truth, torch.zeros_like(at_truth), atol=1e-9)
    for scale in (0.5, 0.9, 1.1, 2.0):
        assert (is_divergence_frames(power, (power * scale).log()) > 1e-6).all()
    noisy = power.log() + 0.1 * torch.randn(power.shape, generator=g, dtype=torch.float64)
    assert (is_divergence_frames(power, noisy) > 0).all()


def test_kl_is_zero_at_the_prior_only():
    assert gaussian_kl(torch.zeros(4, 16), torch.zeros(4, 16)).abs().max() == 0
    assert (gaussian_kl(torch.full((4, 16), 0.3), torch.zeros(4, 16)) > 0).all()
    assert (gaussian_kl(torch.zeros(4, 16), torch.full((4, 16), -1.0)) > 0).all()


def test_beta_warms_up_linearly_to_its_value():
    module = VAEPriorModule(FrameVAE(n_freq=33), PowerSTFT(64, 16), torch.optim.Adam, beta=0.01, beta_warmup_steps=100)
    assert module.beta_at(0) == 0 and module.beta_at(50) == pytest.approx(0.005) and module.beta_at(1000) == 0.01


@pytest.mark.parametrize("Model", [FrameVAE, RVAE])
def test_a_few_steps_of_training_lower_the_loss_on_a_fixed_batch(Model):
    torch.manual_seed(0)
    module = VAEPriorModule(Model(n_freq=33, latent_dim=4, hidden=16), PowerSTFT(64, 16), torch.optim.Adam, beta_warmup_steps=0)
    wav = torch.randn(4, 1, 1600) * torch.linspace(0.1, 1.0, 1600)
    power = module.power(wav)
    opt = torch.optim.Adam(module.backbone.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        g = torch.Generator().manual_seed(1)
        is_div, kl = module.losses(power, g)
        loss = is_div + module.beta * kl
        first = float(loss.detach()) if first is None else first
        opt.zero_grad(), loss.backward(), opt.step()
    # White-noise power is exponential: the best variance still leaves about 0.58 per bin (33 bins).
    assert float(loss.detach()) < 0.7 * first


def test_power_stft_is_the_sine_window_and_inverts():
    w = sine_window(1024)
    assert torch.allclose(w[:4], torch.sin(math.pi * (torch.arange(4) + 0.5) / 1024))
    stft = PowerSTFT()
    wav = torch.randn(2, 1, 16000)
    spec = stft.spec(wav)
    assert spec.shape == (2, 513, 1 + 16000 // 256)
    assert torch.allclose(stft.wav(spec, 16000), wav, atol=1e-5)
    power, scale = normalise_power(spec.abs().square())
    assert torch.allclose(power.mean(dim=(-2, -1)), torch.ones(2), atol=1e-4) and scale.shape == (2, 1, 1)


# -- the M-step ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mstep_never_increases_the_objective(seed):
    g_ = torch.Generator().manual_seed(seed)
    F, T, K, R = 40, 30, 8, 3
    V = torch.rand(F, T, generator=g_, dtype=torch.float64).square() * 5 + 1e-4
    speech = torch.rand(R, F, T, generator=g_, dtype=torch.float64) * 2 + 1e-3
    W, H = nmf_init(F, T, K, generator=g_, dtype=torch.float64)
    g = torch.rand(T, generator=g_, dtype=torch.float64) + 0.5
    history = [float(mixture_nll(V, speech, W, H, g))]
    for _ in range(60):
        W, H, g = mixture_mstep(V, speech, W, H, g, exponent=0.5)
        history.append(float(mixture_nll(V, speech, W, H, g)))
    steps = np.diff(history)
    assert (steps <= 1e-9 * np.abs(history[:-1])).all(), steps.max()
    assert history[-1] < history[0] - 1.0


# -- the samplers against a linear-Gaussian posterior --------------------------------------------


def _linear_gaussian(frames: int = 3, L: int = 2, sigma: float = 0.7, seed: int = 0):
    """y_t = A z_t + e, e ~ N(0, sigma^2 I), z_t ~ N(0, I): p(z_t | y_t) = N(mu_t, S), known."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4, L, generator=g, dtype=torch.float64)
    y = torch.randn(frames, 4, generator=g, dtype=torch.float64) * 2
    precision = A.T @ A / sigma**2 + torch.eye(L, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    mean = (cov @ A.T @ y.T / sigma**2).T  # (T, L)

    def energy(z):  # (C, T, L) -> (C, T)
        residual = y - torch.einsum("kl,ctl->ctk", A, z)
        return 0.5 * residual.square().sum(-1) / sigma**2 + 0.5 * z.square().sum(-1)

    return energy, mean, cov


def _moments(samples):  # (S, C, T, L) -> mean (T, L), covariance (T, L, L)
    flat = samples.flatten(0, 1)  # (N, T, L)
    mean = flat.mean(0)
    centred = flat - mean
    return mean, torch.einsum("ntl,ntm->tlm", centred, centred) / (flat.shape[0] - 1)


def test_langevin_matches_the_analytic_posterior():
    energy, mean, cov = _linear_gaussian()
    g = torch.Generator().manual_seed(0)
    z0 = torch.zeros(400, 3, 2, dtype=torch.float64)
    _, samples = langevin(energy, z0, 1500, 5e-3, g, keep_from=1000)
    m, c = _moments(samples)
    assert torch.allclose(m, mean, atol=0.03), (m, mean)
    assert torch.allclose(c, cov.expand_as(c), atol=0.03 * float(cov.abs().max()) + 0.01), (c, cov)


@pytest.mark.parametrize("tamed", [True, False])
def test_mala_matches_the_analytic_posterior(tamed):
    energy, mean, cov = _linear_gaussian()
    g = torch.Generator().manual_seed(1)
    z0 = torch.zeros(400, 3, 2, dtype=torch.float64)
    _, samples, acceptance = mala(energy, z0, 400, 100, 0.05, g, tamed=tamed)
    m, c = _moments(samples)
    assert 0.3 < acceptance < 1.0
    assert torch.allclose(m, mean, atol=0.03), (m, mean)
    assert torch.allclose(c, cov.expand_as(c), atol=0.03 * float(cov.abs().max()) + 0.01), (c, cov)


def test_metropolis_hastings_matches_the_analytic_posterior():
    energy, mean, cov = _linear_gaussian()
    g = torch.Generator().manual_seed(2)
    z0 = torch.zeros(400, 3, 2, dtype=torch.float64)
    _, samples, acceptance = metropolis_hastings(energy, z0, 600, 200, 0.05, g)
    m, c = _moments(samples)
    assert 0.2 < acceptance < 1.0
    assert torch.allclose(m, mean, atol=0.03), (m, mean)
    assert torch.allclose(c, cov.expand_as(c), atol=0.03 * float(cov.abs().max()) + 0.01), (c, cov)


# -- the EM ---------------------------------------------------------------------------------------


class OracleSpeech(torch.nn.Module):
    """A 'VAE' whose decoder ignores z and returns a known speech variance (F, T): the EM must
    then find the noise and the gain the Wiener filter needs."""

    decoder_parts = ("log_var",)

    def __init__(self, speech_var: torch.Tensor, latent_dim: int = 2):
        super().__init__()
        self.log_var = torch.nn.Parameter(speech_var.log().T.clone(), requires_grad=False)  # (T, F)
        self.latent_dim = latent_dim
        self.enc = torch.nn.Linear(1, latent_dim)

    def encode(self, power, generator=None):
        mean = self.enc(power[..., :1]) * 0
        return mean, mean, mean

    def decode(self, z):
        return self.log_var.expand(z.shape[0], -1, -1) + 0 * z.sum(-1, keepdim=True)


@pytest.mark.parametrize("estep", ["mcem", "ldem", "mala", "vem"])
def test_em_with_the_oracle_speech_variance_finds_the_noise_and_the_oracle_wiener_gain(estep):
    g = torch.Generator().manual_seed(0)
    F, T, sigma2 = 257, 40, 0.5
    speech_var = (torch.rand(F, T, generator=g) * 4) ** 2 * (torch.rand(1, T, generator=g) > 0.3) + 1e-3
    S = torch.randn(F, T, dtype=torch.complex64, generator=g) * speech_var.sqrt()
    N = torch.randn(F, T, dtype=torch.complex64, generator=g) * math.sqrt(sigma2)
    P = (S + N).abs().square()
    cfg = EMConfig(estep=estep, em_iterations=40, nmf_rank=2, mcem_steps=3, mcem_burn_in=1, mala_steps=3, mala_burn_in=1,
                   ldem_chains=2)
    result = vae_nmf_em(OracleSpeech(speech_var), P, cfg)
    noise = result.W @ result.H
    assert abs(float(noise.mean()) / sigma2 - 1) < 0.15, float(noise.mean())
    assert abs(float(result.g.median()) - 1) < 0.15, result.g
    oracle = wiener_gain(speech_var, torch.full_like(speech_var, sigma2))
    assert float((result.gain - oracle).abs().mean()) < 0.05
    assert (np.diff(result.objective[5:]) <= 1e-3 * np.abs(result.objective[5:-1])).mean() > 0.9


@pytest.mark.parametrize("estep", ["vem", "mcem", "ldem", "mala"])
def test_enhancer_streams_sum_to_the_input_same_seed_same_output_and_the_prior_is_untouched(estep):
    torch.manual_seed(0)
    model = RVAE(n_freq=513, latent_dim=4, hidden=16, dense=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = EMConfig(estep=estep, em_iterations=3, mcem_steps=4, mcem_burn_in=2, mala_steps=3, mala_burn_in=1, ldem_chains=3)
    wav = torch.randn(1, 1, 8000) * 0.1
    outs = []
    for _ in range(2):
        enhancer = VAENMFEnhancer(model, PowerSTFT(), cfg, 16000, torch.device("cpu"))
        with torch.inference_mode():  # as enhance_waveform calls it
            outs.append(enhancer(wav))
        assert enhancer.nfe > 0
    clean, noise = outs[0]["clean"], outs[0]["noise"]
    assert clean.shape == wav.shape and torch.isfinite(clean).all()
    assert torch.allclose(clean + noise, wav, atol=1e-7)
    assert torch.equal(outs[0]["clean"], outs[1]["clean"])
    assert not torch.allclose(clean, wav, atol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{estep} changed the prior's {k}"


def test_frame_locality_is_detected():
    assert is_frame_local(FrameVAE(n_freq=9)) and not is_frame_local(RVAE(n_freq=9))


def test_em_options_are_checked_by_name():
    with pytest.raises(ValueError, match="method.estep='gibbs'"):
        EMConfig(estep="gibbs")
    with pytest.raises(ValueError, match="mcem_burn_in"):
        EMConfig(mcem_steps=10, mcem_burn_in=10)
    assert EMConfig.from_config({"estep": "ldem", "sampler": "fast", "nmf_rank": None}).estep == "ldem"


# -- the commands ---------------------------------------------------------------------------------

TINY = ["experiment=rvae_prior", "trainer.max_steps=3", "trainer.val_check_interval=3", "logger=csv",
        "model.backbone.hidden=8", "model.backbone.dense=8", "model.backbone.latent_dim=4", "model.val_sample_seconds=0.5",
        "data.segment_seconds=0.5", "data.batch_size=2", "data.val_clips=2", "audit.enabled=false",
        "trainer.enable_progress_bar=false"]
CHEAP = ["method.em_iterations=2", "method.mcem_steps=3", "method.mcem_burn_in=1", "method.mala_steps=2",
         "method.mala_burn_in=1", "method.ldem_chains=2"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.fixture(scope="module")
def rvae_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rvae") / "run"
    result = _run([sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *TINY], run_dir.parent)
    assert result.returncode == 0, _tail(result.stdout)
    return run_dir


def test_rvae_run_records_its_method_and_checkpoints(rvae_run):
    summary = json.loads((rvae_run / "summary.json").read_text())
    assert summary["method"] == "rvae" and summary["stages"]["prior"]["steps"] == 3
    metrics = summary["stages"]["prior"]["metrics"]
    assert np.isfinite(metrics["val/loss"]) and np.isfinite(metrics["val/is"]) and metrics["val/kl"] >= 0
    names = sorted(p.name for p in (rvae_run / "prior" / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in names and "best.ckpt" in names, names
    state = torch.load(rvae_run / "prior" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["usedddp"]["config"]["method"]["name"] == "rvae" and state["usedddp"]["stage"] == "prior"
    assert state["usedddp"]["config"]["method"]["nmf_rank"] == 8
    assert any(k.startswith("backbone.rnn_dec.") for k in state["state_dict"])
    assert (rvae_run / "logs" / "csv").exists() or list(rvae_run.rglob("metrics.csv")), "no training log"


def test_enhance_and_evaluate_take_the_rvae_run(rvae_run, tmp_path):
    noisy, clean = one_second_pairs(tmp_path)
    pairs = sorted(noisy.iterdir())
    out = tmp_path / "enhanced"
    result = _run([sys.executable, "-m", "usedddp.enhance", f"hydra.run.dir={tmp_path / 'h1'}", f"ckpt={rvae_run}",
                   f"input={noisy}", f"output={out}", "method.estep=mcem", *CHEAP], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    assert "enhanced 2 of 2 files (0 failed)" in result.stdout and "RVAE-NMF mcem" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in pairs)

    result = _run([sys.executable, "-m", "usedddp.evaluate", f"hydra.run.dir={tmp_path / 'h2'}", f"ckpt={rvae_run}",
                   f"output={tmp_path / 'eval'}", f"data.noisy_dir={noisy}", f"data.clean_dir={clean}", "dnsmos=false",
                   "jobs=1", *CHEAP], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    systems = [row["system"] for row in summary["results"]["overall"]]
    assert systems == ["noisy", "RVAE-NMF vem", "RVAE-NMF mcem", "RVAE-NMF ldem", "RVAE-NMF mala"], systems
    cost = summary["provenance"]["cost"]
    assert all(c["rtf"] > 0 and c["nfe"] > 0 for c in cost.values())

    # Another method's option is refused by name, before anything is written.
    result = _run([sys.executable, "-m", "usedddp.enhance", f"hydra.run.dir={tmp_path / 'h3'}", f"ckpt={rvae_run}",
                   f"input={noisy}", f"output={tmp_path / 'x'}", "method.sampler=fast"], tmp_path)
    assert result.returncode == 2 and "method.sampler=... is not an option of an RVAE-NMF run" in result.stdout, _tail(result.stdout)
    assert not (tmp_path / "x").exists()


def test_rvae_training_resumes_from_its_checkpoint(rvae_run, tmp_path):
    run_dir = tmp_path / "resumed"
    last = rvae_run / "prior" / "checkpoints" / "last.ckpt"
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    result = _run([sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *overrides, "trainer.max_steps=5",
                   f"ckpt_path={last}"], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    state = torch.load(run_dir / "prior" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 5


def test_frame_wise_vae_trains_with_the_same_experiment(tmp_path):
    run_dir = tmp_path / "vae"
    overrides = [o for o in TINY if not o.startswith("model.backbone.dense")] + ["model=vae"]
    result = _run([sys.executable, "-m", "usedddp.train", f"hydra.run.dir={run_dir}", *overrides], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    state = torch.load(run_dir / "prior" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["usedddp"]["config"]["model"]["backbone"]["_target_"].endswith("FrameVAE")


def test_compare_takes_the_rvae_run_beside_the_baselines(rvae_run, tmp_path):
    noisy, clean = one_second_pairs(tmp_path)
    out = tmp_path / "cmp"
    cheap = "{em_iterations:2,mcem_steps:3,mcem_burn_in:1,ldem_chains:2}"
    result = _run([sys.executable, "-m", "usedddp.compare", f"hydra.run.dir={tmp_path / 'h'}", f"runs=[{rvae_run}]",
                   f"output={out}", f"data.noisy_dir={noisy}", f"data.clean_dir={clean}", "dnsmos=false", "jobs=1",
                   f"variants.rvae=[{{estep:mcem,{cheap[1:-1]}}},{{estep:ldem,{cheap[1:-1]}}}]"], tmp_path)
    assert result.returncode == 0, _tail(result.stdout)
    report = json.loads((out / "compare.json").read_text())
    systems = [row["system"] for row in report["results"]["overall"]]
    assert systems == ["noisy", "noisereduce", ORACLE_WIENER_LABEL, "RVAE-NMF mcem", "RVAE-NMF ldem"], systems
    cost = report["provenance"]["cost"]
    assert cost["RVAE-NMF mcem"]["nfe"] > 0 and cost["RVAE-NMF ldem"]["nfe"] > 0
    runs = {r["method"]: r for r in report["provenance"]["runs"]}
    assert runs["RVAE-NMF"]["training_data"] == "the clean prior only"
    assert (out / "quality_cost.png").is_file() and (out / "per_file.csv").is_file()
