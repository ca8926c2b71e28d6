"""Peak memory of one USE-DDP training step per stage, and of enhancing a long file.

    python scripts/benchmark_memory.py --out benchmarks/memory_cpu.json
    python scripts/benchmark_memory.py --models dac16k --sizes demo --stages 3 --variants reference

Every case runs in a fresh process, so that one case's peak is not another's: the module of
`model=<name>` is built, the memory guard's estimate is taken (usedddp.memory: one probe step on
0.5 s of audio, scaled), and, where the estimate fits under --limit-gb, one training step of the
module's own train_step runs on a batch of that size, from a reset high-water mark (VmHWM; on a
GPU torch's peak allocated bytes). A case whose estimate does not fit is reported with its
estimate and not run, and a watchdog kills any case whose resident set passes the limit.

Sizes: `demo` is data=demo's batch and segment (the default run), `vctk_unsup` the recipe's
(experiment=vctk_unsup). Variants: `reference` (model.fast_step=false, models/step.py) and
`fused` (model.fast_step=true, models/fused_step.py). The enhancement cases run
usedddp.inference.enhance_waveform in 10-s chunks with 1-s overlap (enhance's defaults) over
N minutes of the demo's noisy test files tiled. Step times are reported beside the peaks, from
the same step; for speed comparisons use scripts/benchmark_train_ops.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    import usedddp.config

    with initialize_config_dir(str(usedddp.config.CONFIG_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def size_of(name: str) -> tuple[int, float]:
    """(batch size, segment seconds) of a recipe, read from its config."""
    cfg = compose(["experiment=vctk_unsup", "data.root=/unused"] if name == "vctk_unsup" else [])
    return int(cfg.data.batch_size), float(cfg.data.segment_seconds)


# -- one case, in its own process -------------------------------------------------------------


def run_step_case(case: dict) -> dict:
    import torch

    from usedddp.data.batches import SimulatedBatch, UnpairedBatch
    from usedddp.memory import available_bytes, estimate_step_memory, peak_rss_bytes, reset_peak_rss, rss_bytes
    from usedddp.models.build import build_module

    device = torch.device(case["device"])
    torch.manual_seed(0)
    cfg = compose([f"model={case['model']}", f"model.fast_step={case['variant'] == 'fused'}"])
    module = build_module(cfg.model).to(device)
    module.training_stage = case["stage"]
    built = rss_bytes()
    n = round(case["seconds"] * module.sample_rate)
    estimate = estimate_step_memory(module, case["batch"], n, device, probe_samples=round(0.5 * module.sample_rate))
    result = {**case, "rss_after_build_gib": gib(built), "estimate": estimate.as_dict(),
              "parameters_m": {"generator": round(sum(p.numel() for p in module.generator.parameters()) / 1e6, 2),
                               "discriminators": round(sum(p.numel() for p in module.discriminators.parameters()) / 1e6, 2)}}
    limit = case["limit_gb"] * GIB
    if estimate.total > limit:
        return {**result, "ran": False, "why": f"estimated {gib(estimate.total)} GiB > the {case['limit_gb']} GiB limit"}
    g = torch.Generator().manual_seed(1)
    wav = lambda: (0.05 * torch.randn(case["batch"], 1, n, generator=g)).to(device)  # noqa: E731
    batch = UnpairedBatch(wav(), wav(), wav()) if case["stage"] == 3 else SimulatedBatch(*(lambda c, e: (c + e, c, e))(wav(), wav()))
    optimizers = module.configure_optimizers()[0]
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    before = rss_bytes()
    for _ in range(case["steps"]):
        start = time.perf_counter()
        module.train_step(batch, *optimizers)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(round(time.perf_counter() - start, 3))
    peak = peak_rss_bytes()
    result.update(ran=True, rss_before_step_gib=gib(before), peak_rss_gib=gib(peak), step_s=times,
                  peak_cuda_allocated_gib=gib(torch.cuda.max_memory_allocated()) if device.type == "cuda" else None,
                  available_gib=gib(available_bytes(device)))
    # What the estimate is for: the process's peak, against baseline + state + batch x saved tensors.
    if device.type == "cpu":
        saved = estimate.fixed + case["batch"] * estimate.per_item
        result["measured_overhead"] = round((peak - estimate.baseline - estimate.state) / saved, 3)
    return result


def run_enhance_case(case: dict) -> dict:
    import numpy as np
    import soundfile as sf
    import torch

    from usedddp.assets import DEMO_ROOT
    from usedddp.inference import enhance_waveform, inference_generator, resolve_engine
    from usedddp.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from usedddp.models.build import build_module

    torch.manual_seed(0)
    cfg = compose([f"model={case['model']}"])
    generator = build_module(cfg.model).generator.eval()
    engine = resolve_engine(case["engine"], torch.device("cpu"))
    generator = inference_generator(generator, engine)
    sr = generator.sample_rate
    clips = [sf.read(p, dtype="float32")[0] for p in sorted((DEMO_ROOT / "noisy_testset").glob("*.flac"))]
    pool = np.concatenate(clips)
    length = round(case["minutes"] * 60 * sr)
    wav = torch.from_numpy(np.resize(pool, length))[None]
    built = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    clean, _ = enhance_waveform(generator, wav, chunk=10 * sr, overlap=sr, noise=False)
    seconds = time.perf_counter() - start
    return {**case, "engine_resolved": engine, "rss_before_gib": gib(built), "peak_rss_gib": gib(peak_rss_bytes()),
            "audio_gib": gib(wav.numel() * 4 * 2), "seconds": round(seconds, 1), "rtf": round(seconds / (length / sr), 3),
            "finite": bool(torch.isfinite(clean).all())}


def gib(value) -> float | None:
    return None if value is None else round(value / GIB, 3)


# -- the driver ------------------------------------------------------------------------------


def spawn(case: dict, limit_gb: float, timeout: float) -> dict:
    """Run one case in a child process under an RSS watchdog."""
    proc = subprocess.Popen([sys.executable, __file__, "--case", json.dumps(case)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    killed = {}

    def watch():
        while proc.poll() is None:
            try:
                rss = int(next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                               if line.startswith("VmRSS")).split()[1]) * 1024
            except (OSError, StopIteration, ValueError):
                rss = 0
            if rss > limit_gb * GIB:
                killed["rss_gib"] = gib(rss)
                proc.kill()
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {**case, "ran": False, "why": f"timed out after {timeout:.0f} s"}
    thread.join()
    if killed:
        return {**case, "ran": False, "why": f"killed by the watchdog at {killed['rss_gib']} GiB resident (limit {limit_gb} GiB)"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**case, "ran": False, "why": f"exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["tiny_stft", "tiny", "dac16k"])
    parser.add_argument("--sizes", nargs="+", default=["demo", "vctk_unsup"], choices=["demo", "vctk_unsup"])
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=["reference", "fused"], choices=["reference", "fused"])
    parser.add_argument("--enhance-minutes", nargs="*", type=float, default=[1.0, 10.0])
    parser.add_argument("--enhance-models", nargs="*", default=["tiny_stft", "dac16k"])
    parser.add_argument("--engine", default="auto", help="enhance's engine= for the enhancement cases")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit-gb", type=float, default=None,
                        help="run no case estimated above this, kill any that passes it (default: available memory - 1 GiB)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each case (default: torch's)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        case = json.loads(args.case)
        import torch

        if case.get("threads"):
            torch.set_num_threads(case["threads"])
        print(json.dumps(run_enhance_case(case) if case["kind"] == "enhance" else run_step_case(case)))
        return

    import torch

    from usedddp.memory import available_bytes

    limit = args.limit_gb if args.limit_gb is not None else round((available_bytes(args.device) or 8 * GIB) / GIB - 1.0, 1)
    cases = []
    for model in args.models:
        for size in args.sizes:
            batch, seconds = size_of(size)
            for stage in args.stages:
                for variant in args.variants:
                    # Small models: a few steps (the first allocates the optimizer state); dac16k: the first.
                    steps = 1 if model == "dac16k" else 3
                    cases.append(dict(kind="step", model=model, size=size, batch=batch, seconds=seconds, stage=stage,
                                      variant=variant, steps=steps, device=args.device, limit_gb=limit, threads=args.threads))
    for model in args.enhance_models:
        for minutes in args.enhance_minutes:
            cases.append(dict(kind="enhance", model=model, minutes=minutes, engine=args.engine, threads=args.threads))
    results = []
    for case in cases:
        started = time.time()
        result = spawn(case, limit + 0.5, args.timeout)
        result["wall_s"] = round(time.time() - started, 1)
        results.append(result)
        label = (f"{case['model']} {case['size']} stage {case['stage']} {case['variant']}" if case["kind"] == "step"
                 else f"enhance {case['model']} {case['minutes']} min")
        peak = result.get("peak_rss_gib")
        est = result.get("estimate", {}).get("total_gib")
        print(f"{label}: peak {peak} GiB, estimate {est} GiB" + ("" if result.get("ran", True) else f" ({result['why']})"), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    report = {
        "benchmark": "memory",
        "commit": commit + ("+changes" if dirty else ""),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "cpu_count": os.cpu_count(),
        "threads": args.threads or torch.get_num_threads(),
        "limit_gb": limit,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "cases": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
