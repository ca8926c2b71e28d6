"""Invariants of the LightningModule: the three adversarial games, the three stages, the
straight-through quantizer and the non-finite step guard. Fixtures in conftest.py."""

import logging
import math
import warnings

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from usedddp.data.batches import SimulatedBatch, UnpairedBatch, collate_simulated
from usedddp.models.components.quantizer import ResidualQuantizer
from usedddp.models.build import split_weights
from usedddp.models.module import LOSS_KEYS, PRIOR_MIX_KEYS
from usedddp.stages import ENSEMBLES, TRAINING_STAGES as STAGES

SR = 16000
T = 4000  # 0.25 s


def sources(batch=2, length=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / SR
    f0 = 200 + 100 * torch.rand(batch, 1, 1, generator=g)
    clean = 0.3 * torch.sin(2 * torch.pi * f0 * t) * (1 + 0.5 * torch.sin(2 * torch.pi * 3 * t))
    noise = 0.1 * torch.randn(batch, 1, length, generator=g)
    return clean, noise


def simulated(batch=2, length=T, seed=0):
    clean, noise = sources(batch, length, seed)
    return SimulatedBatch(noisy=clean + noise, clean=clean, noise=noise)


def unpaired(batch=2, length=T, seed=0):
    clean, noise = sources(batch, length, seed)
    other_clean, other_noise = sources(batch, length, seed + 1)
    return UnpairedBatch(noisy=clean + noise, clean_prior=other_clean, noise_prior=other_noise)


def reals_of(batch):
    return {"clean": batch.clean_prior, "noise": batch.noise_prior, "noisy": batch.noisy}


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def unchanged(module, before):
    return [name for name, p in module.named_parameters() if not torch.equal(p, before[name])] == []


def n_changed(module, before):
    return sum(not torch.equal(p, before[name]) for name, p in module.named_parameters())


def forward(module, batch):
    out = module.generator(batch.noisy, streams=module.training_stage.streams)
    return out, module.fakes(out), reals_of(batch)


def weighted_total(module, terms):
    return sum(module.loss_weights[k] * v for k, v in terms.items())


# -- optimizers and the two players ------------------------------------------------------------


def test_optimizers_partition_the_parameters(make_module):
    module = make_module()
    (opt_g, opt_d), _ = module.configure_optimizers()
    g_ids = {id(p) for group in opt_g.param_groups for p in group["params"]}
    d_ids = {id(p) for group in opt_d.param_groups for p in group["params"]}
    assert g_ids == {id(p) for p in module.generator.parameters()}
    assert d_ids == {id(p) for p in module.discriminators.parameters()}
    assert not g_ids & d_ids
    assert g_ids | d_ids == {id(p) for p in module.parameters()}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_discriminator_step_leaves_generator_unchanged(make_module, stage):
    module = make_module()
    module.training_stage = stage
    (opt_g, opt_d), _ = module.configure_optimizers()
    batch = simulated() if stage < 3 else unpaired()
    out, fakes, reals = forward(module, batch)
    g_before, d_before = snapshot(module.generator), snapshot(module.discriminators)

    d_terms = module.discriminator_terms(reals, fakes)
    assert set(d_terms) == {f"d/{name}" for name in STAGES[stage].ensembles}
    opt_d.zero_grad(set_to_none=True)
    sum(d_terms.values()).backward()
    assert all(p.grad is None for p in module.generator.parameters()), "the D loss reached the generator"
    opt_d.step()
    assert unchanged(module.generator, g_before)
    for name in ENSEMBLES:
        moved = n_changed(module.discriminators[name], {k.removeprefix(f"{name}."): v for k, v in d_before.items() if k.startswith(f"{name}.")})
        assert (moved > 0) == (name in STAGES[stage].ensembles), name


@pytest.mark.parametrize("toggle", [True, False])
def test_generator_step_leaves_discriminators_unchanged(make_module, toggle):
    module = make_module()
    module.training_stage = 2
    (opt_g, opt_d), _ = module.configure_optimizers()
    batch = simulated()
    out, fakes, reals = forward(module, batch)
    g_before, d_before = snapshot(module.generator), snapshot(module.discriminators)
    if toggle:  # as Lightning's toggle_optimizer(opt_g): the other optimizer's params are frozen
        for p in module.discriminators.parameters():
            p.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    total = weighted_total(module, module.generator_terms(batch, out, reals, fakes))
    assert torch.isfinite(total)
    total.backward()
    d_grads = [p.grad is not None for p in module.discriminators.parameters()]
    if toggle:
        assert not any(d_grads), "the generator loss accumulated gradient into frozen discriminator parameters"
    else:
        assert any(d_grads)  # the adversarial terms do reach D: the partition of optimizers is what protects it
    opt_g.step()
    assert unchanged(module.discriminators, d_before)
    assert n_changed(module.generator, g_before) > 0


# -- stages ------------------------------------------------------------------------------------


class ForbiddenRead(Exception):
    pass


class StrictBatch:
    """Wraps a batch and refuses every field but the ones stage 3 may see."""

    ALLOWED = ("noisy", "clean_prior", "noise_prior")

    def __init__(self, batch):
        object.__setattr__(self, "_batch", batch)

    def __getattribute__(self, name):
        if name in StrictBatch.ALLOWED:
            return getattr(object.__getattribute__(self, "_batch"), name)
        if name.startswith("__"):  # isinstance() and friends; not batch data
            return object.__getattribute__(self, name)
        raise ForbiddenRead(f"stage read batch.{name}")


def stage_computation(module, batch):
    out, fakes, reals = forward(module, batch)
    d_terms = module.discriminator_terms(reals, fakes)
    g_terms = module.generator_terms(batch, out, reals, fakes)
    return out, d_terms, g_terms


def test_stage3_reads_only_noisy_and_priors(make_module):
    module = make_module()
    module.training_stage = 3
    # A SimulatedBatch underneath: its clean and noise targets exist, and must not be read.
    out, d_terms, g_terms = stage_computation(module, StrictBatch(simulated()))
    assert not [k for k in g_terms if k.startswith(("g/clean/", "g/noise/"))]
    assert {"g/mix/mel", "g/mix/stft", "g/mix/sisdr", "g/scale"} <= set(g_terms)
    total = weighted_total(module, g_terms) + sum(d_terms.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("stage", [1, 2])
def test_stages_1_and_2_read_the_clean_target(make_module, stage):
    module = make_module()
    module.training_stage = stage
    with pytest.raises(ForbiddenRead, match="batch.clean$"):
        stage_computation(module, StrictBatch(simulated()))


def test_stage3_runs_on_unpaired_batches(make_module):
    module = make_module()
    module.training_stage = 3
    _, d_terms, g_terms = stage_computation(module, unpaired())
    assert all(torch.isfinite(v) for v in {**d_terms, **g_terms}.values())
    # An unpaired batch in a supervised stage fails loudly (it has no target).
    module.training_stage = 2
    with pytest.raises(AttributeError, match="clean"):
        stage_computation(module, unpaired())


def test_stage3_lightning_fit_with_strict_batches(make_module, tmp_path):
    """The whole training_step of stage 3 (both optimizer steps, logging, Lightning's batch
    transfer) sees nothing but noisy input and priors."""
    module = make_module()
    module.training_stage = 3
    items = [simulated(batch=1, seed=i) for i in range(4)]
    items = [SimulatedBatch(b.noisy[0], b.clean[0], b.noise[0]) for b in items]
    loader = DataLoader(items, batch_size=2, collate_fn=lambda xs: StrictBatch(collate_simulated(xs)))
    g_before = snapshot(module.generator)
    fit(module, loader, max_steps=2, root=tmp_path)
    assert module.trainer.global_step == 2 and not module.skipped_steps
    assert n_changed(module.generator, g_before) > 0


def test_stage1_runs_only_the_clean_stream(make_module):
    module = make_module()
    module.training_stage = 1
    batch = simulated()
    out, d_terms, g_terms = stage_computation(module, batch)
    assert out.noise is None and out.reconstruction is None and out.alpha is None
    assert set(out.branches) == {"clean"}
    assert set(d_terms) == {"d/clean"}
    assert set(g_terms) <= set(LOSS_KEYS)
    assert not [k for k in g_terms if "noise" in k or "noisy" in k or "mix" in k or k == "g/scale"]
    assert {"g/clean/mel", "g/clean/stft", "g/clean/sisdr", "adv/clean/gen", "adv/clean/feat"} <= set(g_terms)
    (weighted_total(module, g_terms) + sum(d_terms.values())).backward()
    assert all(p.grad is None for p in module.generator.branches["noise"].parameters())
    for name in ("noise", "noisy"):
        assert all(p.grad is None for p in module.discriminators[name].parameters()), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.generator.branches["clean"].parameters())


@pytest.mark.parametrize("stage", [2, 3])
def test_stages_2_and_3_play_all_ensembles(make_module, stage):
    module = make_module()
    module.training_stage = stage
    batch = simulated() if stage == 2 else unpaired()
    out, d_terms, g_terms = stage_computation(module, batch)
    assert set(d_terms) == {f"d/{name}" for name in ENSEMBLES}
    assert set(g_terms) <= set(LOSS_KEYS) | set(PRIOR_MIX_KEYS)
    assert {f"adv/{name}/{t}" for name in ENSEMBLES for t in ("gen", "feat")} <= set(g_terms)
    assert {"vq/clean/commitment", "vq/noise/commitment", "g/mix/sisdr", "g/scale"} <= set(g_terms)
    assert ("g/noise/mel" in g_terms) == (stage == 2)
    weighted_total(module, g_terms).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.generator.branches["noise"].parameters())


def test_stage_setter_refuses_unknown_stage(make_module):
    module = make_module()
    with pytest.raises(ValueError, match="stage"):
        module.training_stage = 4
    assert module.training_stage.number == 1


def test_unknown_loss_weight_keys_raise(small_model_cfg):
    # The module's own error, not Hydra's wrapper: components instantiated, the module called directly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build = instantiate(split_weights(small_model_cfg)[0], _partial_=True)
    weights = dict(small_model_cfg.loss_weights)
    with pytest.raises(ValueError, match="g/clean/snr"):
        build(loss_weights={**weights, "g/clean/snr": 1.0})
    with pytest.raises(ValueError, match="adv/mix/gen"):
        build(loss_weights={"adv/mix/gen": 1.0})
    # Known keys that are left out weigh 0; the stage-3 prior-mixture terms are derived from the
    # stage-2 weights (stage3_prior_mixture times them), not set by key.
    module = build(loss_weights={"g/clean/mel": 2.0})
    assert set(module.loss_weights) == set(LOSS_KEYS) | set(PRIOR_MIX_KEYS)
    assert module.loss_weights["g/clean/mel"] == 2.0 and module.loss_weights["adv/noisy/gen"] == 0.0
    assert module.loss_weights["g/prior_mix/clean/mel"] == pytest.approx(2.0 * module.stage3_prior_mixture)
    assert set(build(loss_weights=weights).loss_weights) == set(LOSS_KEYS) | set(PRIOR_MIX_KEYS)
    with pytest.raises(ValueError, match="g/prior_mix/clean/mel"):
        build(loss_weights={"g/prior_mix/clean/mel": 1.0})


# -- generator output --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [3200, 4000, 4321])
def test_generator_output_shapes_and_mixture(make_module, length):
    module = make_module()
    wav = simulated(length=length).noisy
    with torch.no_grad():
        out = module.generator(wav)
    assert out.clean.shape == out.noise.shape == out.reconstruction.shape == wav.shape
    assert out.alpha.shape == out.beta.shape == (wav.shape[0], 1, 1)
    torch.testing.assert_close(out.reconstruction, out.alpha * out.clean + out.beta * out.noise, atol=1e-6, rtol=1e-6)
    assert all(torch.isfinite(t).all() for t in (out.clean, out.noise, out.alpha, out.beta))
    # The decoder runs both streams stacked on the batch axis; they must not mix: the clean
    # stream alone (stage 1) is the same.
    with torch.no_grad():
        alone = module.generator(wav, streams=("clean",))
    torch.testing.assert_close(alone.clean, out.clean, atol=1e-5, rtol=1e-5)
    # Batch items are independent too.
    with torch.no_grad():
        first = module.generator(wav[:1])
    torch.testing.assert_close(first.clean, out.clean[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.alpha, out.alpha[:1], atol=1e-4, rtol=1e-4)


# -- residual VQ -------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_rvq_straight_through(train, monkeypatch):
    torch.manual_seed(0)
    q = ResidualQuantizer(16, n_codebooks=3, codebook_size=32, codebook_dim=4, quantizer_dropout=0.0).train(train)
    z = torch.randn(2, 16, 10, requires_grad=True)
    z_q, codes, commitment, codebook = q(z)
    assert z_q.shape == z.shape and codes.shape == (2, 3, 10)
    assert codes.min() >= 0 and codes.max() < 32
    assert not torch.allclose(z_q, z)  # it does quantize
    # The forward value is a function of the codes alone.
    torch.testing.assert_close(q.rvq.from_codes(codes)[0], z_q, atol=1e-5, rtol=1e-5)
    z_q.sum().backward()
    grad = z.grad.clone()
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The codebook lookup passes no gradient to the codebooks (only the codebook loss does).
    assert all(vq.codebook.weight.grad is None for vq in q.rvq.quantizers)

    # Straight-through: the backward pass is that of the quantizer with the lookup replaced by
    # the identity (DAC's factorised codes: the identity holds in the codebook space, between
    # the in/out projections, so d z_q / d z is the projections' Jacobian, not I).
    for vq in q.rvq.quantizers:
        monkeypatch.setattr(vq, "decode_latents", lambda latents: (latents, torch.zeros(latents.shape[0], latents.shape[-1], dtype=torch.long)))
    z2 = z.detach().clone().requires_grad_(True)
    q(z2)[0].sum().backward()
    torch.testing.assert_close(z2.grad, grad, atol=1e-6, rtol=1e-5)
    monkeypatch.undo()
    # ... hence the same for any input: the gradient does not depend on which codes were picked.
    z3 = (3 * torch.randn(2, 16, 10)).requires_grad_(True)
    q(z3)[0].sum().backward()
    torch.testing.assert_close(z3.grad, grad, atol=1e-6, rtol=1e-5)

    # The losses: commitment trains the input side, codebook the codebooks.
    q.zero_grad(set_to_none=True)
    z4 = z.detach().clone().requires_grad_(True)
    _, _, commitment, codebook = q(z4)
    assert commitment > 0 and codebook > 0
    torch.testing.assert_close(commitment, codebook)  # the same MSE, detached on opposite sides
    commitment.backward(retain_graph=True)
    assert z4.grad.abs().sum() > 0 and all(vq.codebook.weight.grad is None for vq in q.rvq.quantizers)
    codebook.backward()
    assert all(vq.codebook.weight.grad is not None for vq in q.rvq.quantizers)


def test_rvq_with_no_codebooks_is_identity():
    q = ResidualQuantizer(16, n_codebooks=0, codebook_size=32, codebook_dim=4)
    assert list(q.parameters()) == [] and q.load_release({"quantizers.0.codebook.weight": torch.zeros(32, 4)}) == 0
    z = torch.randn(2, 16, 10, requires_grad=True)
    z_q, codes, commitment, codebook = q(z)
    assert torch.equal(z_q, z) and codes.shape == (2, 0, 10) and codes.dtype == torch.long
    assert commitment == 0 and codebook == 0
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


# -- non-finite steps --------------------------------------------------------------------------


def fit(module, loader, max_steps, root):
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(root),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return trainer


def simulated_loader(n=4):
    items = []
    for i in range(n):
        b = simulated(batch=1, seed=i)
        items.append(SimulatedBatch(b.noisy[0], b.clean[0], b.noise[0]))
    return DataLoader(items, batch_size=2, collate_fn=collate_simulated)


def nan_reconstruction(estimate, target):
    nan = estimate.sum() * math.nan
    return {"mel": nan, "stft": nan, "sisdr": nan}


@pytest.mark.parametrize("stage", [1, 2])
def test_nonfinite_generator_loss_skips_the_step(make_module, stage, tmp_path, caplog):
    module = make_module()
    module.training_stage = stage
    module.reconstruction.forward = nan_reconstruction
    g_before, d_before = snapshot(module.generator), snapshot(module.discriminators)
    with caplog.at_level(logging.WARNING, logger="usedddp.models.module"):
        trainer = fit(module, simulated_loader(), max_steps=2, root=tmp_path)
    # Skipped steps still count towards max_steps (else a persistent NaN never ends a stage).
    assert trainer.global_step == 2
    assert module.skipped_steps["g"] == 2 and module.skipped_steps["d"] == 0
    assert "g step skipped" in caplog.text
    # The generator is bitwise untouched: no update, no weight decay, no optimizer state ...
    assert unchanged(module.generator, g_before)
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())
    assert trainer.optimizers[0].state == {} or all(not s for s in trainer.optimizers[0].state.values())
    # ... while the discriminator steps went ahead, without touching the generator.
    assert n_changed(module.discriminators, d_before) > 0


def test_nonfinite_discriminator_loss_skips_the_step(make_module, tmp_path, monkeypatch):
    module = make_module()
    module.training_stage = 2
    real_terms = module.discriminator_terms
    monkeypatch.setattr(module, "discriminator_terms", lambda reals, fakes: {k: v * math.inf for k, v in real_terms(reals, fakes).items()})
    g_before, d_before = snapshot(module.generator), snapshot(module.discriminators)
    trainer = fit(module, simulated_loader(), max_steps=2, root=tmp_path)
    assert trainer.global_step == 2
    assert module.skipped_steps["d"] == 2 and module.skipped_steps["g"] == 0
    # The generator steps (with D toggled off by Lightning) leave D bitwise unchanged.
    assert unchanged(module.discriminators, d_before)
    assert n_changed(module.generator, g_before) > 0


def test_nan_on_first_step_only(make_module, tmp_path):
    module = make_module()
    real_forward = module.reconstruction.forward
    calls = {"n": 0}

    def flaky(estimate, target):
        calls["n"] += 1
        return nan_reconstruction(estimate, target) if calls["n"] == 1 else real_forward(estimate, target)

    module.reconstruction.forward = flaky
    g_before = snapshot(module.generator)
    fit(module, simulated_loader(), max_steps=2, root=tmp_path)
    assert module.skipped_steps["g"] == 1
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())
    assert n_changed(module.generator, g_before) > 0  # the second step did update


def test_stage3_prior_mixture_supervises_the_prior_draws_only(make_module):
    """The optional stage-3 term (stage3_prior_mixture > 0) is supervised on the sum of the
    batch's own prior draws; it reads no field stage 3 may not see and is weighted as a fraction
    of the stage-2 weights. Off (0), stage 3 computes no such term."""
    module = make_module(stage3_prior_mixture=0.25)
    module.training_stage = 3
    _, _, g_terms = stage_computation(module, StrictBatch(simulated()))
    prior_mix = {k for k in g_terms if k.startswith("g/prior_mix/")}
    assert prior_mix == {f"g/prior_mix/{s}/{t}" for s in ("clean", "noise") for t in ("mel", "stft", "sisdr")}
    assert module.loss_weights["g/prior_mix/clean/mel"] == pytest.approx(0.25 * module.loss_weights["g/clean/mel"])
    assert torch.isfinite(weighted_total(module, g_terms))
    for stage in (1, 2):  # stages 1-2 have true targets: the term is stage 3's alone
        module.training_stage = stage
        _, _, g_terms = stage_computation(module, simulated())
        assert not [k for k in g_terms if k.startswith("g/prior_mix/")]
    off = make_module(stage3_prior_mixture=0.0)
    off.training_stage = 3
    _, _, g_terms = stage_computation(off, StrictBatch(simulated()))
    assert not [k for k in g_terms if k.startswith("g/prior_mix/")]


def test_train_step_without_a_trainer_is_the_same_step(make_module, tmp_path):
    # The benchmarks call train_step without a Trainer: on the same batch and seed it must update
    # the weights exactly as one Lightning batch does (same losses, clipping, optimizers).
    batch = next(iter(simulated_loader(n=2)))
    with_trainer, bare = make_module(seed=3), make_module(seed=3)
    for module in (with_trainer, bare):
        module.training_stage = 2
    fit(with_trainer, DataLoader([batch], batch_size=None), max_steps=1, root=tmp_path)
    torch.manual_seed(0)
    optimizers, _ = bare.configure_optimizers()
    before = snapshot(bare.generator)
    logged = bare.train_step(batch, *optimizers)
    assert n_changed(bare.generator, before) > 0 and torch.isfinite(logged["train/g/total"])
    for (name, a), b in zip(with_trainer.state_dict().items(), bare.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # Its finite checks hold without a Trainer too: a NaN loss skips the step and leaves the weights.
    bare.reconstruction.forward = nan_reconstruction
    before = snapshot(bare.generator)
    bare.train_step(batch, *optimizers)
    assert unchanged(bare.generator, before) and bare.skipped_steps["g"] == 1
