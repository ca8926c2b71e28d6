#!/usr/bin/env python
"""Evaluate every training run of a Hydra multirun on one test set, then print the ablation table.

    python scripts/evaluate_runs.py multirun/demo/2026-11-23_06-11-43 [--force] [EVALUATE_OVERRIDES ...]
    python scripts/evaluate_runs.py multirun/vctk_unsup/<time> data.root=/data/VCTK-DEMAND device=cuda

For each run below the directory, one after the other:

    python -m usedddp.evaluate ckpt=<run> output=<run>/evaluation [EVALUATE_OVERRIDES ...]

(the run's latest stage's last.ckpt, or with --stage N stage N's into <run>/evaluation_stageN;
the enhanced test set goes to <run>/evaluation/enhanced,
the scores to <run>/evaluation/summary.json, per_file.csv and summary.md, the command's log to
<run>/evaluation/log). Without overrides each run is scored on its own held-out set (for
data=demo, the embedded test set); pass data.root=... or data.noisy_dir=... data.clean_dir=... to
score every run on the same other test set. Runs already evaluated are skipped unless --force
(which re-evaluates with overwrite=true). A run that fails is reported and the others go on; the
exit code is 1 if any failed. Then the table is printed as scripts/ablation_table.py prints it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from usedddp.ablation import AblationError, evaluation_name, find_runs, report


def hydra_quote(value: str) -> str:
    """A Hydra override value taken literally: sweep run folders are named like
    `0_prior=demo,stage_max_steps={1:150}`, whose commas and braces Hydra would otherwise parse."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"



def evaluate_command(run_dir: Path, overrides: list[str], force: bool, stage: int | None = None) -> list[str]:
    output = run_dir / evaluation_name(stage)
    ckpt = run_dir if stage is None else run_dir / f"stage{stage}" / "checkpoints" / "last.ckpt"
    return [sys.executable, "-m", "usedddp.evaluate", f"ckpt={hydra_quote(str(ckpt))}",
            f"output={hydra_quote(str(output))}", f"hydra.run.dir={hydra_quote(str(output / 'log'))}",
            *(["overwrite=true"] if force else []), *overrides]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("multirun_dir", type=Path, help="the sweep directory (multirun/<run_name>/<time>) or one run")
    ap.add_argument("overrides", nargs="*", help="passed to python -m usedddp.evaluate (data.root=..., dnsmos=false, device=cuda, jobs=N)")
    ap.add_argument("--force", action="store_true", help="re-evaluate runs that already have an evaluation")
    ap.add_argument("--stage", type=int, help="evaluate this stage's last.ckpt into <run>/evaluation_stageN "
                                              "(default: the latest stage's, into <run>/evaluation)")
    ap.add_argument("--condition", help="also print a table per value of this condition (e.g. snr_db; 'all')")
    ap.add_argument("--all-metrics", action="store_true", help="every scored metric in the table, not only the main ones")
    ap.add_argument("--markdown", type=Path, metavar="OUT.md", help="also write the table to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)  # options may come after the overrides
    try:
        runs = find_runs(args.multirun_dir, evaluation_name(args.stage))
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    failed, done, skipped = [], [], []
    for number, run in enumerate(runs, 1):
        head = f"[{number}/{len(runs)}] {run.label}"
        if (run.evaluation_dir / "summary.json").is_file() and not args.force:
            print(f"{head}: already evaluated ({run.evaluation_dir / 'summary.json'}); --force re-evaluates", flush=True)
            skipped.append(run)
            continue
        cmd = evaluate_command(run.dir, args.overrides, args.force, args.stage)
        print(f"{head}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(cmd, env=env)
        seconds = time.perf_counter() - started
        summary_written = (run.evaluation_dir / "summary.json").is_file()
        if code != 0:
            # evaluate exits 1 when single files failed but the others were scored: a summary exists.
            why = f"exit code {code}" + ("; some files failed, see its summary.md" if summary_written else "")
            print(f"{head}: FAILED ({why}) after {seconds:.0f} s", flush=True)
            failed.append((run, why))
        else:
            print(f"{head}: done in {seconds:.0f} s", flush=True)
            done.append(run)
    print(f"\nevaluated {len(done)}, skipped {len(skipped)} (already evaluated), failed {len(failed)}")
    for run, why in failed:
        print(f"  FAILED {run.dir}: {why}")
    print()
    try:
        text = report(args.multirun_dir, condition=args.condition, metrics="all" if args.all_metrics else "main",
                      evaluation=evaluation_name(args.stage))
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if failed else 2
    print(text, end="")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"wrote {args.markdown}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
