"""`mlpbench probe`: the largest batch size that really runs, found in a handful of steps."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from mlp.cli_args import add_device_arg, add_model_args, config_from_args, positive_int
from mlp.device import resolve_device
from mlp.probe import probe_max_batch
from mlp.units import GIB, format_bytes, parse_bytes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="largest batch size that runs on the device, by running steps",
        description="Search for the largest batch size whose step runs on the device, "
        "starting from the estimate; on the CPU, within --memory.",
    )
    add_model_args(parser, batch_size=False)
    add_device_arg(parser)
    parser.add_argument("--memory", metavar="SIZE",
                        help="budget for the measured peak: 24GiB, 80GB or a byte count "
                        "(required on the cpu; on cuda, running out of memory decides "
                        "without it)")
    parser.add_argument("--start", type=positive_int,
                        help="first batch size to try (default: the estimate's answer)")
    parser.add_argument("--limit", type=positive_int, default=2**20,
                        help="largest batch size tried (default 1048576)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Check every input before any step is run.
    config = config_from_args(args, batch_size=1)
    budget_bytes = parse_bytes(args.memory, "--memory") if args.memory is not None else None
    device = resolve_device(args.device)
    if device.type == "cpu" and budget_bytes is None:
        raise ValueError("--memory is required on the cpu, where a step does not run out of "
                         "memory at any size worth searching for")

    result = probe_max_batch(config, device, budget_bytes, start=args.start, limit=args.limit)
    if args.json:
        print(json.dumps({**config.as_dict(), **result.as_dict()}, indent=2))
        return 0

    print(f"{config.describe(batch=False)}, on {result.device}")
    if budget_bytes is not None:
        print(f"  budget      {format_bytes(budget_bytes)} for the measured peak")
    else:
        print("  budget      what the device has: a trial fits when it does not run out")
    given = "given" if args.start is not None else "the estimate's answer"
    print(f"  started at  batch {result.start_batch_size:,} ({given})")
    if result.max_batch_size:
        print(f"  max batch   {result.max_batch_size:,}: measured peak "
              f"{format_bytes(result.peak_bytes)}")
    else:
        print("  does not fit: batch 1 did not")
    print(f"  runs        {result.runs}")
    trials = pd.DataFrame(result.trials)
    trials["peak (GiB)"] = trials.pop("peak_bytes").astype(float) / GIB
    trials = trials.drop(columns=["reserved_bytes"])
    print(trials.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0
