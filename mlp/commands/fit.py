"""`mlpbench fit`: the largest batch size (or width, or depth) that fits a GPU, predicted."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from mlp.cli_args import add_budget_args, add_model_args, config_from_args, int_list, positive_int
from mlp.estimate import METHODS, estimate
from mlp.fit import VARY_CHOICES, frontier, largest_fitting, max_batch_size
from mlp.gpus import resolve_budget
from mlp.model import count_params
from mlp.units import GIB, format_bytes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="largest batch size that fits a GPU, predicted without allocating",
        description="Predict the largest batch size whose step's peak memory fits a GPU's "
        "memory (less a margin), for one model or a grid of depths and widths; or, with "
        "--vary, the largest width or depth at a given batch size.",
    )
    add_model_args(parser, batch_size=False)
    add_budget_args(parser)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="whose memory rules the estimate follows (default cuda)")
    parser.add_argument("--method", choices=METHODS, default="analytic",
                        help="the estimate: analytic (instant) or trace (default analytic)")
    parser.add_argument("--depths", type=int_list, metavar="LIST",
                        help="a comma-separated list of depths: one row per depth and width")
    parser.add_argument("--widths", type=int_list, metavar="LIST",
                        help="a comma-separated list of widths: one row per depth and width")
    parser.add_argument("--vary", choices=VARY_CHOICES,
                        help="find the largest width or depth at --batch-size instead")
    parser.add_argument("--batch-size", type=positive_int,
                        help="the batch size that --vary holds fixed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Check every input before any estimate is made.
    budget = resolve_budget(gpu=args.gpu, memory=args.memory, margin=args.margin)
    if args.vary is not None and args.batch_size is None:
        raise ValueError(f"--vary {args.vary} needs --batch-size, the batch size held fixed")
    if args.vary is None and args.batch_size is not None:
        raise ValueError("--batch-size goes with --vary width|depth; without --vary, fit finds "
                         "the largest batch size")
    if args.vary == "width" and args.widths is not None:
        raise ValueError("--widths cannot go with --vary width, which finds the width")
    if args.vary == "depth" and args.depths is not None:
        raise ValueError("--depths cannot go with --vary depth, which finds the depth")
    base = config_from_args(args, batch_size=args.batch_size or 1)

    if args.vary is not None:
        table = _vary_table(args, base, budget.budget_bytes)
        return _print_table(args, base, budget, table)
    if args.depths is not None or args.widths is not None:
        table = frontier(args.depths or [base.depth], args.widths or [base.width], base,
                         budget.budget_bytes, args.device, args.method)
        return _print_table(args, base, budget, table)

    result = max_batch_size(base, budget.budget_bytes, args.device, args.method)
    if args.json:
        print(json.dumps({**result.as_dict(), **budget.as_dict()}, indent=2))
        return 0
    print(_describe_model(base) + f" ({result.as_dict()['params']:,} parameters)")
    _print_budget(budget)
    rules = f"{args.device} rules, {args.method} estimate"
    if result.fits:
        print(f"  max batch   {result.max_batch_size:,}: predicted peak "
              f"{format_bytes(result.peak_bytes)} ({rules})")
        if result.next_peak_bytes is not None:
            print(f"              batch {result.max_batch_size + 1:,} would need "
                  f"{format_bytes(result.next_peak_bytes)}")
    else:
        over = result.peak_bytes - budget.budget_bytes
        print(f"  does not fit: batch 1 needs {format_bytes(result.peak_bytes)}, "
              f"{format_bytes(over)} over the budget ({rules})")
    return 0


def _vary_table(args: argparse.Namespace, base, budget_bytes: int) -> pd.DataFrame:
    """One row per depth (vary width) or per width (vary depth): the largest that fits.

    A row whose search found nothing shows 0 for the varied value, params and peak_bytes.
    """
    held = "depth" if args.vary == "width" else "width"
    held_values = (args.depths if held == "depth" else args.widths) or [getattr(base, held)]
    rows = []
    for value in held_values:
        config = base.replace(**{held: value})
        found = largest_fitting(config, budget_bytes, args.vary, args.device, method=args.method)
        row = {held: value, args.vary: found, "batch_size": base.batch_size,
               "params": 0, "peak_bytes": 0, "budget_bytes": budget_bytes}
        if found:
            config = config.replace(**{args.vary: found})
            row["params"] = count_params(config.input_dim, config.width, config.output_dim,
                                         config.depth)
            row["peak_bytes"] = estimate(config, args.device, args.method).peak_bytes
        rows.append(row)
    return pd.DataFrame(rows, columns=["depth", "width", "batch_size", "params", "peak_bytes",
                                       "budget_bytes"])


def _print_table(args, base, budget, table: pd.DataFrame) -> int:
    found_column = args.vary or "max_batch_size"
    if args.json:
        # The fields every row shares; depth, width and batch size are in the rows.
        shared = {k: v for k, v in base.as_dict().items()
                  if k not in ("depth", "width", "batch_size")}
        print(json.dumps({
            **budget.as_dict(),
            "device_type": args.device,
            "method": args.method,
            "config": shared,
            "rows": table.to_dict(orient="records"),
        }, indent=2))
        return 0
    found = "largest " + args.vary if args.vary else "largest batch size"
    print(_describe_model(base, grid=True) + f": {found} per model")
    _print_budget(budget)
    shown = table.drop(columns=["budget_bytes"]).assign(
        **{"peak (GiB)": table["peak_bytes"] / GIB}
    ).drop(columns=["peak_bytes"])
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if (table[found_column] == 0).any():
        if args.vary:
            print(f"{args.vary} 0: not even {args.vary} 1 fits at batch {base.batch_size}.")
        else:
            print("max_batch_size 0: not even batch 1 fits; the peak shown is batch 1's.")
    return 0


def _print_budget(budget) -> None:
    print(f"  budget      {budget.describe()}")
    if budget.free_bytes is not None:
        print(f"              {format_bytes(budget.free_bytes)} free now")
    if budget.margin > 0:
        print(f"              the {budget.margin:.0%} margin is room for the CUDA context, "
              "allocator fragmentation and other processes; --margin 0 uses all of it")


def _describe_model(config, grid: bool = False) -> str:
    text = config.describe(batch=False)
    if grid:  # depth and width vary from row to row
        text = "MLPs " + text.split(", ", 2)[2]
    return text
