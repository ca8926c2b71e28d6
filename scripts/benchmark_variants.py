"""Time one USE-DDP training step of config variants against a baseline, in one process.

    python scripts/benchmark_variants.py --model tiny_stft --out benchmarks/train_step_rvq_cpu.json \
        --variant rvq_off=model.branch.n_codebooks=0 --variant dac_tiny_codec=model/codec=dac_tiny

Each variant is the baseline model plus its comma-separated overrides. Steps are taken round-robin
(baseline, variant 1, ..., baseline, ...) on the same inputs, so a change in the machine's load
hits every variant alike and the ratios against the baseline hold where absolute times do not.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_train_step import build, module_step  # noqa: E402

from usedddp.data.batches import SimulatedBatch, UnpairedBatch  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME=OVERRIDE[,OVERRIDE...], e.g. rvq_off=model.branch.n_codebooks=0")
    return name, overrides.split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny_stft")
    parser.add_argument("--stage", type=int, default=3, help="stage whose step is timed (3: all branches and ensembles)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="NAME=OVERRIDES")
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to the baseline and every variant")
    args = parser.parse_args()
    if not args.variant:
        parser.error("give at least one --variant NAME=OVERRIDES")

    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    variants = {"baseline": list(args.overrides), **{name: [*args.overrides, *extra] for name, extra in args.variant}}
    steps, times, batch = {}, {}, None
    for name, overrides in variants.items():
        torch.manual_seed(0)
        module = build(args.model, overrides).to(device)
        module.training_stage = args.stage
        if batch is None:  # one batch for all, at the baseline's sample rate
            sample_rate, n = module.sample_rate, round(args.seconds * module.sample_rate)
            wav = lambda: 0.05 * torch.randn(args.batch, 1, n, device=device)  # noqa: E731
            batch = UnpairedBatch(wav(), wav(), wav()) if args.stage == 3 else SimulatedBatch(noisy=wav(), clean=wav(), noise=wav())
        elif module.sample_rate != sample_rate:
            raise SystemExit(f"--variant {name}: {module.sample_rate} Hz, the baseline runs at {sample_rate} Hz; compare at one rate")
        optimizers, _ = module.configure_optimizers()  # the config's own (AdamW, its learning rates)
        steps[name] = (module, lambda m=module, o=optimizers: module_step(m, batch, o, autocast))
        times[name] = []
        for _ in range(args.warmup):
            steps[name][1]()
    for _ in range(args.rounds):
        for name, (_, step) in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["baseline"])
    result = {
        "benchmark": "train_step_variants",
        "model": args.model,
        "overrides": list(args.overrides),
        "stage": args.stage,
        "batch": args.batch,
        "seconds": args.seconds,
        "precision": args.precision,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "variants": {
            name: {
                "overrides": variants[name][len(args.overrides):],
                "generator_parameters_m": round(sum(p.numel() for p in module.generator.parameters()) / 1e6, 3),
                "step_s": {"median": round(statistics.median(times[name]), 4), "all": [round(t, 4) for t in times[name]]},
                "ratio_to_baseline": round(statistics.median(times[name]) / base, 3),
            }
            for name, (module, _) in steps.items()
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
