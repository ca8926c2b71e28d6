"""The training step's tensor work, as a strategy the LightningModule calls: the generator
pass(es), the players' loss terms, the backward pass and the gradient norms.

`ReferenceStep` is the plain per-module implementation and the default; it is also the oracle
the variants are tested against (tests/test_fast_step.py). `usedddp.models.fused_step.FusedStep`
(model.fast_step=true) batches the launch-bound parts, the same numbers to rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from usedddp.losses.adversarial import discriminator_loss, feature_matching_loss, generator_loss
from usedddp.losses.reconstruction import scale_anchor_loss

if TYPE_CHECKING:
    from usedddp.models.generator import GeneratorOutput
    from usedddp.models.module import USEDDPModule


class ReferenceStep:
    """One ensemble, one loss, one parameter at a time.

    Stage 3's supervised term on the prior draws' own mixture (stage3_prior_mixture) needs a
    second generator pass. `generate` leaves it out, and the module adds its gradient after the
    main generator loss's backward pass has freed the first pass's graph, so the two graphs are
    never held at once: the step's peak is one generator pass plus the discriminators, not two."""

    def optimizer(self, factory, params):
        return factory(params)

    def generate(self, module: USEDDPModule, batch) -> tuple[GeneratorOutput, GeneratorOutput | None]:
        """(the generator's output on the noisy input, on the prior draws' mixture or None when
        prior_mixture_terms computes it later)."""
        return module.generator(batch.noisy, streams=module.training_stage.streams), None

    def judge(self, module: USEDDPModule, name: str, *wavs: Tensor):
        """One pass of ensemble `name` over signals stacked on the batch axis: half the kernel
        launches of one pass each. Per-item normalisation keeps the items independent."""
        return module.discriminators[name](torch.cat(wavs)).chunk(len(wavs))

    def discriminator_terms(self, module: USEDDPModule, reals: dict[str, Tensor], fakes: dict[str, Tensor]) -> dict[str, Tensor]:
        """LS-GAN discriminator loss per playing ensemble; fakes are detached, so this step
        cannot reach the generator."""
        return {f"d/{name}": discriminator_loss(*self.judge(module, name, reals[name], fakes[name].detach()))
                for name in module.training_stage.ensembles}

    def reconstruction_terms(self, module: USEDDPModule, pairs: list[tuple[Tensor, Tensor]]) -> list[dict[str, Tensor]]:
        return [module.reconstruction(e, t) for e, t in pairs]

    def adversarial_terms(self, module: USEDDPModule, fakes: dict[str, Tensor], reals: dict[str, Tensor]) -> dict[str, Tensor]:
        spec, terms = module.training_stage, {}
        for name in spec.ensembles:
            d_fake, d_real = self.judge(module, name, fakes[name], reals[name])
            terms[f"adv/{name}/gen"] = generator_loss(d_fake)
            # Paired when the 'real' example is this fake's own target (the noisy input for the
            # reconstruction; the simulated sources in stages 1-2).
            terms[f"adv/{name}/feat"] = feature_matching_loss(d_real, d_fake, paired=name == "noisy" or name in spec.targets)
        return terms

    def generator_terms(self, module: USEDDPModule, batch, out: GeneratorOutput, reals: dict[str, Tensor],
                        fakes: dict[str, Tensor], simulated: GeneratorOutput | None = None) -> dict[str, Tensor]:
        """Unweighted generator loss terms of `out`, keyed as in `loss_weights` (and the logs);
        with `simulated` (the generator on the prior draws' mixture) its prior-mixture terms too."""
        spec, terms = module.training_stage, {}
        pairs = [(f"g/{stream}", fakes[stream], getattr(batch, stream)) for stream in spec.targets]
        if simulated is not None:
            pairs += prior_mixture_pairs(batch, simulated)
        if spec.mixture:
            pairs.append(("g/mix", out.reconstruction, batch.noisy))
        for (prefix, _, _), values in zip(pairs, self.reconstruction_terms(module, [(e, t) for _, e, t in pairs])):
            for name, value in values.items():
                terms[f"{prefix}/{name}"] = value
        if spec.mixture:
            terms["g/scale"] = scale_anchor_loss(out.alpha, out.beta)
        for stream, branch in out.branches.items():
            terms[f"vq/{stream}/commitment"] = branch.commitment
            terms[f"vq/{stream}/codebook"] = branch.codebook
        terms.update(self.adversarial_terms(module, fakes, reals))
        return terms

    def prior_mixture_terms(self, module: USEDDPModule, batch) -> dict[str, Tensor]:
        """Stage 3's prior-mixture terms from their own generator pass (used when `generate`
        did not compute that pass)."""
        simulated = module.generator(batch.clean_prior + batch.noise_prior, streams=module.training_stage.streams)
        pairs = prior_mixture_pairs(batch, simulated)
        values = self.reconstruction_terms(module, [(e, t) for _, e, t in pairs])
        return {f"{prefix}/{name}": value for (prefix, _, _), terms in zip(pairs, values) for name, value in terms.items()}

    def backward(self, module: USEDDPModule, loss: Tensor, player: nn.Module, name: str, attached: bool) -> None:
        if attached:
            module.manual_backward(loss)
        else:
            loss.backward()

    def grad_norms(self, module: USEDDPModule, player: nn.Module, name: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Pre-clip L2 norms of the gradients: the total (what is clipped) and per part
        (generator: encoder, decoder, clean and noise branches; discriminators: one per ensemble)."""
        parts: dict[str, list[Tensor]] = {}
        for pname, p in player.named_parameters():
            if p.grad is not None:
                parts.setdefault(grad_part(name, pname), []).append(p)
        part_norms = {part: torch.nn.utils.get_total_norm([p.grad for p in params]) for part, params in parts.items()}
        norm = torch.linalg.vector_norm(torch.stack(list(part_norms.values()))) if part_norms else torch.zeros(())
        self._clipped = [p for params in parts.values() for p in params]
        return norm, part_norms

    def clip(self, module: USEDDPModule, player: nn.Module, name: str, norm: Tensor) -> None:
        if self._clipped:
            torch.nn.utils.clip_grads_with_norm_(self._clipped, module.grad_clip_val, norm)


def prior_mixture_pairs(batch, simulated: GeneratorOutput) -> list[tuple[str, Tensor, Tensor]]:
    """(log prefix, estimate, target) of stage 3's supervised term on the prior draws' mixture."""
    return [(f"g/prior_mix/{stream}", getattr(simulated, stream), target)
            for stream, target in (("clean", batch.clean_prior), ("noise", batch.noise_prior))]


def grad_part(player: str, param_name: str) -> str:
    """The part a parameter's gradient norm is logged under: for the generator the codec's
    submodule or the branch ("codec.encoder.x" -> "encoder", "branches.clean.x" -> "clean"), for
    the discriminators the ensemble ("noisy.x" -> "noisy")."""
    names = param_name.split(".")
    return names[1] if player == "g" and len(names) > 2 else names[0]
