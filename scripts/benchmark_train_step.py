"""Time one USE-DDP training step (discriminator + generator) against a bare codec step.

    python scripts/benchmark_train_step.py --model dac16k --batch 1 --seconds 1 --device cpu --out bench.json

The USE-DDP step is the LightningModule's own `train_step`, the body of its `training_step`
(both players' losses, backward, the finite checks, gradient norms and clipping, both optimizer
steps, with the optimizers its config builds), called without a Trainer on one fixed batch;
nothing of it is copied here. The
baseline is one step of the codec alone (encode -> decode -> mel loss -> backward -> AdamW): the
floor the dual-branch, three-adversary step is built on. Both are measured in the same process
on the same inputs, so the ratio is meaningful across machines; absolute times are what this
machine gives.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import usedddp.config  # CONFIG_DIR; registers the config resolver
from usedddp.models.build import build_module
from usedddp.data.batches import SimulatedBatch, UnpairedBatch


def build(model: str, overrides: list[str]):
    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", *overrides])
    return build_module(cfg.model)


def module_step(module, batch, optimizers, autocast) -> None:
    """One step of the module's own train_step (discriminator, then generator)."""
    with autocast:
        module.train_step(batch, *optimizers)


def codec_step(codec, loss, wav, opt, autocast):
    with autocast:
        rebuilt = codec.decode(codec.encode(wav), wav.shape[-1], reference=wav)  # a masking codec filters wav
        value = loss(rebuilt, wav)["mel"]
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()


def timed(fn, warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dac16k")
    parser.add_argument("--stage", type=int, default=3, help="stage whose step is timed (3: all branches and ensembles)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators for two steps")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.branch.depth=2")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    module = build(args.model, args.overrides).to(device)
    module.training_stage = args.stage
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    n = round(args.seconds * module.sample_rate)
    wav = lambda: 0.05 * torch.randn(args.batch, 1, n, device=device)  # noqa: E731
    batch = (
        UnpairedBatch(wav(), wav(), wav()) if args.stage == 3 else SimulatedBatch(noisy=wav(), clean=wav(), noise=wav())
    )
    optimizers, _ = module.configure_optimizers()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    use_ddp = timed(lambda: module_step(module, batch, optimizers, autocast), args.warmup, args.steps, device)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    codec = module.generator.codec
    opt_c = torch.optim.AdamW(codec.parameters(), lr=1e-5)
    baseline = timed(lambda: codec_step(codec, module.reconstruction, batch.noisy, opt_c, autocast), args.warmup, args.steps, device)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                module_step(module, batch, optimizers, autocast)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    median, base = statistics.median(use_ddp), statistics.median(baseline)
    result = {
        "benchmark": "train_step",
        "model": args.model,
        "stage": args.stage,
        "batch": args.batch,
        "seconds": args.seconds,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "parameters_m": {
            "generator": round(sum(p.numel() for p in module.generator.parameters()) / 1e6, 2),
            "codec": round(sum(p.numel() for p in codec.parameters()) / 1e6, 2),
            "discriminators": round(sum(p.numel() for p in module.discriminators.parameters()) / 1e6, 2),
        },
        "use_ddp_step_s": {"median": round(median, 4), "all": [round(t, 4) for t in use_ddp]},
        "codec_step_s": {"median": round(base, 4), "all": [round(t, 4) for t in baseline]},
        "ratio_use_ddp_over_codec": round(median / base, 2),
        "samples_per_s": round(args.batch / median, 2),
        "audio_seconds_per_s": round(args.batch * args.seconds / median, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_gpu_gib": None if peak_gpu is None else round(peak_gpu, 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
