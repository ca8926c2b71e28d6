#!/usr/bin/env python
"""Print the results table of an ablation run as a Hydra multirun, from its evaluation summaries.

    python scripts/ablation_table.py multirun/demo/2026-11-23_06-11-43 [--condition snr_db] [--markdown table.md]

One row for the noisy input, then one per run (labelled by the overrides that vary across the
sweep, e.g. `prior=demo_matched`; in-domain clean priors flagged), with the clean prior, stage,
codec and the mean of each metric. Reads `<run>/evaluation/summary.json` under the directory
(written by scripts/evaluate_runs.py or `python -m usedddp.evaluate ckpt=<run> output=<run>/evaluation`);
refuses runs scored on different test sets. Exit code 2 when there is nothing to tabulate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from usedddp.ablation import AblationError, evaluation_name, report



def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("multirun_dir", type=Path, help="the sweep directory (multirun/<run_name>/<time>) or one run")
    ap.add_argument("--condition", help="also a table per value of this condition (e.g. snr_db); 'all' for every one")
    ap.add_argument("--all-metrics", action="store_true", help="every scored metric, not only the main ones")
    ap.add_argument("--markdown", type=Path, metavar="OUT.md", help="also write the tables to this file")
    ap.add_argument("--stage", type=int, help="the evaluations of this stage's checkpoints (evaluate_runs.py --stage N: "
                                              "<run>/evaluation_stageN) instead of the latest stage's (<run>/evaluation)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        text = report(args.multirun_dir, condition=args.condition, metrics="all" if args.all_metrics else "main",
                      evaluation=evaluation_name(args.stage))
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
