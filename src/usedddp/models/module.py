"""The LightningModule: orchestrates the three adversarial games and the three training stages.

One discriminator step, then one generator step per batch (manual optimisation). The tensor
maths lives in the generator, the losses and the discriminators.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import nullcontext
from typing import Callable

import lightning as L
import torch
from torch import Tensor, nn

from usedddp.losses.reconstruction import ReconstructionLoss
from usedddp.metrics import band_level_db, band_si_sdr, dnsmos, estoi, pesq_wb, si_sdr
from usedddp.models.fused_step import FusedStep
from usedddp.models.generator import GeneratorOutput, build_generator
from usedddp.models.step import ReferenceStep
from usedddp.stages import ENSEMBLES, TrainingStage, training_stage as stage_spec

log = logging.getLogger(__name__)

class USEDDPModule(L.LightningModule):
    def __init__(
        self,
        codec: nn.Module,
        branch: Callable[..., nn.Module],
        discriminator: Callable[[], nn.Module],
        reconstruction: ReconstructionLoss,
        loss_weights: dict[str, float],
        optimizer_g: Callable,
        optimizer_d: Callable,
        scheduler_g: Callable | None = None,
        scheduler_d: Callable | None = None,
        grad_clip_val: float = 1000.0,
        training_stage: int = 1,
        full_metrics_every_n_val: int = 5,
        val_dnsmos: bool = True,
        sample_rate: int = 16000,
        stage3_prior_mixture: float = 0.0,
        fast_step: bool = False,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.generator = build_generator(codec, branch)
        self.discriminators = nn.ModuleDict({name: discriminator() for name in ENSEMBLES})
        self.reconstruction = reconstruction
        unknown = set(loss_weights) - set(LOSS_KEYS)
        if unknown:
            hint = " (the g/prior_mix/* weights are stage3_prior_mixture times the g/clean/* and g/noise/* ones)" \
                if unknown & set(PRIOR_MIX_KEYS) else ""
            raise ValueError(f"unknown loss weight keys {sorted(unknown)}; known: {LOSS_KEYS}{hint}")
        self.loss_weights = {key: float(loss_weights.get(key, 0.0)) for key in LOSS_KEYS}
        # Not the paper's stage 3 (which has no supervised term): the stage-3 batch already holds
        # independent clean- and noise-prior draws; their sum is a simulated mixture whose sources
        # are known, supervised as in stage 2 at this fraction of stage 2's weights. It reads no
        # clean target of the real noisy recordings. 0 turns it off.
        self.stage3_prior_mixture = float(stage3_prior_mixture)
        for key in PRIOR_MIX_KEYS:
            self.loss_weights[key] = self.stage3_prior_mixture * self.loss_weights[key.replace("prior_mix/", "")]
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.scheduler_g, self.scheduler_d = scheduler_g, scheduler_d
        self.grad_clip_val = grad_clip_val
        self.training_stage = training_stage
        self.full_metrics_every_n_val = full_metrics_every_n_val
        # DNSMOS scores 9 s windows (clips are tiled to fill one): about 0.2 s a window on a CPU.
        self.val_dnsmos = val_dnsmos
        self._input_cache: dict[str, dict[str, float]] = {}
        self.sample_rate = sample_rate
        self.skipped_steps: Counter[str] = Counter()
        self.full_metrics_next_val = False
        self._val_count = 0
        self._val_rows: list[dict[str, float]] = []
        # The step's tensor work (models/step.py): the reference, or with fast_step the fused
        # variant (models/fused_step.py), the same numbers to rounding. Which is faster depends on
        # the model and the hardware (benchmarks/); each model config chooses what was measured.
        self.fast_step = bool(fast_step)

    @property
    def training_stage(self) -> TrainingStage:
        """The USE-DDP training stage (1, 2, 3) being trained, as its spec (usedddp.stages);
        assign a number or a spec."""
        return self._training_stage

    @training_stage.setter
    def training_stage(self, value: int | TrainingStage) -> None:
        self._training_stage = stage_spec(value)

    @property
    def fast_step(self) -> bool:
        """Whether the step is the fused variant (models/fused_step.py) rather than the reference."""
        return isinstance(self.step, FusedStep)

    @fast_step.setter
    def fast_step(self, value: bool) -> None:
        self.step = FusedStep() if value else ReferenceStep()

    def configure_optimizers(self):
        opt_g = self.step.optimizer(self.optimizer_g, self.generator.parameters())
        opt_d = self.step.optimizer(self.optimizer_d, self.discriminators.parameters())
        schedulers = [s(o) for s, o in ((self.scheduler_g, opt_g), (self.scheduler_d, opt_d)) if s is not None]
        return [opt_g, opt_d], schedulers

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        self.train_step(batch, opt_g, opt_d)
        for scheduler in self.lr_schedulers() if isinstance(self.lr_schedulers(), list) else [self.lr_schedulers()]:
            if scheduler is not None:
                scheduler.step()

    def train_step(self, batch, opt_g, opt_d) -> dict[str, Tensor]:
        """One discriminator step, then one generator step, on `batch`: everything training_step
        does each batch but the schedulers (clipping, the finite checks and their all-ranks
        decision, the logs). It also runs without a Trainer (plain torch optimizers, one
        process, nothing logged), so that the benchmarks time this step and not a copy of it.
        Returns the detached logged values."""
        spec = self.training_stage
        out, simulated = self.step.generate(self, batch)
        fakes = self.fakes(out)
        reals = {"clean": batch.clean_prior, "noise": batch.noise_prior, "noisy": batch.noisy}

        d_terms = self.discriminator_terms(reals, fakes)
        self._toggle(opt_d, True)
        # The raw optimizer, so that Lightning's global_step (and trainer.max_steps) counts
        # generator steps only: one per batch.
        self._optimizer_step(getattr(opt_d, "optimizer", opt_d), sum(d_terms.values()), self.discriminators, "d")
        self._toggle(opt_d, False)

        self._toggle(opt_g, True)
        g_terms = self.generator_terms(batch, out, reals, fakes, simulated=simulated, prior_mixture=False)
        g_total = sum(self.loss_weights[k] * v for k, v in g_terms.items())
        deferred = None
        if simulated is None and self._needs_prior_mixture():
            # The prior-mixture pass after the main loss's backward: its graph is built once the
            # first one is freed (the gradient is the same sum).
            deferred = lambda: self.step.prior_mixture_terms(self, batch)  # noqa: E731
        extra = self._optimizer_step(opt_g, g_total, self.generator, "g", then=deferred)
        if extra:
            g_terms.update(extra)
            g_total = g_total.detach() + sum(self.loss_weights[k] * v.detach() for k, v in extra.items())
        self._toggle(opt_g, False)

        logged = {f"train/{k}": v.detach() for k, v in {**d_terms, **g_terms}.items()}
        logged["train/g/total"] = g_total.detach()
        if out.alpha is not None:
            logged.update(scale_stats(out.alpha, "train/alpha"))
            logged.update(scale_stats(out.beta, "train/beta"))
        for stream, branch in out.branches.items():
            logged.update(codebook_stats(branch.codes, self.generator.branches[stream].quantizer.codebook_size, f"train/codebook/{stream}"))
        logged["train/lr/g"] = torch.tensor(opt_g.param_groups[0]["lr"])
        logged["train/lr/d"] = torch.tensor(opt_d.param_groups[0]["lr"])
        logged["train/stage"] = torch.tensor(float(spec.number))
        logged["train/d/total"] = sum(d_terms.values()).detach()
        if self._trainer is not None:
            self.log_dict(logged, on_step=True, batch_size=batch.noisy.shape[0])
            self.log_dict({"g": g_total.detach(), "d": logged["train/d/total"]}, prog_bar=True, logger=False, batch_size=batch.noisy.shape[0])
        return logged

    def _toggle(self, optimizer, on: bool) -> None:
        # Lightning's toggling (requires_grad off for the other player's parameters) needs its Trainer.
        if self._trainer is not None:
            (self.toggle_optimizer if on else self.untoggle_optimizer)(optimizer)

    def fakes(self, out: GeneratorOutput) -> dict[str, Tensor]:
        return {"clean": out.clean, "noise": out.noise, "noisy": out.reconstruction}

    def discriminator_terms(self, reals: dict[str, Tensor], fakes: dict[str, Tensor]) -> dict[str, Tensor]:
        """LS-GAN discriminator loss per playing ensemble (the step's strategy computes it)."""
        return self.step.discriminator_terms(self, reals, fakes)

    def generator_terms(self, batch, out: GeneratorOutput, reals: dict[str, Tensor], fakes: dict[str, Tensor],
                        simulated: GeneratorOutput | None = None, prior_mixture: bool = True) -> dict[str, Tensor]:
        """Unweighted generator loss terms, keyed as in `loss_weights` (and the logs); `simulated`:
        the generator's output on the prior draws' mixture, if `generate` computed it, else (with
        `prior_mixture`) stage 3's prior-mixture terms come from a pass of their own."""
        terms = self.step.generator_terms(self, batch, out, reals, fakes, simulated)
        if prior_mixture and simulated is None and self._needs_prior_mixture():
            terms.update(self.step.prior_mixture_terms(self, batch))
        return terms

    def _needs_prior_mixture(self) -> bool:
        return self.training_stage.number == 3 and self.stage3_prior_mixture > 0

    def _finite(self, loss: Tensor) -> bool:
        finite = bool(torch.isfinite(loss.detach()))
        if self._trainer is not None:  # every process takes the same decision (else DDP's gradient all-reduce hangs)
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        return finite

    def _optimizer_step(self, optimizer, loss: Tensor, module: nn.Module, name: str,
                        then: Callable[[], dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """Backward and step, unless the loss or the gradient is NaN/Inf: then the step is
        skipped on every process, counted, and the weights are untouched. `then`: more loss
        terms (weighted by loss_weights) whose graph is built after `loss`'s backward pass and
        whose gradient is added before the step; returns them."""
        optimizer.zero_grad(set_to_none=True)
        attached = self._trainer is not None
        finite, extra = self._finite(loss), {}
        if finite:
            # Under DDP the gradients are all-reduced once, after the last backward pass.
            sync = self.trainer.strategy.block_backward_sync() if attached and then is not None \
                and hasattr(self.trainer.strategy, "block_backward_sync") else nullcontext()
            with sync:
                self.step.backward(self, loss, module, name, attached)
            if then is not None:
                extra = then()
                more = sum(self.loss_weights[k] * v for k, v in extra.items())
                finite = self._finite(more)
                if finite:
                    self.step.backward(self, more, module, name, attached)
        if finite:
            norm, part_norms = self.step.grad_norms(self, module, name)
            finite = bool(torch.isfinite(norm))
            if finite and part_norms:
                self.step.clip(self, module, name, norm)
            if attached:
                self.log_dict({f"train/grad_norm/{name}": norm, **{f"train/grad_norm/{name}/{part}": v for part, v in part_norms.items()}}, on_step=True)
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps[name] += 1
            log.warning("training stage %d step %d: non-finite %s loss or gradient, %s step skipped (%d so far)", self.training_stage.number, self.global_step, name, name, self.skipped_steps[name])
            if attached:
                self.log(f"train/skipped/{name}", float(self.skipped_steps[name]), on_step=True)
            # With every gradient None the optimizer leaves weights and state alone, but Lightning
            # still counts the step: trainer.max_steps bounds the batches (with max_epochs=-1 a
            # persistently non-finite loss would otherwise never end the stage).
            optimizer.step()
            return extra
        optimizer.step()
        return extra

    # -- validation -----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_count += 1
        self._full_metrics = self.full_metrics_next_val or (self.full_metrics_every_n_val > 0 and self._val_count % self.full_metrics_every_n_val == 0)
        self._val_rows = []

    def validation_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """Scores the clean stream (and the input); returns the streams (B, 1, T), which
        callbacks.ValidationMedia logs for the first clips without a second forward pass."""
        out = self.generator(batch.noisy, streams=("clean", "noise"))
        for i, name in enumerate(batch.name):
            noisy, clean, ref = batch.noisy[i], out.clean[i], None if batch.clean is None else batch.clean[i]
            # Without references DNSMOS is the only quality signal, so it runs every validation.
            full, with_dnsmos = self._full_metrics, self._full_metrics and self.val_dnsmos or ref is None
            row = {"mix/si_sdr": si_sdr(out.reconstruction[i], noisy), **self._input_scores(name, noisy, ref, full, with_dnsmos)}
            row["alpha"], row["beta"] = float(out.alpha[i]), float(out.beta[i])
            if ref is not None:
                row["si_sdr"] = si_sdr(clean, ref)
                # Whether the clean stream keeps speech above 4 kHz (a low-pass split scores
                # well on full-band SI-SDR and PESQ); NaN for a reference with no such band.
                if self.sample_rate >= 16000:
                    row["hf_level"] = band_level_db(clean, ref, self.sample_rate)
                    row["hf_si_sdr"] = band_si_sdr(clean, ref, self.sample_rate)
                if full:
                    row["estoi"], row["pesq_wb"] = estoi(clean, ref, self.sample_rate), pesq_wb(clean, ref, self.sample_rate)
            if with_dnsmos:
                row.update({f"dnsmos/{k}": v for k, v in dnsmos(clean, self.sample_rate).items()})
            self._val_rows.append(row)
        return {"clean": out.clean, "noise": out.noise, "reconstruction": out.reconstruction}

    def _input_scores(self, name: str, noisy: Tensor, ref: Tensor | None, full: bool, with_dnsmos: bool) -> dict[str, float]:
        """The noisy input's own scores (the row every table compares against); the clips are
        fixed, so each score is computed once per clip and cached."""
        cache = self._input_cache.setdefault(name, {})
        if ref is not None and "input/si_sdr" not in cache:
            cache["input/si_sdr"] = si_sdr(noisy, ref)
            if self.sample_rate >= 16000:  # the 4-8 kHz band exists
                cache["input/hf_level"] = band_level_db(noisy, ref, self.sample_rate)
                cache["input/hf_si_sdr"] = band_si_sdr(noisy, ref, self.sample_rate)
        if ref is not None and full and "input/estoi" not in cache:
            cache["input/estoi"], cache["input/pesq_wb"] = estoi(noisy, ref, self.sample_rate), pesq_wb(noisy, ref, self.sample_rate)
        if with_dnsmos and "input/dnsmos/ovrl" not in cache:
            cache.update({f"input/dnsmos/{k}": v for k, v in dnsmos(noisy, self.sample_rate).items()})
        wanted = ["input/si_sdr"] * (ref is not None) + ["input/hf_level", "input/hf_si_sdr"] * (ref is not None and self.sample_rate >= 16000)
        wanted += ["input/estoi", "input/pesq_wb"] * (ref is not None and full)
        wanted += [f"input/dnsmos/{k}" for k in ("sig", "bak", "ovrl", "p808")] * with_dnsmos
        return {key: cache[key] for key in wanted}

    def on_validation_epoch_end(self) -> None:
        keys = sorted({k for row in self._val_rows for k in row})
        means = {}
        for key in keys:
            values = [row[key] for row in self._val_rows if key in row and not math.isnan(row[key])]
            means[f"val/{key}"] = sum(values) / len(values) if values else math.nan
        if means:
            self.log_dict(means, sync_dist=True)

    # -- checkpoints ----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Beside what callbacks.RunConfigInCheckpoint stored there (the config that rebuilds the model).
        checkpoint.setdefault("usedddp", {}).update(stage=self.training_stage.number, skipped_steps=dict(self.skipped_steps))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("usedddp", {})
        if "stage" in meta:
            self.training_stage = int(meta["stage"])
        self.skipped_steps = Counter(meta.get("skipped_steps", {}))


@torch.no_grad()
def scale_stats(scale: Tensor, prefix: str) -> dict[str, Tensor]:
    """Mean, std (over the batch, 0 for one item), min and max of a (B, 1, 1) mixture scale."""
    scale = scale.detach().float().flatten()
    return {f"{prefix}/mean": scale.mean(), f"{prefix}/std": scale.std(correction=0), f"{prefix}/min": scale.min(), f"{prefix}/max": scale.max()}


@torch.no_grad()
def codebook_stats(codes: Tensor, codebook_size: int, prefix: str, per_codebook: int = 4) -> dict[str, Tensor]:
    """Usage and perplexity of RVQ codes (B, Q, N) over the batch, per codebook:
    usage = fraction of the codebook's entries that occur; perplexity = exp(entropy of the code
    histogram), from 1 (one code) to codebook_size (all equally often). Logged as the mean over
    the Q codebooks, plus the perplexity of each of the first `per_codebook`. Empty without codes."""
    if codes.shape[1] == 0 or codebook_size <= 0:
        return {}
    q = codes.shape[1]
    flat = codes.detach().transpose(0, 1).reshape(q, -1).long()
    counts = torch.zeros(q, codebook_size, device=codes.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float))
    probs = counts / counts.sum(dim=1, keepdim=True)
    perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum(dim=1))
    usage = (counts > 0).float().mean(dim=1)
    out = {f"{prefix}/usage": usage.mean(), f"{prefix}/perplexity": perplexity.mean()}
    out.update({f"{prefix}/perplexity/q{i}": perplexity[i] for i in range(min(per_codebook, q))})
    return out


LOSS_KEYS = tuple(
    [f"g/{s}/{t}" for s in ("clean", "noise", "mix") for t in ("mel", "stft", "sisdr")]
    + ["g/scale"]
    + [f"vq/{s}/{t}" for s in ("clean", "noise") for t in ("commitment", "codebook")]
    + [f"adv/{e}/{t}" for e in ENSEMBLES for t in ("gen", "feat")]
)
# Stage 3's optional supervised term on the prior draws' own mixture; weighted by
# stage3_prior_mixture times the stage-2 weight of the same term (g/clean/mel, ...).
PRIOR_MIX_KEYS = tuple(f"g/prior_mix/{s}/{t}" for s in ("clean", "noise") for t in ("mel", "stft", "sisdr"))
