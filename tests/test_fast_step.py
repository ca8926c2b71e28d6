"""The fast training step (USEDDPModule.fast_step: grouped discriminators, stacked losses,
fused AdamW, batched gradient norms) against the per-module reference path: the same losses,
discriminator outputs and gradients, and fewer operators. No timings (scripts/benchmark_train_ops.py)."""

import warnings

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from usedddp.data.batches import SimulatedBatch, UnpairedBatch
from usedddp.losses.adversarial import (
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    stacked_discriminator_loss,
    stacked_feature_matching_loss,
    stacked_generator_loss,
)
from usedddp.models.components.discriminator import JointEnsembles, STFTDiscriminatorEnsemble

T = 4000


def unpaired(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return UnpairedBatch(*(0.1 * torch.randn(batch, 1, T, generator=g) for _ in range(3)))


def simulated(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean, noise = (0.1 * torch.randn(batch, 1, T, generator=g) for _ in range(2))
    return SimulatedBatch(noisy=clean + noise, clean=clean, noise=noise)


def pair(make_module, stage=3):
    """Reference and fast modules with the same weights (stage 3: every branch and ensemble)."""
    ref, fast = make_module(seed=1, fast_step=False), make_module(seed=1, fast_step=True)
    for m in (ref, fast):
        m.training_stage = stage
    return ref, fast


def randomized(ensembles, seed=0):
    """Random gains and biases: at initialisation weight_g is the norm of v (every weight norm
    is 1 per channel) and biases are small, which would hide a mixed-up parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ens in ensembles:
            for name, p in ens.named_parameters():
                if name.endswith(("weight_g", "bias")):
                    p.copy_(torch.randn(p.shape, generator=g))
    return ensembles


@pytest.mark.parametrize("stage, steps", [(1, 3), (2, 1), (3, 3)])
def test_steps_match_the_reference(make_module, stage, steps):
    """Consecutive G+D steps (so the fused optimizer's numbers count): every logged value and
    every weight as the reference path's. Stage 1: one ensemble, supervised; stage 2: paired
    feature matching everywhere; stage 3: unpaired, the stacked generator pass.

    Stage 2 from these random weights is compared on its first step only: its streams start
    nearly collinear, where the least-squares mixture scales (and g/scale, log|alpha|^2) turn
    rounding-level gradient differences into 2e-4 of alpha after one Adam step, whose first
    update is lr * sign(gradient) (scripts/benchmark_train_ops.py's control shows the same
    growth for the reference against itself)."""
    ref, fast = pair(make_module, stage)
    batch = unpaired() if stage == 3 else simulated()
    opts = {id(m): m.configure_optimizers()[0] for m in (ref, fast)}
    for step in range(steps):
        logs = []
        for m in (ref, fast):
            torch.manual_seed(100 + step)
            logs.append(m.train_step(batch, *opts[id(m)]))
        assert logs[0].keys() == logs[1].keys()
        for key in logs[0]:
            torch.testing.assert_close(logs[1][key], logs[0][key], rtol=1e-5, atol=1e-5, msg=f"step {step}: {key}")
    # Adam's first update is lr * sign(gradient): an entry whose gradient is ~0 can flip sign on
    # rounding and move by 2 lr (a handful of the model's entries); a mixed-up parameter would
    # move whole tensors.
    off = sum(int(((b - a).abs() > 1e-4).sum()) for a, b in zip(ref.state_dict().values(), fast.state_dict().values()))
    total = sum(a.numel() for a in ref.state_dict().values())
    assert off <= 1e-5 * total, (off, total)
    lr = opts[id(ref)][0].param_groups[0]["lr"]
    for (name, a), b in zip(ref.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=2 * lr * steps + 1e-4, msg=lambda m: f"{name}: {m}")


def test_unstackable_signals_take_the_reference_path(make_module):
    """Signals of different lengths cannot share a grouped pass: the fast module judges them one
    ensemble at a time, with the reference's numbers."""
    ref, fast = pair(make_module)
    reals = {"clean": 0.1 * torch.randn(2, 1, T), "noise": 0.1 * torch.randn(2, 1, T + 160), "noisy": 0.1 * torch.randn(2, 1, T)}
    fakes = {k: 0.1 * torch.randn(v.shape) for k, v in reals.items()}
    assert fast.step.judge_jointly(fast, ("clean", "noise", "noisy"), list(reals.values()), list(fakes.values())) is None
    want, got = ref.discriminator_terms(reals, fakes), fast.discriminator_terms(reals, fakes)
    for key in want:
        torch.testing.assert_close(got[key], want[key])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gradients_match_the_reference(make_module, stage):
    ref, fast = pair(make_module, stage)
    batch = unpaired(seed=3) if stage == 3 else simulated(seed=3)
    grads = []
    for m in (ref, fast):
        out = m.generator(batch.noisy, streams=m.training_stage.streams)
        fakes, reals = m.fakes(out), {"clean": batch.clean_prior, "noise": batch.noise_prior, "noisy": batch.noisy}
        fakes = {k: v for k, v in fakes.items() if v is not None}
        d_total = sum(m.discriminator_terms(reals, fakes).values())
        d_params = [p for p in m.discriminators.parameters() if p.requires_grad]
        d_grads = torch.autograd.grad(d_total, d_params, allow_unused=True)
        g_terms = m.generator_terms(batch, out, reals, fakes)
        g_total = sum(m.loss_weights[k] * v for k, v in g_terms.items())
        g_grads = torch.autograd.grad(g_total, [p for p in m.generator.parameters() if p.requires_grad], allow_unused=True)
        grads.append((d_total, g_total, d_grads, g_grads))
    (d0, g0, dg0, gg0), (d1, g1, dg1, gg1) = grads
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)
    names = [n for n, p in [*ref.discriminators.named_parameters(), *ref.generator.named_parameters()] if p.requires_grad]
    for name, a, b in zip(names, [*dg0, *gg0], [*dg1, *gg1]):
        assert (a is None) == (b is None), name
        if a is not None:
            # Relative to the tensor's norm: elementwise, a gradient entry near 0 carries the
            # rounding of the whole sum it is taken from.
            assert torch.linalg.vector_norm(b - a) <= 1e-4 * torch.linalg.vector_norm(a) + 1e-7, (name, torch.linalg.vector_norm(b - a) / torch.linalg.vector_norm(a))
    if stage > 1:  # every ensemble plays: all its parameters get a gradient
        assert sum(a is not None for a in dg0) == len(dg0)


@pytest.mark.parametrize("fft_sizes, channels, seconds", [((256, 128), 4, 0.25), ((2048, 1536, 1024, 768, 512, 384, 256, 128), 32, 0.5)],
                         ids=["small", "dac16k"])
def test_joint_ensembles_equal_each_ensemble(fft_sizes, channels, seconds):
    """The grouped pass gives each ensemble's own logits and feature maps, shape for shape
    (the dac16k layout: 8 resolutions, 32 channels, DAC's five bands)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ensembles = randomized([STFTDiscriminatorEnsemble(fft_sizes, channels=channels) for _ in range(3)])
    wav = 0.1 * torch.randn(2, 3, int(16000 * seconds))
    with torch.no_grad():
        joint = JointEnsembles(ensembles)(wav)
        for e, ens in enumerate(ensembles):
            ref, got = ens(wav[:, e : e + 1]), joint.ensemble(e)
            assert len(got.logits) == len(ref.logits) == len(fft_sizes)
            for a, b in zip(ref.logits, got.logits):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            for maps_a, maps_b in zip(ref.features, got.features):
                assert len(maps_a) == len(maps_b) == 25
                for a, b in zip(maps_a, maps_b):
                    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        # The padding the stacked maps carry is zero (the feature losses rely on it).
        for maps, weights in zip(joint.features, joint.column_weights):
            assert maps.shape[2:] == (5, channels, maps.shape[4], weights.shape[1])
            assert torch.all(maps.transpose(-1, -3)[..., weights == 0, :, :] == 0)


def test_stacked_losses_equal_the_per_ensemble_losses():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ensembles = randomized([STFTDiscriminatorEnsemble((256, 128), channels=4) for _ in range(3)])
    a, b = 0.1 * torch.randn(2, 3, 4000), 0.1 * torch.randn(2, 3, 4000)
    joint = JointEnsembles(ensembles)
    real, fake = joint(a), joint(b)
    refs = [(ens(a[:, e : e + 1]), ens(b[:, e : e + 1])) for e, ens in enumerate(ensembles)]
    torch.testing.assert_close(stacked_discriminator_loss(real, fake), torch.stack([discriminator_loss(r, f) for r, f in refs]))
    torch.testing.assert_close(stacked_generator_loss(fake), torch.stack([generator_loss(f) for _, f in refs]))
    for paired in ([False, False, True], [True, True, True], [True, False, False]):
        want = torch.stack([feature_matching_loss(r, f, paired=p) for (r, f), p in zip(refs, paired)])
        torch.testing.assert_close(stacked_feature_matching_loss(real, fake, paired), want)


def test_checkpoints_load_either_way(make_module):
    """The fast path adds no parameter or buffer: a reference module's state dict loads strictly."""
    ref, fast = pair(make_module)
    assert list(ref.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert any(".band_convs.4.4.0.weight_g" in k for k in fast.state_dict())


def test_fast_path_uses_the_fused_optimizer_unless_configured(make_module, small_model_cfg):
    ref, fast = pair(make_module)
    assert not any(o.defaults.get("fused") for o in ref.configure_optimizers()[0])
    assert all(o.defaults.get("fused") for o in fast.configure_optimizers()[0])
    explicit = make_module(fast_step=True, optimizer_d={**small_model_cfg.optimizer_d, "foreach": True})
    opt_g, opt_d = explicit.configure_optimizers()[0]
    assert opt_g.defaults.get("fused") and opt_d.defaults.get("foreach") and not opt_d.defaults.get("fused")


def count_ops(module, batch) -> tuple[int, int]:
    """(every aten operator, the top-level ones) of one train_step, from torch.profiler."""
    optimizers = module.configure_optimizers()[0]
    module.train_step(batch, *optimizers)  # optimizer state exists from the second step on
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module.train_step(batch, *optimizers)
    aten = [e for e in prof.events() if e.name.startswith("aten::")]

    def top(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return False
            p = p.cpu_parent
        return True

    return len(aten), sum(map(top, aten))


def test_fast_step_issues_fewer_operators(make_module):
    """Operator counts do not depend on the machine: a property of the code, not a timing."""
    ref, fast = pair(make_module)
    batch = unpaired()
    (ref_all, ref_top), (fast_all, fast_top) = count_ops(ref, batch), count_ops(fast, batch)
    assert fast_top * 2 < ref_top, (fast_top, ref_top)
    assert fast_all * 2 < ref_all, (fast_all, ref_all)


def test_stacked_generator_pass_splits_into_the_separate_passes(make_module):
    """One generator pass over [noisy; prior mixture] (per-item VQ losses, split) equals the
    two passes of the reference path, VQ losses included."""
    module = make_module(seed=2)
    a, b = unpaired(seed=4).noisy, unpaired(seed=5).noisy
    from usedddp.models.generator import split_output

    with torch.no_grad():
        both = split_output(module.generator(torch.cat([a, b]), per_item_losses=True), [2, 2])
        for got, wav in zip(both, (a, b)):
            want = module.generator(wav)
            for field in ("clean", "noise", "alpha", "beta", "reconstruction"):
                torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-4, atol=1e-6)
            for name, branch in want.branches.items():
                assert torch.equal(got.branches[name].codes, branch.codes)
                torch.testing.assert_close(got.branches[name].commitment, branch.commitment, rtol=1e-5, atol=1e-7)
                torch.testing.assert_close(got.branches[name].codebook, branch.codebook, rtol=1e-5, atol=1e-7)


def test_stacked_reconstruction_equals_each_pair(make_module):
    module = make_module()
    g = torch.Generator().manual_seed(6)
    est, ref = 0.1 * torch.randn(3, 2, 1, T, generator=g), 0.1 * torch.randn(3, 2, 1, T, generator=g)
    stacked = module.reconstruction(est, ref)
    for i in range(3):
        for name, value in module.reconstruction(est[i], ref[i]).items():
            torch.testing.assert_close(stacked[name][i], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("overrides, fused", [([], True), (["trainer=gpu"], False), (["model=tiny"], False),
                                              (["model=dac16k"], False), (["trainer=gpu", "model.fast_step=true"], True)])
def test_each_model_defaults_to_the_step_measured_faster(overrides, fused):
    """tiny_stft: the fused step, measured faster on a CPU; on a GPU (not measured) and for the
    DAC models (dac16k measured slower on a CPU) the reference step. A typed value wins."""
    from hydra import compose, initialize_config_dir

    import usedddp.config

    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.model.fast_step is fused
