"""`mlpbench estimate`: predict the peak memory of one configuration without running it."""

from __future__ import annotations

import argparse
import json

import torch

from mlp.cli_args import add_model_args, config_from_args
from mlp.estimate import CATEGORIES, METHODS, estimate
from mlp.units import format_gib

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="predict one configuration's peak memory, no GPU needed",
        description="Predict the peak memory of one step, as `measure` would report it, "
                    "from a closed-form model (analytic) or a run on the meta device (trace).",
    )
    add_model_args(parser)
    # auto follows `mlpbench measure --device auto`: the estimate then predicts what measure
    # would report on this machine. cuda needs no GPU: it only selects CUDA's rules.
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="whose memory rules apply: cpu, cuda, or auto (cuda when a GPU is "
                             "visible, else cpu; default auto)")
    parser.add_argument("--method", choices=METHODS, default="analytic",
                        help="analytic (closed form, microseconds) or trace (the real step on "
                             "the meta device; default analytic)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    device_type = args.device
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    result = estimate(config, device_type=device_type, method=args.method)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0

    print(result.config.describe())
    print(f"  estimate    {result.method}, {result.device_type} rules")
    print(f"  parameters  {result.params:,}")
    print(f"  peak memory {format_gib(result.peak_bytes, 4)} ({result.peak_bytes:,} bytes), "
          f"during {result.peak_moment}")
    for category in CATEGORIES:
        nbytes = result.breakdown[category]
        print(f"    {category:<16} {format_gib(nbytes, 4):>14} {nbytes:>18,} bytes")
    return 0
