"""Memory of the training step: the saved-tensor meter, the input-saving snake, the reference
step's deferred prior-mixture pass, and the guard that refuses a step too large for the machine.
Bytes, not timings: the numbers here do not depend on the machine's load."""

from __future__ import annotations

import warnings

import pytest
import torch

from usedddp.data.batches import UnpairedBatch
from usedddp.memory import GIB, MemoryGuardError, SavedTensorMeter, check_step_memory, estimate_step_memory

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from dac.nn.layers import Snake1d

from usedddp.models.components.dac_codec import DACCodec
from usedddp.models.components.snake import SnakeSavingInput, use_input_saving_snake


def saved_bytes(fn, ignore=()) -> int:
    with SavedTensorMeter() as meter:
        meter.ignore(list(ignore))
        fn()
    return meter.peak


def test_meter_counts_saved_tensors_once_per_storage_and_releases_them():
    x = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (x * x).sum()  # mul saves x twice: one storage
    assert meter.peak == 4000 and meter.live == 4000
    y.backward()
    assert meter.live == 0 and meter.peak == 4000
    with SavedTensorMeter() as meter:
        a = torch.sin(x)  # saves x
        b = torch.sin(a)  # saves a
        del a, b
    assert meter.peak == 8000 and meter.live == 0  # the dropped graph let go of both


def test_snake_saving_input_matches_dac_and_saves_one_tensor():
    torch.manual_seed(0)
    ref = Snake1d(8)
    with torch.no_grad():
        ref.alpha.copy_(0.1 + 2 * torch.rand(1, 8, 1))
    ours = torch.nn.Sequential(Snake1d(8))
    ours[0].alpha.data = ref.alpha.data.clone()
    assert use_input_saving_snake(ours) == 1 and type(ours[0]) is SnakeSavingInput
    x = torch.randn(2, 8, 500, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = ref(x), ours(x2)
    assert torch.equal(y, y2)  # DAC's expression, evaluated the same way
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[0].alpha.grad, ref.alpha.grad, rtol=1e-4, atol=1e-4)
    x64 = torch.randn(1, 3, 20, dtype=torch.float64, requires_grad=True)
    alpha = (0.5 + torch.rand(1, 3, 1, dtype=torch.float64)).requires_grad_()
    snake = SnakeSavingInput(3)
    snake.alpha = torch.nn.Parameter(alpha.detach().clone())
    assert torch.autograd.gradcheck(lambda a, b: __import__("usedddp.models.components.snake", fromlist=["_Snake"])._Snake.apply(a, b), (x64, alpha))
    one = x.numel() * x.element_size()
    assert saved_bytes(lambda: ref(x), ref.parameters()) >= 4 * one
    assert saved_bytes(lambda: ours(x), ours.parameters()) == one


def test_dac_codec_uses_the_input_saving_snake_with_dacs_parameter_names():
    codec = DACCodec(encoder_dim=4, encoder_rates=(2, 2), decoder_dim=8, decoder_rates=(2, 2))
    snakes = [m for m in codec.modules() if isinstance(m, Snake1d)]
    assert snakes and all(type(m) is SnakeSavingInput for m in snakes)
    assert any(k.endswith(".alpha") for k in codec.state_dict())


def stage3_batch(batch=2, samples=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return UnpairedBatch(*(0.1 * torch.randn(batch, 1, samples, generator=g) for _ in range(3)))


def generator_peak(module, batch) -> tuple[int, dict]:
    """Saved bytes of the generator's parts at the step's peak, over one train_step."""
    opts = module.configure_optimizers()[0]
    parts = {"generator": module.generator}
    with SavedTensorMeter() as meter, meter.label_modules(parts):
        meter.ignore(module.parameters())
        module.train_step(batch, *opts)
    return meter.peak_by_phase.get("generator", 0), meter.saved_by_phase


def test_reference_step_never_holds_both_stage3_generator_graphs(make_module):
    """Stage 3 with the prior-mixture term runs the generator twice. The reference step adds
    the second pass's gradient after the first graph is freed; the fused step stacks both
    passes into one graph. The generator's saved tensors at the step's peak: one pass against two."""
    batch = stage3_batch()
    ref = make_module(seed=1, fast_step=False, stage3_prior_mixture=0.3)
    fused = make_module(seed=1, fast_step=True, stage3_prior_mixture=0.3)
    for m in (ref, fused):
        m.training_stage = 3
    (ref_peak, ref_saved), (fused_peak, fused_saved) = generator_peak(ref, batch), generator_peak(fused, batch)
    # Both ran both passes (the same bytes saved over the step) ...
    assert ref_saved["generator"] == pytest.approx(fused_saved["generator"], rel=0.05)
    # ... but the reference never held more than one pass's graph.
    assert ref_peak <= 0.55 * ref_saved["generator"]
    assert fused_peak >= 0.95 * fused_saved["generator"]


def test_estimate_scales_with_batch_and_segment_and_leaves_the_module_alone(make_module):
    module = make_module(seed=3)
    module.training_stage = 3
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    small = estimate_step_memory(module, batch_size=1, segment_samples=4000)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())
    four = estimate_step_memory(module, batch_size=4, segment_samples=4000)
    assert (four.per_item, four.fixed) == (small.per_item, small.fixed) and small.per_item > 0 and small.fixed > 0
    assert four.activations - small.activations == pytest.approx(3 * small.overhead * small.per_item, abs=4)
    # What grows with the audio, probed on half the segment (and a quarter), scaled: as probed on all of it.
    probed = estimate_step_memory(module, batch_size=1, segment_samples=8000, probe_samples=4000)
    longer = estimate_step_memory(module, batch_size=1, segment_samples=8000)
    assert probed.per_item == pytest.approx(longer.per_item, rel=0.1)
    assert probed.fixed + probed.per_item == pytest.approx(longer.fixed + longer.per_item, rel=0.1)
    assert small.state == 3 * sum(p.numel() * 4 for p in module.parameters() if p.requires_grad)
    assert {"branch:clean", "branch:noise", "discriminator:noisy"} <= set(small.by_phase)


def test_guard_refuses_a_step_over_the_limit_naming_the_overrides(make_module):
    module = make_module(seed=4, fast_step=True)
    module.training_stage = 3
    fits = check_step_memory(module, stage=3, batch_size=2, segment_seconds=0.25, available=64 * GIB)
    assert fits is not None and fits.total < 64 * GIB
    limit = fits.baseline + fits.state + int(fits.overhead * (fits.fixed + 2.5 * fits.per_item))  # room for two items, not eight
    with pytest.raises(MemoryGuardError) as error:
        check_step_memory(module, stage=3, batch_size=8, segment_seconds=0.25, available=limit)
    message = str(error.value)
    assert "training stage 3" in message and "data.batch_size=2 " in message
    assert "data.segment_seconds" in message and "model.fast_step=false" in message
    assert "memory_guard.enabled=false" in message
    with pytest.raises(MemoryGuardError, match="data.batch_size=1 does not fit"):
        check_step_memory(module, stage=3, batch_size=8, segment_seconds=0.25, available=fits.baseline)


def test_discriminator_activations_in_place_give_the_same_numbers_and_save_less():
    from usedddp.models.components.discriminator import STFTDiscriminatorEnsemble

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, plain = STFTDiscriminatorEnsemble((512, 256), channels=8), STFTDiscriminatorEnsemble((512, 256), channels=8)
    plain.load_state_dict(ours.state_dict())
    assert all(m.inplace for m in ours.modules() if isinstance(m, torch.nn.LeakyReLU))
    for m in plain.modules():
        if isinstance(m, torch.nn.LeakyReLU):
            m.inplace = False
    x = torch.randn(2, 1, 8000, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    outs, saved = [], []
    for module, wav in ((ours, x), (plain, x2)):
        with SavedTensorMeter() as meter:
            meter.ignore(module.parameters())
            out = module(wav)
        saved.append(meter.peak)
        loss = sum(l.square().mean() for l in out.logits) + sum(f.abs().mean() for maps in out.features for f in maps)
        loss.backward()
        outs.append(loss.detach())
    assert torch.equal(outs[0], outs[1]) and torch.equal(x.grad, x2.grad)
    for p, q in zip(ours.parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert saved[0] < 0.7 * saved[1], saved
