"""UDiffSE: posterior sampling with a diffusion prior of clean speech and an NMF noise model, by EM.

Nortier, Sadeghi, Serizel, "Unsupervised speech enhancement with diffusion-based generative
models" (ICASSP 2024). In the compressed STFT domain (methods.dsp) the noisy spectrogram is
X = S + N with N ~ CN(0, V), V = W H a rank-r NMF. The E-step draws b samples of S from the
posterior by reverse diffusion of the prior (an OUVE SDE, methods.sde) with a likelihood step
every k steps; the M-step is one Itakura-Saito multiplicative update of W, H on the mean over the
samples of |X - S|^2. The estimate is the mean of the b samples of the last E-step. Parameters
are the reference code's (joanne-b-nortier/UDiffSE), which produced the published tables.

`sampler="fast"` is the one-pass variant of Ayilo, Sadeghi, Serizel et al. (fast_UdiffSE):
K = 1, the likelihood step from the first reverse step on, and the NMF updated inside the pass
on X minus the Tweedie estimate of the clean spectrogram.

Scores follow the complex convention of the prior's training (methods.sde.dsm_loss): the score
of CN(m, s^2) at x is -(x - m) / s^2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from usedddp.methods.dsp import CompressedSTFT, normalise_spec
from usedddp.methods.nmf import is_nmf_update, nmf_init
from usedddp.methods.sde import OUVESDE
from usedddp.methods.wiener import posterior_mean

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (x complex (B, F, T), t (B,)) -> score, like x

SAMPLERS = ("em", "fast")
SCORES = ("trained", "gaussian")


@dataclass
class SamplerConfig:
    """The `method` node of a UDiffSE run (reference values; every key is an override, e.g.
    method.sampler=fast, method.em_iterations=3)."""

    sampler: str = "em"  # em | fast
    score: str = "trained"  # trained (the run's network, EMA weights) | gaussian (the exact-score baseline)
    reverse_steps: int = 30  # N
    corrector_snr: float = 0.5  # annealed Langevin step: (snr * sigma(t))^2
    likelihood_weight: float = 1.5  # lambda
    likelihood_every: int = 2  # k
    em_iterations: int = 5  # K (em only)
    nmf_rank: int = 4  # r
    nmf_exponent: float = 1.0  # the reference's multiplicative update; 0.5 is the provably monotone one
    n_samples: int = 4  # b parallel posterior samples
    floor: float = 1e-10  # NMF entries are kept above it
    seed: int = 0  # every file is enhanced from this seed: same seed, same output

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"method.sampler={self.sampler!r}: use one of {SAMPLERS}")
        if self.score not in SCORES:
            raise ValueError(f"method.score={self.score!r}: use one of {SCORES}")
        for key in ("reverse_steps", "em_iterations", "nmf_rank", "n_samples", "likelihood_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"method.{key}={getattr(self, key)}: must be at least 1")

    @classmethod
    def from_config(cls, node: dict | None) -> "SamplerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (node or {}).items() if k in known and v is not None})

    @property
    def nfe(self) -> int:
        """Network evaluations per enhanced chunk: a corrector and a predictor per reverse step."""
        passes = self.em_iterations if self.sampler == "em" else 1
        return 2 * self.reverse_steps * passes

    def as_dict(self) -> dict:
        return asdict(self)


class GaussianScore(nn.Module):
    """The exact score of a per-frequency complex Gaussian prior CN(0, v_f) under the SDE:
    x_t ~ CN(0, m(t)^2 v_f + sigma(t)^2), score -x_t / (m(t)^2 v_f + sigma(t)^2). Fitted on the
    clean prior (v_f = mean |S_f|^2 of its normalised spectrograms), it is the baseline a trained
    prior must beat: one that does not has learned nothing about speech beyond its spectrum."""

    def __init__(self, variance: Tensor, sde: OUVESDE):
        super().__init__()
        self.register_buffer("variance", variance.float().flatten())  # (F,)
        self.sde = sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        m, s = self.sde.mean_factor(t), self.sde.std(t)
        var = m[:, None, None] ** 2 * self.variance[None, :, None] + s[:, None, None] ** 2
        return -x / var


class NetworkScore(nn.Module):
    """score(x, t) = -net(x, t) / sigma(t): the network predicts the normalised noise z of
    x_t = m(t) x_0 + sigma(t) z, the minimiser of the DSM loss |sigma s + z|^2."""

    def __init__(self, net: nn.Module, sde: OUVESDE):
        super().__init__()
        self.net, self.sde = net, sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return -self.net(x, t) / self.sde.std(t)[:, None, None]


class CountingScore:
    """A score function that counts its evaluations (one per call, whatever the batch of samples)."""

    def __init__(self, score: ScoreFn):
        self.score, self.calls = score, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score(x, t)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


def reverse_times(steps: int, t_min: float, device=None) -> Tensor:
    """The N times of the reverse pass, 1 down to t_min (the reference's linear schedule)."""
    return torch.linspace(1.0, t_min, steps, device=device)


def predictor_corrector(score: ScoreFn, sde: OUVESDE, S: Tensor, t: Tensor, dt: float, snr: float, last: bool,
                        generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One annealed-Langevin corrector step (step (snr sigma(t))^2) then one reverse-diffusion
    (Euler-Maruyama) predictor step from t to t - dt; no noise on the last predictor step.
    S (b, F, T) complex -> (S, sigma(t), the predictor's score, S before the predictor)."""
    std = sde.std(t)[:, None, None]
    step = (snr * std) ** 2
    S = S + step * score(S, t) + torch.sqrt(2 * step) * _randn(S, generator)
    before = S
    s = score(S, t)
    g = sde.g(t)[:, None, None]
    noise = torch.zeros_like(S) if last else _randn(S, generator)
    S = S - sde.drift(S, t) * dt + g**2 * s * dt + g * (dt**0.5) * noise
    return S, std, s, before


def likelihood_step(S: Tensor, X: Tensor, V: Tensor, t: Tensor, std: Tensor, sde: OUVESDE, weight: float, dt: float) -> Tensor:
    """S += lambda g(t)^2 dt * grad: the score of the likelihood of X given S/m(t) with noise
    variance V plus the prior's remaining variance (sigma/m)^2 (the reference's pseudo-likelihood)."""
    m = sde.mean_factor(t)[:, None, None]
    grad = (X - S / m) / (m * ((std / m) ** 2 + V))
    return S + weight * sde.g(t)[:, None, None] ** 2 * grad * dt


def prior_sample(score: ScoreFn, sde: OUVESDE, shape: tuple[int, int, int], steps: int = 30, snr: float = 0.5,
                 generator: torch.Generator | None = None, device=None, start: Tensor | None = None) -> Tensor:
    """A sample (B, F, T) of the prior by reverse diffusion from CN(start, sigma(1)^2) (start: 0, an
    unconditional sample; the noisy spectrogram, what the posterior sampler does without likelihood)."""
    S = torch.randn(shape, dtype=torch.complex64, device=device, generator=generator) * sde.std(torch.ones(1, device=device))
    if start is not None:
        S = start.expand(shape) + S
    times, dt = reverse_times(steps, sde.t_min, device), 1.0 / steps
    for i, t in enumerate(times):
        S, *_ = predictor_corrector(score, sde, S, t.repeat(shape[0]), dt, snr, i == steps - 1, generator)
    return S


@torch.no_grad()
def posterior_sample(score: ScoreFn, sde: OUVESDE, X: Tensor, cfg: SamplerConfig, generator: torch.Generator | None = None,
                     progress: bool = False) -> tuple[Tensor, Tensor]:
    """X (F, T) normalised noisy spectrogram -> (clean estimate (F, T), noise variance V (F, T))."""
    b, (F, T), device = cfg.n_samples, X.shape, X.device
    # The NMF starts from its own seeded draw, so `generator` drives the diffusion alone.
    nmf_generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    W, H = nmf_init(F, T, cfg.nmf_rank, generator=nmf_generator, floor=cfg.floor, device=device)
    V = W @ H
    Xb = X.expand(b, F, T)
    times, dt = reverse_times(cfg.reverse_steps, sde.t_min, device), 1.0 / cfg.reverse_steps
    passes = cfg.em_iterations if cfg.sampler == "em" else 1
    sigma1 = sde.std(torch.ones(1, device=device))
    for k in tqdm(range(passes), desc="EM", unit="iter", leave=False, disable=not progress):
        S = Xb + sigma1 * _randn(Xb, generator)  # E-step: the reverse pass starts at the noisy observation
        for i, t in enumerate(times):
            tb = t.repeat(b)
            S, std, s, before = predictor_corrector(score, sde, S, tb, dt, cfg.corrector_snr, i == len(times) - 1, generator)
            # The reference skips the likelihood in the first EM iteration (V is still random).
            if i % cfg.likelihood_every == 0 and (cfg.sampler == "fast" or k > 0):
                if cfg.sampler == "fast":
                    # Tweedie's estimate of the clean spectrogram at this step, E[S_0 | S_t].
                    m = sde.mean_factor(tb)[:, None, None]
                    clean = (before + std**2 * s) / m
                    W, H = is_nmf_update((Xb - clean).abs().square().mean(0), W, H, exponent=cfg.nmf_exponent, floor=cfg.floor)
                    V = W @ H
                S = likelihood_step(S, Xb, V, tb, std, sde, cfg.likelihood_weight, dt)
        if cfg.sampler == "em":  # M-step
            W, H = is_nmf_update((Xb - S).abs().square().mean(0), W, H, exponent=cfg.nmf_exponent, floor=cfg.floor)
            V = W @ H
    return posterior_mean(S, dim=0), V


class UDiffSEEnhancer:
    """A waveform enhancer for the enhance path (usedddp.inference): noisy (1, 1, T) -> clean and
    noise streams, the noise being the input less the clean estimate. Counts network
    evaluations (`nfe`) for the cost columns."""

    def __init__(self, score: ScoreFn, sde: OUVESDE, stft: CompressedSTFT, cfg: SamplerConfig, frame_multiple: int,
                 sample_rate: int, device: torch.device, progress: bool = False):
        self.score, self.sde, self.stft, self.cfg = CountingScore(score), sde, stft, cfg
        self.frame_multiple, self.sample_rate, self.device, self.progress = int(frame_multiple), int(sample_rate), device, progress
        self.hop_length = stft.hop_length

    @property
    def nfe(self) -> int:
        return self.score.calls

    @torch.no_grad()
    def __call__(self, x: Tensor, streams: tuple[str, ...] = ("clean", "noise")) -> dict[str, Tensor | None]:
        length = x.shape[-1]
        x = x.to(self.device)
        X = self.stft.spec(x)[0]  # (F, T)
        X, scale = normalise_spec(X[None])
        X, frames = self.stft.pad_frames(X, self.frame_multiple)
        generator = torch.Generator(device=self.device).manual_seed(int(self.cfg.seed))
        S, _ = posterior_sample(self.score, self.sde, X[0], self.cfg, generator, self.progress)
        clean = self.stft.wav((S[None, :, :frames] * scale), length)
        return {"clean": clean, "noise": x - clean if "noise" in streams else None}
