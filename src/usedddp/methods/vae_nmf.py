"""VAE-NMF speech enhancement: a VAE prior of clean speech, an NMF noise model, and EM at test time.

The noisy STFT is x_ft ~ CN(0, g_t v_ft(z) + [W H]_ft), with v(z) the prior's decoder, z_t ~ N(0, I),
a per-frame gain g and a rank-K NMF noise variance (Leglaive, Girin, Horaud, "A variance modeling
framework based on variational autoencoders for speech enhancement", MLSP 2018). EM alternates an
E-step on p(z | x) and the multiplicative M-step of W, H, g (methods.nmf.mixture_mstep); the estimate
is the posterior mean of s, the Wiener-like E_z[g v / (g v + W H)] x over the last E-step's samples.

The E-steps (`estep`):
- vem: the encoder fine-tuned on x by Adam (one step per iteration, KL weight 1) as q(z | x)
  (Leglaive, Girin, Horaud, "A recurrent variational autoencoder for speech enhancement",
  ICASSP 2020; Bie et al., "Unsupervised speech enhancement using dynamical variational
  autoencoders", IEEE/ACM TASLP 2022).
- mcem: Metropolis-Hastings with a Gaussian random-walk proposal, acceptance per frame
  (Leglaive et al., MLSP 2018; Sadeghi & Serizel, "Posterior sampling algorithms for
  unsupervised speech enhancement with recurrent variational autoencoder", ICASSP 2024).
- ldem: parallel chains of unadjusted Langevin dynamics, one step per iteration (Sadeghi &
  Serizel, ICASSP 2024).
- mala: Metropolis-adjusted Langevin with a tamed gradient (Sadeghi & Serizel, ICASSP 2024;
  Roberts & Stramer 2002; taming: Brosse et al., "The tamed unadjusted Langevin algorithm", 2019).

Defaults are the reference codes' (XiaoyuBIE1994/DVAE_SE, msaadeghii/ps-rvae-se) except where a
comment says otherwise. The samplers take any per-frame energy U(z) = -log p(z | x) + const, so
they are tested on a linear-Gaussian model whose posterior is known.

Shapes: power P (F, T); chains of latents z (C, T, L); speech variances (R, F, T).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor, nn
from tqdm import tqdm

from usedddp.methods.dsp import PowerSTFT, normalise_power
from usedddp.methods.nmf import mixture_mstep, mixture_nll, nmf_init
from usedddp.methods.wiener import wiener_gain
from usedddp.models.components.vae import flush_denormals, gaussian_kl, reparameterise

ESTEPS = ("vem", "mcem", "ldem", "mala")
Energy = Callable[[Tensor], Tensor]  # z (C, T, L) -> per-frame energy (C, T), differentiable


@dataclass
class EMConfig:
    """The `method` node of a VAE-prior run (every key is an override: method.estep=mcem, ...)."""

    estep: str = "vem"  # vem | mcem | ldem | mala
    em_iterations: int = 100
    nmf_rank: int = 8
    # 1/2: the majorise-minimise exponent of the reference codes, never increasing the objective.
    nmf_exponent: float = 0.5
    vem_lr: float = 1e-3
    vem_kl_weight: float = 1.0
    mcem_steps: int = 40
    mcem_burn_in: int = 30
    mcem_proposal_var: float = 0.01
    ldem_chains: int = 10
    ldem_step: float = 5e-3
    ldem_jitter: float = 0.01  # variance of the extra perturbation after each E-step (the reference's eta)
    mala_steps: int = 10
    mala_burn_in: int = 5
    mala_step: float = 5e-3
    mala_jitter: float = 0.01
    floor: float = 1e-10
    seed: int = 0  # every file is enhanced from this seed: same seed, same output

    def __post_init__(self):
        if self.estep not in ESTEPS:
            raise ValueError(f"method.estep={self.estep!r}: use one of {ESTEPS}")
        for key in ("em_iterations", "nmf_rank", "mcem_steps", "ldem_chains", "mala_steps"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"method.{key}={getattr(self, key)}: must be at least 1")
        for steps, burn in (("mcem_steps", "mcem_burn_in"), ("mala_steps", "mala_burn_in")):
            if not 0 <= int(getattr(self, burn)) < int(getattr(self, steps)):
                raise ValueError(f"method.{burn}={getattr(self, burn)}: must be in [0, method.{steps}={getattr(self, steps)})")
        for key in ("vem_lr", "mcem_proposal_var", "ldem_step", "mala_step"):
            if float(getattr(self, key)) <= 0:
                raise ValueError(f"method.{key}={getattr(self, key)}: must be positive")

    @classmethod
    def option_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_config(cls, node: dict | None) -> "EMConfig":
        known = cls.option_names()
        return cls(**{k: v for k, v in (node or {}).items() if k in known and v is not None})

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Samplers of p(z | x) given a per-frame energy


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)


def energy_and_grad(energy: Energy, z: Tensor) -> tuple[Tensor, Tensor]:
    """(U(z) (C, T) detached, dU/dz (C, T, L)): the sum's gradient, which is per frame."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        U = energy(z)
        (grad,) = torch.autograd.grad(U.sum(), z)
    return U.detach(), grad


def metropolis_hastings(energy: Energy, z: Tensor, steps: int, burn_in: int, proposal_var: float,
                        generator: torch.Generator | None = None, frame_local: bool = True) -> tuple[Tensor, Tensor, float]:
    """Random-walk Metropolis-Hastings, every frame accepted or rejected on its own energy.

    z (C, T, L) -> (last state (C, T, L), the states after burn-in (S, C, T, L), acceptance rate).
    Exact when the energy of frame t depends on z_t alone (`frame_local`); with a recurrent
    decoder it is the reference's approximation, and the current state's energies are recomputed
    every step, since accepting other frames changed them."""
    std = math.sqrt(proposal_var)
    with torch.no_grad():
        U = energy(z)
        kept, accepted = [], 0.0
        for k in range(steps):
            if not frame_local and k > 0:
                U = energy(z)
            proposal = z + std * _randn(z, generator)
            U_prop = energy(proposal)
            u = torch.rand(U.shape, dtype=U.dtype, device=U.device, generator=generator)
            accept = torch.log(u) < U - U_prop  # (C, T)
            z = torch.where(accept[..., None], proposal, z)
            U = torch.where(accept, U_prop, U)
            accepted += accept.float().mean().item()
            if k >= burn_in:
                kept.append(z)
    return z, torch.stack(kept), accepted / steps


def langevin(energy: Energy, z: Tensor, steps: int, step: float, generator: torch.Generator | None = None,
             keep_from: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Unadjusted Langevin dynamics z <- z - step dU/dz + sqrt(2 step) xi, whose stationary law
    tends to exp(-U) as step -> 0. z (C, T, L) -> (last state, the states from step `keep_from`
    on (S, C, T, L), or None)."""
    kept = []
    for k in range(steps):
        _, grad = energy_and_grad(energy, z)
        z = z - step * grad + math.sqrt(2 * step) * _randn(z, generator)
        if keep_from is not None and k >= keep_from:
            kept.append(z)
    return z, (torch.stack(kept) if kept else None)


def tame(grad: Tensor, step: float) -> Tensor:
    """grad / (1 + step |grad_t|) per frame (C, T, L): a bounded drift where the energy is steep.

    The reference tames by the norm of the whole (T, L) matrix; per frame keeps the per-frame
    acceptance exact for a frame-local energy."""
    return grad / (1 + step * grad.norm(dim=-1, keepdim=True))


def mala(energy: Energy, z: Tensor, steps: int, burn_in: int, step: float, generator: torch.Generator | None = None,
         tamed: bool = True) -> tuple[Tensor, Tensor, float]:
    """Metropolis-adjusted Langevin: proposal z' = z - step G(z) + sqrt(2 step) xi, G the (tamed)
    gradient of U, accepted per frame with the ratio of the forward and backward proposal
    densities. z (C, T, L) -> (last state, the states after burn-in (S, C, T, L), acceptance)."""
    drift = (lambda g: tame(g, step)) if tamed else (lambda g: g)
    U, grad = energy_and_grad(energy, z)
    kept, accepted = [], 0.0
    for k in range(steps):
        proposal = z - step * drift(grad) + math.sqrt(2 * step) * _randn(z, generator)
        U_prop, grad_prop = energy_and_grad(energy, proposal)
        # log q(z | z') - log q(z' | z), q(a | b) = N(a; b - step G(b), 2 step I)
        forward = (proposal - z + step * drift(grad)).square().sum(-1)
        backward = (z - proposal + step * drift(grad_prop)).square().sum(-1)
        log_alpha = U - U_prop + (forward - backward) / (4 * step)
        u = torch.rand(U.shape, dtype=U.dtype, device=U.device, generator=generator)
        accept = torch.log(u) < log_alpha
        z = torch.where(accept[..., None], proposal, z)
        U = torch.where(accept, U_prop, U)
        grad = torch.where(accept[..., None], grad_prop, grad)
        accepted += accept.float().mean().item()
        if k >= burn_in:
            kept.append(z)
    return z, torch.stack(kept), accepted / steps


# --------------------------------------------------------------------------------------------
# EM


class CountingDecoder:
    """The prior's decoder as (C, T, L) -> speech variance (C, F, T), counting its evaluations
    (one per call, whatever the number of chains): the cost column."""

    def __init__(self, model: nn.Module):
        self.model, self.calls = model, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return rearrange(self.model.decode(z).exp(), "c t f -> c f t")


def posterior_energy(decoder: CountingDecoder, P: Tensor, gain: Tensor, noise_var: Tensor) -> Energy:
    """U(z) per frame = sum_f [log Vx + P / Vx] + |z_t|^2 / 2, Vx = g v(z) + W H: -log p(z | x)
    up to a constant. P, noise_var (F, T), gain (T,) -> z (C, T, L) -> (C, T)."""

    def energy(z: Tensor) -> Tensor:
        Vx = gain * decoder(z) + noise_var
        return (torch.log(Vx) + P / Vx).sum(-2) + 0.5 * z.square().sum(-1)

    return energy


def is_frame_local(model: nn.Module) -> bool:
    """Whether the decoder maps z_t to v_t alone (the frame-wise VAE), so per-frame acceptance is exact."""
    return not any(isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)) for m in model.modules())


@dataclass
class EMResult:
    gain: Tensor  # (F, T) the posterior-mean Wiener gain
    W: Tensor
    H: Tensor
    g: Tensor
    objective: list[float]  # mixture_nll after each M-step
    acceptance: float | None  # mean acceptance of the MCMC E-steps


def vae_nmf_em(model: nn.Module, P: Tensor, cfg: EMConfig, decoder: CountingDecoder | None = None,
               progress: bool = False) -> EMResult:
    """P (F, T) normalised noisy power -> EMResult. The model is not changed (VEM fine-tunes a copy)."""
    device = P.device
    F_, T = P.shape
    decoder = decoder or CountingDecoder(model)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    W, H = nmf_init(F_, T, cfg.nmf_rank, generator=torch.Generator(device=device).manual_seed(int(cfg.seed) + 1),
                    floor=cfg.floor, device=device)
    g = torch.ones(T, device=device)
    frames_first = rearrange(P, "f t -> 1 t f")
    local = is_frame_local(model)

    encoder, optimizer = None, None
    if cfg.estep == "vem":
        encoder = copy.deepcopy(model).train()
        for p in encoder.parameters():
            p.requires_grad_(False)
        params = [p for name, p in encoder.named_parameters() if _is_encoder_parameter(encoder, name)]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=cfg.vem_lr)
        decoder = _SharedCounter(CountingDecoder(encoder), decoder)
        chains = None
    else:
        with torch.no_grad():
            _, mean, _ = model.encode(frames_first, generator)  # (1, T, L)
        n = cfg.ldem_chains if cfg.estep == "ldem" else 1
        jitter = cfg.ldem_jitter if cfg.estep == "ldem" else cfg.mcem_proposal_var if cfg.estep == "mcem" else cfg.mala_jitter
        chains = mean.expand(n, -1, -1) + math.sqrt(jitter) * _randn(mean.expand(n, -1, -1), generator)

    objective, acceptances, speech_var = [], [], None
    for _ in tqdm(range(cfg.em_iterations), desc=f"EM ({cfg.estep})", unit="iter", leave=False, disable=not progress):
        noise_var = W @ H
        if cfg.estep == "vem":
            speech_var = _vem_step(encoder, optimizer, decoder, P, frames_first, g, noise_var, cfg, generator)
        else:
            energy = posterior_energy(decoder, P, g, noise_var)
            if cfg.estep == "mcem":
                chains, samples, rate = metropolis_hastings(energy, chains, cfg.mcem_steps, cfg.mcem_burn_in,
                                                            cfg.mcem_proposal_var, generator, local)
                acceptances.append(rate)
            elif cfg.estep == "mala":
                chains, samples, rate = mala(energy, chains, cfg.mala_steps, cfg.mala_burn_in, cfg.mala_step, generator)
                acceptances.append(rate)
                chains = chains + math.sqrt(cfg.mala_jitter) * _randn(chains, generator)
            else:  # ldem: one Langevin step of every chain, then the reference's jitter
                chains, _ = langevin(energy, chains, 1, cfg.ldem_step, generator)
                samples = chains[None]
                chains = chains + math.sqrt(cfg.ldem_jitter) * _randn(chains, generator)
            with torch.no_grad():
                speech_var = decoder(rearrange(samples, "s c t l -> (s c) t l"))
        with torch.no_grad():
            W, H, g = mixture_mstep(P, speech_var, W, H, g, exponent=cfg.nmf_exponent, floor=cfg.floor)
            objective.append(float(mixture_nll(P, speech_var, W, H, g)))
    with torch.no_grad():
        gain = wiener_gain(g * speech_var, W @ H).mean(0)
    return EMResult(gain, W, H, g, objective, (sum(acceptances) / len(acceptances)) if acceptances else None)


def _is_encoder_parameter(model: nn.Module, name: str) -> bool:
    """The inference network's parameters (VEM fine-tunes them; the decoder stays the prior)."""
    return name.split(".")[0] not in tuple(model.decoder_parts)


class _SharedCounter:
    """A decoder over the fine-tuned copy that counts into the caller's counter."""

    def __init__(self, inner: CountingDecoder, outer: CountingDecoder):
        self.inner, self.outer = inner, outer
        self.model = inner.model

    def __call__(self, z: Tensor) -> Tensor:
        self.outer.calls += 1
        return self.inner(z)


def _vem_step(encoder: nn.Module, optimizer: torch.optim.Optimizer, decoder, P: Tensor, frames_first: Tensor, g: Tensor,
              noise_var: Tensor, cfg: EMConfig, generator: torch.Generator) -> Tensor:
    """One Adam step of the encoder on the negative ELBO of x under the current noise model,
    then one draw of z from q(z | x) -> speech variance (1, F, T)."""
    with torch.enable_grad():
        optimizer.zero_grad()
        z, mean, logvar = encoder.encode(frames_first, generator)
        Vx = g * decoder(z)[0] + noise_var
        loss = (torch.log(Vx) + P / Vx).sum() + cfg.vem_kl_weight * gaussian_kl(mean, logvar).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, mean, logvar = encoder.encode(frames_first, generator)
        return decoder(reparameterise(mean, logvar, generator))


# --------------------------------------------------------------------------------------------
# The enhancer


class VAENMFEnhancer:
    """A waveform enhancer for the enhance path (usedddp.inference): noisy (1, 1, T) -> clean and
    noise streams (the input less the clean estimate); `nfe` counts decoder evaluations."""

    def __init__(self, model: nn.Module, stft: PowerSTFT, cfg: EMConfig, sample_rate: int, device: torch.device,
                 progress: bool = False):
        self.model, self.stft, self.cfg = model.eval(), stft, cfg
        self.decoder = CountingDecoder(self.model)
        self.sample_rate, self.device, self.progress = int(sample_rate), device, progress
        self.hop_length = stft.hop_length
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def nfe(self) -> int:
        return self.decoder.calls

    def __call__(self, x: Tensor, streams: tuple[str, ...] = ("clean", "noise")) -> dict[str, Tensor | None]:
        # The E-steps differentiate through the decoder: leave the caller's inference mode
        # (enhance_waveform's), and copy the input out of it.
        with torch.inference_mode(False), torch.no_grad(), flush_denormals():
            length = x.shape[-1]
            x = x.to(self.device).clone()
            X = self.stft.spec(x)[0]  # (F, T)
            P, _ = normalise_power(X.abs().square(), self.cfg.floor)
            result = vae_nmf_em(self.model, P, self.cfg, self.decoder, self.progress)
            clean = self.stft.wav((result.gain * X)[None], length)
            return {"clean": clean, "noise": x - clean if "noise" in streams else None}
