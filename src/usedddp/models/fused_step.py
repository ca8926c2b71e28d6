"""The fused training step (model.fast_step=true): ReferenceStep's numbers to rounding with the
launch-bound parts batched, for hardware where a step is bound by operator launches rather than
arithmetic or memory.

- the discriminator ensembles as one grouped convolution per layer (JointEnsembles);
- the adversarial and reconstruction losses stacked, one call over every ensemble or pair;
- stage 3's two generator passes (noisy input, prior mixture) as one pass over both stacked;
- fused AdamW and one `_foreach_norm` over every gradient.

What it costs: the stacked stage-3 pass holds both passes' graphs at once (ReferenceStep adds
the second pass's gradient after the first graph is freed), and the grouped ensembles hold each
band zero-padded to the widest. Measured: benchmarks/memory_cpu.json, benchmarks/train_step_ops_cpu.json.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor, nn

from usedddp.losses.adversarial import stacked_discriminator_loss, stacked_feature_matching_loss, stacked_generator_loss
from usedddp.models.components.discriminator import JointEnsembles
from usedddp.models.generator import split_output
from usedddp.models.step import ReferenceStep, grad_part
from usedddp.outputs import StackedDiscriminatorOutput

if TYPE_CHECKING:
    from usedddp.models.generator import GeneratorOutput
    from usedddp.models.module import USEDDPModule


class FusedStep(ReferenceStep):
    def __init__(self):
        self._joint: dict[tuple[str, ...], JointEnsembles] = {}
        self._parts: dict[str, tuple] = {}  # player -> (first parameter, parameters, parts)

    def optimizer(self, factory, params):
        """factory(params, fused=True) where the optimizer takes it and the config chose no
        implementation: torch's CPU default is a Python loop over the parameters (about ten ops
        each: 2,378 parameters in dac16k), the fused kernel one op for all."""
        keywords = getattr(factory, "keywords", None)
        func = getattr(factory, "func", None)
        if keywords is not None and not {"fused", "foreach"} & set(keywords) and "fused" in inspect.signature(func).parameters:
            return factory(params, fused=True)
        return factory(params)

    def generate(self, module: USEDDPModule, batch) -> tuple[GeneratorOutput, GeneratorOutput | None]:
        """The generator on the noisy input and, where stage 3's prior-mixture term needs it, on
        the prior draws' own mixture, as one pass over both stacked on the batch axis (the
        generator is per item; each part keeps its own VQ losses). The second is None where the
        passes cannot be stacked (quantizer dropout draws per batch; signals of other shapes):
        prior_mixture_terms then runs it."""
        spec = module.training_stage
        mixture = spec.number == 3 and module.stage3_prior_mixture > 0
        dropout = any(b.quantizer.rvq is not None and b.quantizer.rvq.quantizer_dropout > 0 for b in module.generator.branches.values())
        if not (mixture and not dropout and batch.noisy.shape == batch.clean_prior.shape == batch.noise_prior.shape):
            return super().generate(module, batch)
        both = module.generator(torch.cat([batch.noisy, batch.clean_prior + batch.noise_prior]), streams=spec.streams, per_item_losses=True)
        out, simulated = split_output(both, [batch.noisy.shape[0]] * 2)
        return out, simulated

    def judge_jointly(self, module: USEDDPModule, names: tuple[str, ...], *wavs: list[Tensor]) -> list[StackedDiscriminatorOutput] | None:
        """`judge` of every ensemble in `names` in one grouped pass (JointEnsembles): wavs[k][e]
        (B, 1, T) is the k-th signal ensemble names[e] judges. None when the signals differ in
        shape (they cannot be stacked)."""
        flat = [w for ws in wavs for w in ws]
        if not names or len({w.shape for w in flat}) > 1:
            return None
        joint = self._joint.get(names)
        ensembles = [module.discriminators[n] for n in names]
        # Rebuilt if an ensemble or its parameters were replaced (load_state_dict(assign=True)).
        if joint is None or any(a is not b for a, b in zip(joint.ensembles, ensembles)) \
                or joint.convs[0][0].weight_v is not ensembles[0].discriminators[0].band_convs[0][0][0].weight_v:
            joint = self._joint[names] = JointEnsembles(ensembles)
        # (k*B, E, T): the k signals of each ensemble stacked on the batch axis, as `judge` does.
        stacked = torch.stack([torch.cat([ws[e] for ws in wavs]) for e in range(len(names))], dim=1)
        return joint(rearrange(stacked, "n e 1 t -> n e t")).chunk(len(wavs))

    def discriminator_terms(self, module: USEDDPModule, reals: dict[str, Tensor], fakes: dict[str, Tensor]) -> dict[str, Tensor]:
        names = module.training_stage.ensembles
        joint = self.judge_jointly(module, names, [reals[n] for n in names], [fakes[n].detach() for n in names])
        if joint is None:
            return super().discriminator_terms(module, reals, fakes)
        return dict(zip((f"d/{name}" for name in names), stacked_discriminator_loss(*joint).unbind()))

    def adversarial_terms(self, module: USEDDPModule, fakes: dict[str, Tensor], reals: dict[str, Tensor]) -> dict[str, Tensor]:
        spec = module.training_stage
        joint = self.judge_jointly(module, spec.ensembles, [fakes[n] for n in spec.ensembles], [reals[n] for n in spec.ensembles])
        if joint is None:
            return super().adversarial_terms(module, fakes, reals)
        paired = [name == "noisy" or name in spec.targets for name in spec.ensembles]
        gen, feat = stacked_generator_loss(joint[0]).unbind(), stacked_feature_matching_loss(joint[1], joint[0], paired).unbind()
        terms = {}
        for name, g, f in zip(spec.ensembles, gen, feat):
            terms[f"adv/{name}/gen"], terms[f"adv/{name}/feat"] = g, f
        return terms

    def reconstruction_terms(self, module: USEDDPModule, pairs: list[tuple[Tensor, Tensor]]) -> list[dict[str, Tensor]]:
        """One call over the pairs stacked (ReconstructionLoss.stacked) where their shapes agree."""
        if not (len(pairs) > 1 and len({t.shape for pair in pairs for t in pair}) == 1):
            return super().reconstruction_terms(module, pairs)
        values = module.reconstruction(torch.stack([e for e, _ in pairs]), torch.stack([t for _, t in pairs]))
        # One value for the whole stack (a replaced loss) applies to each pair.
        values = {k: (v if v.ndim else v.expand(len(pairs))).unbind() for k, v in values.items()}
        return [{k: v[i] for k, v in values.items()} for i in range(len(pairs))]

    def backward(self, module: USEDDPModule, loss: Tensor, player: nn.Module, name: str, attached: bool) -> None:
        """Without a Trainer (which freezes the other player's parameters) the backward is limited
        to `player`'s parameters: the reference also fills the other player's gradients, which
        its own step clears before use."""
        if attached:
            module.manual_backward(loss)
        else:
            params, _ = self._grad_parts(player, name)
            loss.backward(inputs=[p for p in params if p.requires_grad])

    def grad_norms(self, module: USEDDPModule, player: nn.Module, name: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The reference's norms with one `_foreach_norm` over every gradient (get_total_norm per
        part adds a copy op per parameter)."""
        _, parts = self._grad_parts(player, name)
        grads = {part: [p.grad for p in ps if p.grad is not None] for part, ps in parts.items()}
        grads = {part: gs for part, gs in grads.items() if gs}
        self._flat = [g for gs in grads.values() for g in gs]
        if not self._flat:
            return torch.zeros(()), {}
        norms = torch._foreach_norm(self._flat)
        part_norms, start = {}, 0
        for part, gs in grads.items():
            part_norms[part] = torch.linalg.vector_norm(torch.stack(norms[start:start + len(gs)]))
            start += len(gs)
        return torch.linalg.vector_norm(torch.stack(list(part_norms.values()))), part_norms

    def clip(self, module: USEDDPModule, player: nn.Module, name: str, norm: Tensor) -> None:
        # clip_grads_with_norm_'s factor, min(1, max / (norm + 1e-6)), without a multiply by 1.
        if self._flat and bool(norm + 1e-6 > module.grad_clip_val):
            torch._foreach_mul_(self._flat, (module.grad_clip_val / (norm + 1e-6)).clamp(max=1.0))

    def _grad_parts(self, player: nn.Module, name: str) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """player's parameters and their grouping into logged parts, built once (rebuilt if the
        parameters were replaced)."""
        first = next(player.parameters(), None)
        cached = self._parts.get(name)
        if cached is None or cached[0] is not first:
            parts: dict[str, list[nn.Parameter]] = {}
            for pname, p in player.named_parameters():
                parts.setdefault(grad_part(name, pname), []).append(p)
            cached = self._parts[name] = (first, list(player.parameters()), parts)
        return cached[1], cached[2]
