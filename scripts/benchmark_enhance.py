"""Time and size enhancement on the CPU: USE-DDP against its floor, a bare DAC codec pass.

    python scripts/benchmark_enhance.py --model dac16k --lengths 1 10 60 --repeats 3 --out bench.json
    python scripts/benchmark_enhance.py --threads 1 --out benchmarks/enhance_cpu.json
    python scripts/benchmark_enhance.py --threads 1 --model tiny --long-minutes 30 --lengths 1 --out benchmarks/enhance_long_cpu.json

For each input length it measures, in inference mode and with the enhance command's defaults
(configs/enhance.yaml: chunk_seconds 10, overlap_seconds 1):

- USE-DDP: `usedddp.inference.enhance_waveform(generator, wav, chunk, overlap)`, the path the
  enhance command takes (encoder -> clean and noise branches -> one decoder pass over both);
- the codec floor: the generator's own codec, `codec.decode(codec.encode(x))`, through the same
  `usedddp.inference.overlap_add` (chunks, cross-fade), i.e. what any DAC-based enhancer pays at least;

reporting wall seconds and process CPU seconds (median of --repeats after --warmup; inputs of
60 s and more default to one repeat), the real-time factor (wall seconds / audio seconds) and
the ratio USE-DDP / codec floor. Each length runs in a fresh subprocess: the model is built
(random weights: speed and memory do not depend on them), the input made and the resident set
measured; then, each from a reset kernel high-water mark (/proc/self/clear_refs), the codec
floor's warm-up and USE-DDP's warm-up, the peak RSS (getrusage ru_maxrss) read after each, so a
peak is that path's own and excludes the transient of building the model; then the timed
repeats, USE-DDP and codec interleaved so that both see the same load from other processes.
Inputs are the embedded demo test set (noisy clips, tiled to length) at the model's sample
rate, levelled as the enhance command levels them.

--long-minutes N adds one N-minute input (the demo clips tiled), enhanced once after a
one-chunk warm-up, to show that memory stays bounded for long files. The metrics of
`usedddp.metrics` (pesq_nb and composite too when the module has them) are timed per file on
4 s and 10 s noisy/clean pairs of the demo test set. Absolute times are what this machine gives
(note its load; on a shared CPU --threads 1 is the steadier setting); the ratio to the codec
floor is the portable number.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from usedddp.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # VmRSS, VmHWM, /proc/self/clear_refs

GIB = 2**30


# --------------------------------------------------------------------------------------------
# Model and inputs


def build_generator(model: str):
    """The generator of configs/model/<model>.yaml as the enhance path builds it from a
    checkpoint's config (usedddp.inference.build_generator_from_config), random weights, eval mode."""
    from hydra import compose, initialize_config_dir

    from usedddp.config import CONFIG_DIR
    from usedddp.inference import build_generator_from_config, model_config

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    return build_generator_from_config(model_config(cfg)).eval()


def enhance_defaults() -> tuple[float, float]:
    """(chunk_seconds, overlap_seconds) of configs/enhance.yaml, the enhance command's defaults."""
    from omegaconf import OmegaConf

    from usedddp.config import CONFIG_DIR

    cfg = OmegaConf.load(CONFIG_DIR / "enhance.yaml")
    return float(cfg.chunk_seconds), float(cfg.overlap_seconds)


def demo_dir(name: str) -> Path:
    from usedddp.assets import DEMO_ROOT

    return Path(DEMO_ROOT) / name


def tiled(files: list[Path], num_samples: int, sample_rate: int) -> torch.Tensor:
    """The files (mono, at sample_rate) concatenated in order, cyclically, cut to num_samples: (1, T)."""
    from usedddp.audio import load_audio

    clips = [load_audio(f, sample_rate) for f in files]
    one_pass = torch.cat(clips, dim=-1)
    reps = -(-num_samples // one_pass.shape[-1])
    return one_pass.repeat(1, reps)[:, :num_samples].contiguous()


def demo_input(seconds: float, sample_rate: int) -> torch.Tensor:
    from usedddp.inference import normalise_level

    files = sorted(demo_dir("noisy_testset").glob("*.flac"))
    wav = tiled(files, round(seconds * sample_rate), sample_rate)
    return normalise_level(wav)[0]  # the level the enhance command gives the model


# --------------------------------------------------------------------------------------------
# The timed paths


def codec_waveform(codec: torch.nn.Module, wav: torch.Tensor, chunk: int, overlap: int) -> torch.Tensor:
    """The codec floor: encode -> decode over the chunks enhance_waveform uses, with its
    cross-fade and normalisation (one stream instead of two)."""
    from usedddp.inference import overlap_add

    def floor(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # The generator hands the decoder its input too (a codec that filters it uses it; DAC ignores it).
        return {"clean": codec.decode(codec.encode(x), x.shape[-1], reference=x)}

    with torch.inference_mode():
        return overlap_add(floor, wav, chunk, overlap, align=int(codec.hop_length))["clean"]


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def worker(job: dict) -> dict:
    """One case in this fresh process. job: {kind: case|long, model, seconds, chunk_seconds,
    overlap_seconds, warmup, repeats, threads}.

    case: the memory phases first, each from a reset high-water mark: the codec floor's warm-up
    run(s), then USE-DDP's (the smaller first, so memory the allocator keeps from it cannot hide
    the larger one's peak); then the timed repeats, USE-DDP and codec interleaved so that both see
    the same contention from other processes.
    long: USE-DDP only, warmed up on the first chunk, then one timed run; the peak covers both.
    """
    from usedddp.inference import enhance_waveform

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(0)
    rss_start = rss_bytes()
    generator = build_generator(job["model"])
    sr = generator.sample_rate
    chunk, overlap = round(job["chunk_seconds"] * sr), round(job["overlap_seconds"] * sr)
    wav = demo_input(job["seconds"], sr)
    use_ddp = lambda x=wav: enhance_waveform(generator, x, chunk, overlap)
    codec = lambda x=wav: codec_waveform(generator.codec, x, chunk, overlap)
    gc.collect()
    rss_loaded = rss_bytes()
    result = {"rss_start_gib": rss_start / GIB, "rss_after_load_gib": rss_loaded / GIB,
              "build_peak_rss_gib": peak_rss_bytes() / GIB, "input_mib": wav.numel() * wav.element_size() / 2**20,
              "threads": torch.get_num_threads()}
    if job["kind"] == "long":
        result["peak_reset_after_load"] = reset_peak_rss()
        for _ in range(job["warmup"]):
            use_ddp(wav[:, :chunk])
        result["use_ddp"] = [timed(use_ddp) for _ in range(job["repeats"])]
        result["peak_rss_gib"] = peak_rss_bytes() / GIB
        return result
    reset = True
    for name, fn in (("codec", codec), ("use_ddp", use_ddp)):
        reset &= reset_peak_rss()
        for _ in range(max(1, job["warmup"])):
            fn()
        result[f"peak_rss_{name}_gib"] = peak_rss_bytes() / GIB
    result["peak_reset_after_load"] = reset
    result["use_ddp"], result["codec"] = [], []
    for _ in range(job["repeats"]):
        result["use_ddp"].append(timed(use_ddp))
        result["codec"].append(timed(codec))
    result["peak_rss_all_runs_gib"] = peak_rss_bytes() / GIB  # since the USE-DDP phase's reset
    return result


def run_worker(job: dict, timeout: float | None = None) -> dict:
    """Run one case in a fresh interpreter; its result is the last line of its stdout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Metrics


def metric_functions() -> dict:
    """name -> callable(estimate, reference, sample_rate) for the metrics usedddp.metrics has;
    pesq_nb and composite are included when the module provides them."""
    import usedddp.metrics as m

    def intrusive(fn):
        params = inspect.signature(fn).parameters
        if "sample_rate" in params or len(params) >= 3:
            return lambda est, ref, sr: fn(est, ref, sample_rate=sr) if "sample_rate" in params else fn(est, ref, sr)
        return lambda est, ref, sr: fn(est, ref)

    found = {name: intrusive(getattr(m, name)) for name in ("si_sdr", "stoi", "estoi", "pesq_wb", "pesq_nb", "composite")
             if callable(getattr(m, name, None))}
    found["dnsmos"] = lambda est, ref, sr: m.dnsmos(est, sr)
    return found


def dnsmos_windows(num_samples: int, sample_rate: int = 16000, window_s: float = 9.01) -> int:
    """How many 9.01 s windows DNSMOS (speechmos, as Microsoft's reference script) scores: a short
    clip is doubled until it fills one window, then windows hop by 1 s, so a 4 s clip (doubled to
    16 s) costs 7 windows while a 10 s clip costs 1."""
    n = num_samples
    while n < window_s * sample_rate:
        n *= 2
    return int(n // sample_rate - window_s) + 1


def time_metrics(seconds: list[float], repeats: int, sample_rate: int = 16000) -> dict:
    """Seconds per file of each metric on demo test-set pairs (noisy against clean) tiled to each length."""
    names = sorted(f.name for f in demo_dir("noisy_testset").glob("*.flac"))
    out = {}
    functions = metric_functions()
    for s in seconds:
        n = round(s * sample_rate)
        est = tiled([demo_dir("noisy_testset") / f for f in names], n, sample_rate)
        ref = tiled([demo_dir("clean_testset") / f for f in names], n, sample_rate)
        row = {}
        for name, fn in functions.items():
            try:
                fn(est, ref, sample_rate)  # warm-up: imports, ONNX sessions
                times = [timed(lambda fn=fn, est=est, ref=ref: fn(est, ref, sample_rate)) for _ in range(repeats)]
                row[name] = {**median_block([w for w, _ in times]), "cpu_median": round(statistics.median(c for _, c in times), 4)}
                if name == "dnsmos":
                    row[name]["windows"] = dnsmos_windows(n, sample_rate)
            except Exception as error:  # noqa: BLE001 (a metric that fails here is reported, not fatal)
                row[name] = {"error": f"{type(error).__name__}: {error}"}
        out[f"{s:g}"] = row
    return out


# --------------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_block(times: list[float]) -> dict:
    return {"median": round(statistics.median(times), 4), "all": [round(t, 4) for t in times]}


def case_result(seconds: float, r: dict, chunks: int) -> dict:
    wall = {k: [w for w, _ in r[k]] for k in ("use_ddp", "codec")}
    cpu = {k: [c for _, c in r[k]] for k in ("use_ddp", "codec")}
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    load = r["rss_after_load_gib"]
    return {
        "seconds": seconds,
        "chunks": chunks,
        "repeats": len(wall["use_ddp"]),
        "use_ddp_s": median_block(wall["use_ddp"]),
        "codec_s": median_block(wall["codec"]),
        "rtf": round(med["use_ddp"] / seconds, 4),
        "codec_rtf": round(med["codec"] / seconds, 4),
        "ratio_use_ddp_over_codec": round(med["use_ddp"] / med["codec"], 2),
        "use_ddp_cpu_s": median_block(cpu["use_ddp"]),
        "codec_cpu_s": median_block(cpu["codec"]),
        "ratio_cpu_time_use_ddp_over_codec": round(cpu_med["use_ddp"] / cpu_med["codec"], 2),
        "memory_gib": {
            "rss_after_load": round(load, 3),
            "peak_rss_use_ddp": round(r["peak_rss_use_ddp_gib"], 3),
            "peak_over_load_use_ddp": round(r["peak_rss_use_ddp_gib"] - load, 3),
            "peak_rss_codec": round(r["peak_rss_codec_gib"], 3),
            "peak_over_load_codec": round(r["peak_rss_codec_gib"] - load, 3),
            "peak_rss_all_timed_runs": round(r["peak_rss_all_runs_gib"], 3),
            "input": round(r["input_mib"] / 1024, 4),
        },
        "peak_reset_after_load": r["peak_reset_after_load"],
    }


def print_table(result: dict) -> None:
    print(f"\n{result['benchmark']}  model={result['model']}  cpu={result['cpu']} threads={result['threads']}  "
          f"chunk={result['chunk_seconds']:g}s overlap={result['overlap_seconds']:g}s  torch {result['torch']}  "
          f"load avg {result['loadavg_1_5_15']['before'][0]:.1f} -> {result['loadavg_1_5_15']['after'][0]:.1f}")
    print(f"{'input':>7} {'chunks':>6} {'USE-DDP s':>9} {'RTF':>7} {'codec s':>8} {'codec RTF':>9} {'ratio':>6} "
          f"{'ratio(cpu)':>10} {'load GiB':>8} {'peak GiB':>8} {'peak-load':>9} {'codec peak-load':>15}")
    for c in result["cases"]:
        m = c["memory_gib"]
        print(f"{c['seconds']:>6g}s {c['chunks']:>6} {c['use_ddp_s']['median']:>9.3f} {c['rtf']:>7.3f} "
              f"{c['codec_s']['median']:>8.3f} {c['codec_rtf']:>9.3f} {c['ratio_use_ddp_over_codec']:>6.2f} "
              f"{c['ratio_cpu_time_use_ddp_over_codec']:>10.2f} {m['rss_after_load']:>8.2f} {m['peak_rss_use_ddp']:>8.2f} "
              f"{m['peak_over_load_use_ddp']:>9.3f} {m['peak_over_load_codec']:>15.3f}")
    if result.get("long"):
        lg = result["long"]
        print(f"long: {lg['minutes']:g} min ({lg['chunks']} chunks) with model={lg['model']}: {lg['use_ddp_s']:.1f} s, "
              f"RTF {lg['rtf']:.4f}, peak RSS {lg['peak_rss_gib']:.2f} GiB ({lg['peak_over_load_gib']:.2f} GiB over the "
              f"loaded model and {lg['input_mib']:.0f} MiB input)")
    for length, row in (result.get("metrics_s_per_file") or {}).items():
        cells = "  ".join(f"{k} {v['median']:.3f}" if "median" in v else f"{k} ERROR" for k, v in row.items())
        print(f"metrics, {length} s clip (s per file): {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dac16k", choices=["dac16k", "tiny", "tiny_stft"])
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.0, 10.0, 60.0], help="input lengths in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument("--repeats-60s", type=int, default=1, help="repeats for inputs of 60 s and longer (at most --repeats)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case (they are where the peaks are read)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own); on a CPU shared with other work, 1 "
                             "avoids OpenMP threads spin-waiting on a descheduled sibling")
    parser.add_argument("--chunk-seconds", type=float, default=None, help="default: configs/enhance.yaml")
    parser.add_argument("--overlap-seconds", type=float, default=None, help="default: configs/enhance.yaml")
    parser.add_argument("--long-minutes", type=float, default=0, help="also enhance one input this many minutes long")
    parser.add_argument("--metric-lengths", type=float, nargs="*", default=[4.0, 10.0], help="clip lengths for the metric timings (none: skip)")
    parser.add_argument("--metric-repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file to write")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    from usedddp.inference import chunk_bounds

    started = time.perf_counter()
    load_before = os.getloadavg()
    default_chunk, default_overlap = enhance_defaults()
    chunk_s = default_chunk if args.chunk_seconds is None else args.chunk_seconds
    overlap_s = default_overlap if args.overlap_seconds is None else args.overlap_seconds
    generator = build_generator(args.model)
    sr, hop = generator.sample_rate, generator.codec.hop_length
    count = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e6, 2)
    parameters = {"generator": count(generator), "codec": count(generator.codec),
                  **{f"branch_{k}": count(v) for k, v in generator.branches.items()}}
    del generator
    gc.collect()

    base_job = {"model": args.model, "chunk_seconds": chunk_s, "overlap_seconds": overlap_s,
                "warmup": args.warmup, "threads": args.threads}
    cases = []
    for seconds in args.lengths:
        repeats = min(args.repeats, args.repeats_60s) if seconds >= 60 else args.repeats
        job = {**base_job, "seconds": seconds, "repeats": repeats}
        print(f"[{time.perf_counter() - started:6.0f}s] {seconds:g} s input: USE-DDP and codec floor ...", file=sys.stderr, flush=True)
        r = run_worker({**job, "kind": "case"})
        n_chunks = len(chunk_bounds(round(seconds * sr), round(chunk_s * sr), round(overlap_s * sr), hop))
        cases.append(case_result(seconds, r, n_chunks))

    long = None
    if args.long_minutes:
        seconds = 60 * args.long_minutes
        print(f"[{time.perf_counter() - started:6.0f}s] {args.long_minutes:g} min input: USE-DDP ...", file=sys.stderr, flush=True)
        r = run_worker({**base_job, "kind": "long", "seconds": seconds, "repeats": 1})
        (wall, cpu), = r["use_ddp"]
        long = {
            "model": args.model,
            "minutes": args.long_minutes,
            "seconds": seconds,
            "chunks": len(chunk_bounds(round(seconds * sr), round(chunk_s * sr), round(overlap_s * sr), hop)),
            "use_ddp_s": round(wall, 2),
            "use_ddp_cpu_s": round(cpu, 2),
            "rtf": round(wall / seconds, 4),
            "input_mib": round(r["input_mib"], 1),
            "rss_after_load_gib": round(r["rss_after_load_gib"], 3),
            "peak_rss_gib": round(r["peak_rss_gib"], 3),
            "peak_over_load_gib": round(r["peak_rss_gib"] - r["rss_after_load_gib"], 3),
            "peak_reset_after_load": r["peak_reset_after_load"],
            "note": f"one timed run after {args.warmup} warm-up run(s) on the first {chunk_s:g} s; the peak covers both",
        }

    metrics = None
    if args.metric_lengths:
        print(f"[{time.perf_counter() - started:6.0f}s] metrics ...", file=sys.stderr, flush=True)
        metrics = time_metrics(args.metric_lengths, args.metric_repeats)

    result = {
        "benchmark": "enhance",
        "model": args.model,
        "device": "cpu",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads() if not args.threads else args.threads,
        "loadavg_1_5_15": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "parameters_m": parameters,
        "sample_rate": sr,
        "chunk_seconds": chunk_s,
        "overlap_seconds": overlap_s,
        "warmup": args.warmup,
        "path": "usedddp.enhance.enhance_waveform (inference mode), demo noisy test set tiled to length, levelled to -25 dBFS",
        "codec_floor": "generator.codec encode -> decode over the same chunks and cross-fade",
        "timing": "per case: warm-up, then repeats with USE-DDP and the codec floor interleaved; wall seconds and "
                  "process CPU seconds (all threads), medians; RTF = wall / audio seconds",
        "memory": "per case in a fresh process: RSS after building the model and input; peaks = ru_maxrss over the "
                  "warm-up run(s) of the codec floor, then of USE-DDP, the high-water mark reset before each",
        "cases": cases,
        "long": long,
        "metrics_s_per_file": metrics,
        "metrics_clips": "demo noisy test set against clean test set, tiled to length, 16 kHz; one warm-up call",
        "wall_time_s": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result, indent=2))
    print_table(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
