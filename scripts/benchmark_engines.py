"""Time the enhance command's engines (usedddp.inference.ENGINES, and ONNX Runtime on the
exported file) against the unoptimised path, measured in the same run.

    python scripts/benchmark_engines.py --threads 2 --out benchmarks/enhance_engines_cpu.json
    python scripts/benchmark_engines.py --models dac16k --lengths 10 --repeats 1   # quick look

For each model (random weights; the branches' zero-initialised output projections are perturbed
so that the branches are not the identity) and each input length (the demo noisy test set tiled,
levelled as enhance levels it), the clean-only path of the enhance command
(`enhance_waveform(..., noise=False)`, its default 10-s chunks and 1-s overlap) runs with:

- reference: the training graph as trained (today's path before the engines; the baseline);
- float32 (`engine=exact` on a CPU), bf16-decoder (`engine=auto` on a CPU with AMX), bf16: the
  codec's inference graph;
- onnx: the file `usedddp.export` writes, in ONNX Runtime (float32);
- the default engine with shorter chunks (2 s, 4 s): the chunk size by measurement (a shorter
  chunk also changes the output: the branches' attention sees less context).

Reported per path: wall seconds (median of --repeats after one warm-up), the real-time factor
(wall / audio seconds), the speed-up over the reference, and the agreement of its output with
the reference's (SI-SDR in dB and the largest absolute difference). The codec engines do not
apply to model=tiny_stft (an STFT codec): it is timed on the reference path only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_enhance import build_generator, cpu_model, demo_input  # noqa: E402


def agreement(output: torch.Tensor, reference: torch.Tensor) -> dict:
    from usedddp.metrics import si_sdr

    return {"si_sdr_db_vs_reference": round(si_sdr(output, reference), 1),
            "max_abs_diff_vs_reference": float(f"{(output - reference).abs().max():.3g}")}


def time_path(fn, wav: torch.Tensor, warmup_wav: torch.Tensor, repeats: int) -> tuple[torch.Tensor, list[float]]:
    fn(warmup_wav)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(wav)
        times.append(time.perf_counter() - start)
    return out, times


def bench_model(model: str, lengths: list[float], repeats: int, chunks: list[float], onnx: bool, log) -> dict:
    from usedddp.export import OnnxEnhancer, export_onnx
    from usedddp.inference import ENGINES, enhance_waveform, inference_generator, resolve_engine

    torch.manual_seed(0)
    reference = build_generator(model)
    with torch.no_grad():
        for branch in reference.branches.values():
            branch.proj_out.weight.normal_(0, 0.02)
    sr, dac = reference.sample_rate, type(reference.codec).__name__ == "DACCodec"
    default = resolve_engine("auto", torch.device("cpu"))
    paths = {"reference": (reference, 10.0)}
    if dac:
        for engine in ENGINES:
            if engine != "reference":
                paths[engine] = (inference_generator(reference, engine), 10.0)
        for c in chunks:
            paths[f"{default} chunk {c:g}s"] = (paths[default][0], c)
    tmp = None
    if dac and onnx:
        tmp = tempfile.TemporaryDirectory()
        start = time.perf_counter()
        export_onnx(_Loaded(reference), Path(tmp.name) / "model.onnx")
        log(f"  onnx export {time.perf_counter() - start:.1f} s")
        paths["onnx (ONNX Runtime, float32)"] = (OnnxEnhancer(Path(tmp.name) / "model.onnx"), 10.0)
    rows = []
    for seconds in lengths:
        wav = demo_input(seconds, sr)
        warm = wav[:, : round(min(seconds, 10.0) * sr)]
        n_rep = repeats if seconds < 60 else 1
        ref_out = None
        for name, (enhancer, chunk) in paths.items():
            overlap = min(1.0, chunk / 4)
            fn = lambda x, e=enhancer, c=chunk, o=overlap: enhance_waveform(e, x, round(c * sr), round(o * sr), noise=False)[0]
            out, times = time_path(fn, wav, warm, n_rep)
            median = statistics.median(times)
            ref_out = out if name == "reference" else ref_out
            row = {"model": model, "seconds": seconds, "path": name, "chunk_seconds": chunk, "overlap_seconds": overlap,
                   "wall_s": round(median, 3), "all_s": [round(t, 3) for t in times], "rtf": round(median / seconds, 4)}
            row.update(agreement(out, ref_out) if name != "reference" else {"si_sdr_db_vs_reference": None, "max_abs_diff_vs_reference": 0.0})
            rows.append(row)
            log(f"  {model} {seconds:g} s  {name:<34} RTF {row['rtf']:.3f}  SI-SDR vs reference {row['si_sdr_db_vs_reference']} dB")
        base = next(r["wall_s"] for r in rows if r["seconds"] == seconds and r["model"] == model and r["path"] == "reference")
        for r in rows:
            if r["seconds"] == seconds and r["model"] == model:
                r["speedup_over_reference"] = round(base / r["wall_s"], 2)
    if tmp is not None:
        tmp.cleanup()
    return {"model": model, "default_engine": default if dac else "reference (no DAC codec)",
            "parameters_m": round(sum(p.numel() for p in reference.parameters()) / 1e6, 2), "rows": rows}


class _Loaded:
    """What export_onnx reads of a LoadedModel, for a generator built from a config (no checkpoint)."""

    def __init__(self, generator):
        from omegaconf import OmegaConf

        self.generator, self.checkpoint, self.stage, self.config = generator, Path("random weights"), None, OmegaConf.create({})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dac16k", "tiny_stft"])
    parser.add_argument("--lengths", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats under 60 s (60 s and longer: 1)")
    parser.add_argument("--chunks", type=float, nargs="*", default=[2.0, 4.0], help="shorter chunks tried with the default engine")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    models = [bench_model(m, args.lengths, args.repeats, args.chunks, not args.no_onnx, log) for m in args.models]
    result = {
        "benchmark": "enhance_engines",
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "loadavg_1_5_15": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "path": "usedddp.inference.enhance_waveform(..., noise=False): clean stream only, the enhance command's chunks "
                "(10 s, 1 s overlap unless the path says otherwise), demo noisy test set tiled to length, -25 dBFS",
        "timing": "wall seconds, median of the repeats after one warm-up run (60-s inputs: one run); RTF = wall / audio s",
        "models": models,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
