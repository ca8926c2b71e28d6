#!/usr/bin/env python
"""Controlled stage-3 experiments: stage 3 alone, from one stage-2 checkpoint, one row per
variant (Hydra overrides) and seed, scored by the end-of-stage validation next to the stage-2
checkpoint's own scores (the variant `none`: generator learning rate 0).

    python scripts/stage3_experiments.py --init RUN/stage2/checkpoints/last.ckpt --steps 100 \\
        --seeds 0 1 --out runs/stage3_exp \\
        --variant as_is= \\
        --variant sisdr30="model.reconstruction.sisdr_max_db=30" \\
        --variant "no_adv=model.loss_weights={adv/clean/gen:0,adv/noise/gen:0}"

Each run is `python -m usedddp.train stages=[3] init_from=... stage_max_steps={3:N} seed=S
<overrides>` in OUT/<variant>_seed<S>; a finished run is not repeated. Writes OUT/results.json
and OUT/results.md (mean and per-seed values).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from statistics import mean

METRICS = {"val/si_sdr": "SI-SDR", "val/pesq_wb": "PESQ-wb", "val/estoi": "ESTOI", "val/hf_level": "level 4-8k",
           "val/hf_si_sdr": "SI-SDR 4-8k", "val/mix/si_sdr": "mix SI-SDR", "val/alpha": "alpha", "val/beta": "beta"}
INPUT = {"val/si_sdr": "val/input/si_sdr", "val/pesq_wb": "val/input/pesq_wb", "val/estoi": "val/input/estoi",
         "val/hf_level": "val/input/hf_level", "val/hf_si_sdr": "val/input/hf_si_sdr"}


def run(out: Path, name: str, seed: int, init: str, steps: int, overrides: list[str], common: list[str]) -> dict:
    run_dir = out / f"{name}_seed{seed}"
    summary = run_dir / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "usedddp.train", "stages=[3]", f"init_from={init}", f"stage_max_steps={{3:{steps}}}",
               f"seed={seed}", f"hydra.run.dir={run_dir}", *common, *overrides]
        print("$", shlex.join(cmd), flush=True)
        with open(out / f"{name}_seed{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "offline"})
    return json.loads(summary.read_text())["stages"]["3"]["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="the stage-2 checkpoint every variant starts from")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDES (space-separated; may be empty)")
    ap.add_argument("--common", default="logger=csv model.val_dnsmos=false n_examples=0",
                    help="overrides given to every run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [("none", ["model.optimizer_g.lr=0", "model.optimizer_d.lr=0"])]
    variants += [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name, overrides in variants:
        for seed in args.seeds if name != "none" else args.seeds[:1]:
            metrics = run(args.out, name, seed, args.init, args.steps if name != "none" else 1, overrides,
                          shlex.split(args.common))
            results.setdefault(name, {"overrides": overrides, "seeds": {}})["seeds"][str(seed)] = metrics
            results_path.write_text(json.dumps(results, indent=2))
    any_run = next(iter(results["none"]["seeds"].values()))
    keys = [k for k in METRICS if any(k in m for r in results.values() for m in r["seeds"].values())]
    lines = ["| variant | overrides | seeds | " + " | ".join(METRICS[k] for k in keys) + " |",
             "|---" * (3 + len(keys)) + "|",
             "| noisy input | – | – | " + " | ".join(f"{any_run[INPUT[k]]:.3f}" if INPUT.get(k) in any_run else "–" for k in keys) + " |"]
    for name, r in results.items():
        cells = []
        for k in keys:
            values = [m[k] for m in r["seeds"].values() if k in m]
            cells.append(f"{mean(values):.3f}" + (f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""))
        label = "stage 2 (no stage 3)" if name == "none" else name
        lines.append(f"| {label} | `{' '.join(r['overrides'])}` | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(f"stage 3 alone, {args.steps} steps from {args.init}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
