"""bf16 vs fp32 on the default profile: does mixed precision change any conclusion?

Compares two finished run folders of the same profile that differ only in `precision` (for example
`runs/default`, trained with precision auto = bf16 on a CPU with native bf16, and `runs/default-fp32`, made with
`python -m helpers run --run-dir runs/default-fp32 -p precision fp32`), per student x arm and paired by seed:
test accuracy and agreement with each run's own teacher, B minus A, with 95% intervals, and each run's verdict.

    python scripts/compare_precision.py runs/default-fp32 runs/default
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.report.comparison import compare_runs, confounds, precisions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--csv", help="also write the table here")
    args = parser.parse_args()
    pa, pb = precisions(args.run_a, args.run_b)
    table = compare_runs(args.run_a, args.run_b)
    pd.set_option("display.width", 200)
    print(f"A = {args.run_a} ({pa}), B = {args.run_b} ({pb}); differences are B - A on the test split, "
          f"paired by seed, 95% t-intervals")
    print(table.round(4).to_string(index=False))
    same = (table["verdict_a"] == table["verdict_b"]).all()
    print(f"\nverdicts {'identical' if same else 'DIFFER'} between the two runs")
    for note in confounds(table):
        print(f"not precision alone: {note}")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
