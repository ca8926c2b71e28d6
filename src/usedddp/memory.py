"""Memory of a training step, measured and estimated: the process's resident set, the memory this
machine has free, the bytes autograd keeps for the backward pass, and the check that runs before
each training stage (usedddp.train) so that a step too large for the machine stops with the
override that helps instead of a kernel kill.

Linux reports the resident set and its high-water mark in /proc; elsewhere the RSS functions
return None and the check falls back to skipping itself.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

GIB = 2**30


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """This process's resident set now (Linux), else None."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's resident set (VmHWM; reset_peak_rss)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cgroup_free() -> int | None:
    """Bytes the process's cgroup (v2, else v1) still allows, or None without a limit."""
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_path).read_text().strip()
            usage = int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None


def release_free_heap() -> None:
    """Collect garbage and hand the C heap's free pages back to the kernel (glibc's malloc_trim),
    so that the resident set counts memory in use: after a training stage it otherwise keeps
    gigabytes the allocator has freed and will reuse. A no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory a step on `device` can still take: for a CUDA device its free memory; for the CPU the
    kernel's MemAvailable, or what the cgroup still allows where that is less. None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    cgroup = _cgroup_free()
    return free if cgroup is None else min(free, cgroup)


class PeakRSSSampler:
    """The largest RSS of this process seen by a background thread every `interval` s, for code
    that cannot reset the kernel's high-water mark between parts (it rises monotonically)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, rss_bytes() or 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes() or 0)

    def __enter__(self) -> PeakRSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)


class SavedTensorMeter:
    """Bytes of the tensors autograd saves for the backward pass, live and at their peak, by the
    phase of the step that saved them (`with meter.phase("generator"): ...`).

    A saved tensor is counted once per storage (views of one buffer share it) and is live until
    autograd lets go of it: after the backward pass that uses it, or when its graph is dropped.
    Parameters are not counted (they are the model's state). This is the bulk of a training
    step's activation memory; gradients of intermediate results and kernels' workspaces come on
    top (StepMemoryEstimate.overhead).
    """

    def __init__(self):
        self.live = 0
        self.peak = 0
        self.peak_by_phase: dict[str, int] = {}  # the live bytes of each phase at the step's peak
        self.saved_by_phase: dict[str, int] = defaultdict(int)  # every byte each phase saved
        self._phase = "other"
        self._storages: dict[int, list] = {}  # data_ptr -> [refcount, bytes, phase]
        self._live_by_phase: dict[str, int] = defaultdict(int)
        self._params: set[int] = set()

    @contextmanager
    def phase(self, name: str):
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous

    @contextmanager
    def label_modules(self, modules: dict[str, torch.nn.Module]):
        """Attribute what each module's forward saves to its name (forward hooks; the innermost wins)."""
        handles = []
        for name, mod in modules.items():
            stack = []

            def pre(_m, _args, name=name, stack=stack):
                stack.append(self._phase)
                self._phase = name

            def post(_m, _args, _out, stack=stack):
                self._phase = stack.pop()

            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def ignore(self, tensors) -> None:
        """Storages not to count (the model's parameters)."""
        self._params.update(t.untyped_storage().data_ptr() for t in tensors)

    def _pack(self, t: Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self._params or t.device.type == "meta":
            return t
        entry = self._storages.get(ptr)
        if entry is None:
            entry = self._storages[ptr] = [0, storage.nbytes(), self._phase]
            self.live += entry[1]
            self._live_by_phase[entry[2]] += entry[1]
            self.saved_by_phase[entry[2]] += entry[1]
            if self.live > self.peak:
                self.peak, self.peak_by_phase = self.live, {k: v for k, v in self._live_by_phase.items() if v}
        entry[0] += 1
        return _Saved(t, self, ptr)

    @staticmethod
    def _unpack(saved) -> Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, ptr: int) -> None:
        entry = self._storages.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._storages[ptr]
            self.live -= entry[1]
            self._live_by_phase[entry[2]] -= entry[1]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class _Saved:
    """A saved tensor's stand-in in the graph: when autograd drops it, its storage's count falls."""

    __slots__ = ("tensor", "meter", "ptr")

    def __init__(self, tensor: Tensor, meter: SavedTensorMeter, ptr: int):
        self.tensor, self.meter, self.ptr = tensor, meter, ptr

    def __del__(self):
        self.meter._release(self.ptr)


@dataclass
class StepMemoryEstimate:
    """The memory one training step at `batch_size` items needs, from probe steps on one item.

    total = baseline (the process after the probes: libraries, model weights, data, the runtime)
          + state (gradients and the two Adam moments of every parameter, not yet allocated)
          + overhead x (fixed + batch_size x per_item): autograd's saved tensors at the step's
            peak, split by two probes of different lengths into what grows with the audio
            (per item of the segment's length) and what does not (the weight-normed weights
            every convolution saves, once per pass); overhead covers intermediate gradients,
            workspaces and the allocator's slack, calibrated against measured peaks
            (scripts/benchmark_memory.py).
    """

    baseline: int
    state: int
    fixed: int
    per_item: int
    batch_size: int
    overhead: float
    by_phase: dict[str, int] = field(default_factory=dict)  # the longer probe's, at its peak
    probe_time_s: float = 0.0

    @property
    def activations(self) -> int:
        return int(self.overhead * (self.fixed + self.batch_size * self.per_item))

    @property
    def total(self) -> int:
        return self.baseline + self.state + self.activations

    def max_batch(self, budget: int) -> int:
        """The largest batch whose estimate fits in `budget` bytes of total memory (0 if none)."""
        room = budget - self.baseline - self.state - self.overhead * self.fixed
        return max(0, int(room // max(1.0, self.per_item * self.overhead)))

    def as_dict(self) -> dict:
        return {"baseline_gib": round(self.baseline / GIB, 3), "state_gib": round(self.state / GIB, 3),
                "fixed_gib": round(self.fixed / GIB, 3), "per_item_gib": round(self.per_item / GIB, 3),
                "batch_size": self.batch_size, "overhead": self.overhead,
                "activations_gib": round(self.activations / GIB, 3), "total_gib": round(self.total / GIB, 3),
                "by_phase_probe_gib": {k: round(v / GIB, 3) for k, v in sorted(self.by_phase.items())},
                "probe_time_s": round(self.probe_time_s, 2)}


class _NoStep:
    """An optimizer stand-in for the probe step: clears gradients, never changes a weight."""

    def __init__(self, params):
        self.params = list(params)
        self.param_groups = [{"lr": 0.0, "params": self.params}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        pass


# Measured peak RSS less baseline and state, over the saved tensors' estimate: 1.26 (reference) and
# 1.18 (fused) for dac16k's stage-3 step at 4 x 1 s on a CPU (benchmarks/memory_cpu.json); 1.4
# leaves headroom. The small models were not measured against this estimate (benchmarks/README.md).
DEFAULT_OVERHEAD = 1.4


def estimate_step_memory(module, batch_size: int, segment_samples: int, device: torch.device | str = "cpu",
                         overhead: float = DEFAULT_OVERHEAD, probe_samples: int | None = None,
                         autocast_dtype: torch.dtype | None = None) -> StepMemoryEstimate:
    """Run the module's own training step (USEDDPModule.train_step: both players' losses and
    backward passes) on one synthetic item of `probe_samples` samples (default: the segment) and
    of half that, with optimizers that never step; the two peaks of saved tensors give what
    grows with the audio and what does not, scaled to `batch_size` items of `segment_samples`.
    The weights, the random state and the module's trainer are left as they were."""
    device = torch.device(device)
    long = segment_samples if probe_samples is None else min(int(probe_samples), segment_samples)
    short = max(1, long // 2)
    params = list(module.parameters())
    state = sum(3 * p.numel() * p.element_size() for p in params if p.requires_grad)
    started = time.perf_counter()
    (peak_short, _), (peak_long, by_phase) = (_probe(module, n, device, autocast_dtype) for n in (short, long))
    # After the probes: the runtime's own growth at a first backward pass (kernel caches, the
    # autograd engine's threads) is then part of the baseline, the probes' freed memory not.
    if device.type == "cpu":
        release_free_heap()
    baseline = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
    rate = max(0.0, (peak_long - peak_short) / (long - short))  # saved bytes per sample of audio
    fixed = max(0, int(peak_long - rate * long))
    return StepMemoryEstimate(baseline=int(baseline or 0), state=state, fixed=fixed, per_item=int(rate * segment_samples),
                              batch_size=batch_size, overhead=overhead, by_phase=by_phase,
                              probe_time_s=time.perf_counter() - started)


def _probe(module, samples: int, device: torch.device, autocast_dtype: torch.dtype | None) -> tuple[int, dict[str, int]]:
    """(peak saved bytes, by phase) of one train_step on one synthetic item of `samples` samples."""
    from usedddp.data.batches import SimulatedBatch, UnpairedBatch

    g = torch.Generator().manual_seed(0)
    wavs = [0.05 * torch.randn(1, 1, samples, generator=g).to(device) for _ in range(3)]
    batch = UnpairedBatch(*wavs) if module.training_stage.data == "real_noisy" \
        else SimulatedBatch(noisy=wavs[1] + wavs[2], clean=wavs[1], noise=wavs[2])
    params = list(module.parameters())
    trainer = module._trainer
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    try:
        module.trainer = None  # the step then runs unattached: no logging, no all-ranks decisions
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), SavedTensorMeter() as meter, \
                meter.label_modules(step_parts(module)), _label_joint_ensembles(meter), autocast:
            meter.ignore(params)
            module.train_step(batch, _NoStep(module.generator.parameters()), _NoStep(module.discriminators.parameters()))
    finally:
        module.trainer = trainer
        for p in params:
            p.grad = None
    return meter.peak, meter.peak_by_phase


def step_parts(module) -> dict[str, torch.nn.Module]:
    """The parts of a USEDDPModule a step's memory is attributed to."""
    gen = module.generator
    parts = {f"branch:{name}": branch for name, branch in gen.branches.items()}
    for name in ("encoder", "decoder"):
        if isinstance(getattr(gen.codec, name, None), torch.nn.Module):
            parts[f"codec:{name}"] = getattr(gen.codec, name)
    parts.update({f"discriminator:{name}": d for name, d in module.discriminators.items()})
    parts["reconstruction_loss"] = module.reconstruction
    return parts


@contextmanager
def _label_joint_ensembles(meter: SavedTensorMeter):
    """The fused step's grouped discriminator pass (JointEnsembles, not an nn.Module) as a phase."""
    from usedddp.models.components.discriminator import JointEnsembles

    call = JointEnsembles.__call__

    def labelled(self, wav):
        with meter.phase("discriminators:joint"):
            return call(self, wav)

    JointEnsembles.__call__ = labelled
    try:
        yield
    finally:
        JointEnsembles.__call__ = call


class MemoryGuardError(RuntimeError):
    """A training step estimated to need more memory than the machine has."""


def check_step_memory(module, *, stage: int, batch_size: int, segment_seconds: float, device: torch.device | str = "cpu",
                      available: int | None = None, overhead: float = DEFAULT_OVERHEAD, probe_seconds: float | None = 0.5,
                      autocast_dtype: torch.dtype | None = None, log=None) -> StepMemoryEstimate | None:
    """Estimate training stage `stage`'s step (estimate_step_memory, probed on `probe_seconds` of
    audio and half that) and refuse it, naming the overrides that shrink it, when it exceeds `available` bytes
    (default: what this machine has free, available_bytes, plus what the process holds already).
    None where the machine's memory is unknown."""
    device = torch.device(device)
    if available is None:
        if device.type == "cpu":
            release_free_heap()
        free = available_bytes(device)
        held = rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
        if free is None or held is None:
            return None
        available = free + held
    samples = round(segment_seconds * module.sample_rate)
    probe = None if probe_seconds is None else round(probe_seconds * module.sample_rate)
    estimate = estimate_step_memory(module, batch_size, samples, device, overhead, probe, autocast_dtype)
    if log is not None:
        log.info("memory check, training stage %d: a step of %d x %g s needs about %.1f GiB (%.1f held, %.1f optimizer "
                 "state, %.2f per item, %.2f per step), %.1f GiB available (probes %.1f s)", stage, batch_size, segment_seconds,
                 estimate.total / GIB, estimate.baseline / GIB, estimate.state / GIB, estimate.per_item * overhead / GIB,
                 estimate.fixed * overhead / GIB, available / GIB, estimate.probe_time_s)
    if estimate.total > available:
        fits = estimate.max_batch(available)
        where = "this GPU" if device.type == "cuda" else "this machine"
        hints = [f"data.batch_size={fits} (the largest batch estimated to fit)" if fits >= 1 else
                 "a shorter data.segment_seconds (data.batch_size=1 does not fit either)"]
        if fits >= 1:
            hints.append(f"a shorter data.segment_seconds (now {segment_seconds:g}; the step's memory grows with it)")
        if getattr(module, "fast_step", False):
            hints.append("model.fast_step=false (the reference step, which runs stage 3's two generator passes one after "
                         "the other instead of stacked)")
        raise MemoryGuardError(
            f"training stage {stage}: one step of {batch_size} x {segment_seconds:g} s is estimated to need "
            f"{estimate.total / GIB:.1f} GiB ({estimate.baseline / GIB:.1f} GiB held now, {estimate.state / GIB:.1f} GiB of "
            f"optimizer state, {estimate.per_item * overhead / GIB:.2f} GiB per item and {estimate.fixed * overhead / GIB:.2f} "
            f"GiB per step), but {where} has "
            f"{available / GIB:.1f} GiB available. Use " + "; or ".join(hints)
            + ". memory_guard.enabled=false skips this check.")
    return estimate
