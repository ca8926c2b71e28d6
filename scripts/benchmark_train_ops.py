"""Count the operators of one USE-DDP training step (discriminator + generator), reference path
against the fast path (USEDDPModule.fast_step), and time both on the CPU.

    python scripts/benchmark_train_ops.py --models dac16k tiny_stft --threads 1 --out benchmarks/train_step_ops_cpu.json

On a GPU every top-level operator is at least one kernel launch; a dac16k step at batch 8 on an
H100 spent 1.6 s of CPU time launching ~50,000 kernels for 0.3 s of GPU work. The count of aten
operators torch.profiler records on the CPU does not depend on the machine, so it is measured
here without one: `all` counts every aten event, `top_level` those with no aten parent (what
Python, or the autograd engine, dispatches; on a GPU roughly the launches). Per model, in one
process: both paths are built from the same seed, run the same steps on one fixed batch (stage
3: every branch and ensemble), and the logged losses of the first steps are compared; then the
CPU step time (median after those warm-up steps) and one profiled step each. The breakdown
attributes each operator to the part of the step that issued it (backward operators to the
part whose forward built their autograd node).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_train_step import build  # noqa: E402

import usedddp.models.fused_step as fused_mod  # noqa: E402
import usedddp.models.step as step_mod  # noqa: E402
from usedddp.data.batches import UnpairedBatch  # noqa: E402
from usedddp.models.components.discriminator import JointEnsembles  # noqa: E402

REGION = "region::"


def labelled(fn, label: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(REGION + label):
            return fn(*args, **kwargs)

    return wrapper


class Regions:
    """Labels the step's parts for the profiler by wrapping them (the step itself is the module's
    own train_step, unchanged); undone on exit."""

    def __init__(self, module, optimizers):
        self.patches = [(module.generator, "forward", "generator"), (module.reconstruction, "forward", "reconstruction_loss"),
                        (JointEnsembles, "__call__", "discriminators"), (module, "_optimizer_step", "grad_norms_and_checks"),
                        (torch.Tensor, "backward", "backward_call")]
        self.patches += [(d, "forward", "discriminators") for d in module.discriminators.values()]
        self.patches += [(mod, f, "adversarial_loss") for mod in (step_mod, fused_mod) for f in dir(mod)
                         if f.endswith(("discriminator_loss", "generator_loss", "feature_matching_loss"))]
        self.patches += [(o, "step", "optimizer") for o in optimizers]

    def __enter__(self):
        self.saved = [(obj, attr, attr in vars(obj), vars(obj).get(attr)) for obj, attr, _ in self.patches]
        for obj, attr, label in self.patches:
            setattr(obj, attr, labelled(getattr(obj, attr), label))
        return self

    def __exit__(self, *exc):
        for obj, attr, had, value in reversed(self.saved):
            if had:
                setattr(obj, attr, value)
            else:
                delattr(obj, attr)


def count_ops(events) -> dict:
    """aten events of a profile: totals, and per part of the step (all, top_level)."""
    def ancestors(e):
        p = e.cpu_parent
        while p is not None:
            yield p
            p = p.cpu_parent

    def region(e):
        return next((p.name[len(REGION):] for p in [e, *ancestors(e)] if p.name.startswith(REGION)), "other")

    # The part whose forward built each autograd node (sequence numbers link the two).
    built_by = {}
    for e in events:
        if e.name.startswith("aten::") and e.sequence_nr >= 0 and e.sequence_nr not in built_by:
            built_by[e.sequence_nr] = region(e)
    parts = collections.defaultdict(lambda: {"all": 0, "top_level": 0})
    names = collections.Counter()
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        chain = list(ancestors(e))
        top = not any(p.name.startswith("aten::") for p in chain)
        node = next((p for p in chain if p.name.startswith("autograd::engine::evaluate_function")), None)
        if node is None:
            part = region(e)
        elif "AccumulateGrad" in node.name:
            part = "backward:accumulate_grad"
        else:
            part = "backward:" + built_by.get(node.sequence_nr, "other")
        parts[part]["all"] += 1
        parts[part]["top_level"] += top
        if top:
            names[e.name] += 1
    total = {"all": sum(p["all"] for p in parts.values()), "top_level": sum(p["top_level"] for p in parts.values())}
    return {**total, "by_part": dict(sorted(parts.items(), key=lambda kv: -kv[1]["top_level"])), "top_level_ops": dict(names.most_common(15))}


def measure(model: str, fast: bool, args, perturb: float = 0.0, timed: bool = True) -> dict:
    torch.manual_seed(args.seed)
    module = build(model, [])
    module.fast_step = fast
    module.training_stage = 3
    if perturb:  # the control: the reference path with its discriminators moved by rounding
        with torch.no_grad():
            for p in module.discriminators.parameters():
                p.mul_(1 + perturb)
    n = round(args.seconds * module.sample_rate)
    g = torch.Generator().manual_seed(args.seed + 1)
    batch = UnpairedBatch(*(0.05 * torch.randn(args.batch, 1, n, generator=g) for _ in range(3)))
    optimizers, _ = module.configure_optimizers()

    def step(i):
        torch.manual_seed(1000 + i)  # the same draws (quantizer dropout, if any) on both paths
        return {k: float(v) for k, v in module.train_step(batch, *optimizers).items() if v.numel() == 1}

    losses = [step(i) for i in range(args.compare_steps)]
    if not timed:
        return {"losses": losses}
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(args.compare_steps + i)
        times.append(time.perf_counter() - start)
    with Regions(module, optimizers), profile(activities=[ProfilerActivity.CPU]) as prof:
        step(args.compare_steps + args.steps)
    counts = count_ops(prof.events())
    return {"losses": losses, "step_s": {"median": round(statistics.median(times), 4), "all": [round(t, 4) for t in times]}, "ops": counts}


def compare_losses(ref: list[dict], fast: list[dict]) -> dict:
    """Per step: the largest absolute difference of any logged loss term (and its term)."""
    keys = [k for k in ref[0] if k.startswith(("train/d/", "train/g/", "train/adv/", "train/vq/"))]
    steps = []
    for a, b in zip(ref, fast):
        diff, key = max((abs(a[k] - b[k]), k) for k in keys)
        steps.append({"max_abs_diff": diff, "term": key, "value": a[key]})
    return {"terms": len(keys), "per_step": steps, "all_steps_equal_to_1e-5": all(s["max_abs_diff"] <= 1e-5 for s in steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dac16k", "tiny_stft"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare-steps", type=int, default=3, help="steps whose losses are compared (also the warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-control", dest="control", action="store_false", help="skip the perturbed-reference control run")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    result = {"benchmark": "train_step_ops", "stage": 3, "batch": args.batch, "seconds": args.seconds, "device": "cpu",
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "platform": platform.platform(),
              "torch": torch.__version__, "python": platform.python_version(), "models": {}}
    for model in args.models:
        ref, fast = measure(model, False, args), measure(model, True, args)
        control = measure(model, False, args, perturb=1e-7, timed=False) if args.control else None
        result["models"][model] = {
            "ops_reference": ref["ops"], "ops_fast": fast["ops"],
            "op_ratio": {k: round(ref["ops"][k] / fast["ops"][k], 2) for k in ("all", "top_level")},
            "step_s_reference": ref["step_s"], "step_s_fast": fast["step_s"],
            "step_time_ratio": round(ref["step_s"]["median"] / fast["step_s"]["median"], 3),
            "losses": compare_losses(ref["losses"], fast["losses"]),
            # Rounding's own reach: the reference against itself with the discriminator weights
            # scaled by 1 + 1e-7. Where the fast path drifts no further than this, its
            # differences are rounding amplified by training (Adam's 1/sqrt(v), VQ code flips).
            "losses_control_reference_perturbed_1e-7": None if control is None else compare_losses(ref["losses"], control["losses"]),
        }
        print(json.dumps({model: {k: v for k, v in result["models"][model].items() if not k.startswith("ops_")}}, indent=1), flush=True)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
