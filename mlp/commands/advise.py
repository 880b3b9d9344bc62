"""`mlpbench advise`: the batch size to pick for one model on one GPU, and what to change."""

from __future__ import annotations

import argparse
import json

from mlp.cli_args import add_budget_args, add_model_args, config_from_args, positive_int
from mlp.units import format_gib


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "advise",
        help="largest batch that fits, the batch to pick, and what to change if none fits",
        description="For one model and a GPU (by name, auto, or a memory size): the largest "
                    "batch that fits with the margin, where throughput stops growing, and "
                    "the changes that would make it fit.",
    )
    add_model_args(parser, batch_size=False)
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="the batch you want; changes are suggested when it does not fit")
    add_budget_args(parser)
    parser.add_argument("--results", nargs="+", default=None, metavar="RESULTS.json",
                        help="measured results (pytest-benchmark JSON) to place the knee from")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mlp.advise import advise
    from mlp.gpus import resolve_budget
    from mlp.results import load_results

    config = config_from_args(args, batch_size=args.batch_size or 1)
    budget = resolve_budget(gpu=args.gpu, memory=args.memory, margin=args.margin)
    results = load_results(args.results) if args.results else None
    advice = advise(config, budget, results, target_batch_size=args.batch_size)
    if args.json:
        print(json.dumps(advice.as_dict(), indent=2))
        return 0

    c = advice.config
    optimizer = f" with {c.optimizer}" if c.phase == "train-step" else ""
    print(f"MLP depth {c.depth}, width {c.width}, {c.input_dim} -> {c.output_dim}, "
          f"{c.dtype}, {c.phase}{optimizer}")
    print(f"  budget          {advice.budget.describe()}")
    if advice.max_batch_size > 0:
        print(f"  largest batch   {advice.max_batch_size:,} "
              f"(estimated peak {format_gib(advice.fit.peak_bytes)})")
        print(f"  knee            throughput stops growing at batch {advice.knee_batch_size:,} "
              f"({advice.knee_source})")
        print(f"  recommended     batch {advice.recommended_batch_size:,}")
    else:
        print(f"  largest batch   none: batch 1 needs {format_gib(advice.fit.peak_bytes)}")
    print(f"  why             {advice.reason}")
    if not advice.suggestions:
        print("  changes         none needed")
    for suggestion in advice.suggestions:
        print(f"  change          {suggestion.change}: {suggestion.detail}")
    return 0
