"""`mlpbench report`: plots, a CSV and report.md from pytest-benchmark JSON files."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlp.cli_args import fraction


def register(subparsers) -> None:
    from mlp.gpus import DEFAULT_MARGIN
    from mlp.report import DEFAULT_REPORT_GPUS, OUTPUT_FILES

    parser = subparsers.add_parser(
        "report",
        help="plots, a tidy CSV and report.md from benchmark results",
        description="Read pytest-benchmark JSON written by the bench/ suite (or mlpbench "
                    f"sweep) and write {', '.join(OUTPUT_FILES)} into --out.",
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS.json",
                        help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write the report into (created if missing)")
    parser.add_argument("--gpus", default=",".join(DEFAULT_REPORT_GPUS), metavar="NAMES",
                        help="comma-separated GPUs to judge fits against (see `mlpbench gpus`; "
                             f"default {','.join(DEFAULT_REPORT_GPUS)})")
    parser.add_argument("--margin", type=fraction, default=None,
                        help=f"fraction of each GPU's memory held back (default {DEFAULT_MARGIN})")
    parser.add_argument("--force", action="store_true",
                        help="replace a report already in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlp.report import build_report

    gpus = [name for name in args.gpus.split(",")]
    report_path = build_report(args.results, args.out, gpus, force=args.force,
                               margin=args.margin)
    print(f"wrote {report_path} and its plots in {report_path.parent}")
    return 0
