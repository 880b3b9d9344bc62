"""`mlpbench gpus`: the GPUs that `mlpbench fit --gpu NAME` knows, and their memory."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pandas as pd

from mlp.gpus import DEFAULT_MARGIN, GPUS
from mlp.units import GIB


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gpus",
        help="list the GPUs that fit --gpu knows",
        description="The catalogue of GPUs by name, with the memory their driver reports.",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    specs = [dataclasses.asdict(spec) for spec in GPUS.values()]
    if args.json:
        print(json.dumps(specs, indent=2))
        return 0
    table = pd.DataFrame(specs)
    table["memory (GiB)"] = table.pop("memory_bytes") / GIB
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"fit holds back {DEFAULT_MARGIN:.0%} of the memory by default (--margin); "
          "--gpu auto reads this machine's GPU instead.")
    return 0
