"""Argument types and shared options of the mlpbench command line.

Every type here raises argparse.ArgumentTypeError with what is allowed, so that argparse
names the argument and the command exits with status 2 on one line.
"""

from __future__ import annotations

import argparse

from mlp.config import (
    ACTIVATIONS,
    DTYPES,
    OPTIMIZERS,
    OUTPUT_ACTIVATIONS,
    PHASES,
    RunConfig,
    check_positive_int,
)
from mlp.device import DEVICE_CHOICES
from mlp.units import parse_bytes


def positive_int(text: str) -> int:
    try:
        return check_positive_int("value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None


def int_list(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8]; every item a positive integer."""
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(item == "" for item in items):
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of positive integers, got {text!r}"
        )
    return [positive_int(item) for item in items]


def choice_list(choices):
    """A type for 'a,b' where each item is one of choices."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in str(text).split(",")]
        bad = [item for item in items if item not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of {', '.join(choices)}; got {text!r}"
            )
        return items

    return parse


def byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("memory must be", "must be")) from None


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1); got {text!r}")
    return value


def memory_size_text(text: str) -> str:
    """A size as typed, once checked: a budget's source then reads '--memory 24GiB'."""
    byte_size(text)
    return text


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    """Where the memory budget comes from: --gpu NAME|auto or --memory SIZE, and --margin."""
    from mlp.gpus import DEFAULT_MARGIN, GPUS

    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--gpu", metavar="NAME|auto",
                       help=f"a GPU by name ({', '.join(GPUS)}; see `mlpbench gpus`), "
                       "or auto for this machine's NVIDIA GPU")
    where.add_argument("--memory", type=memory_size_text, metavar="SIZE",
                       help="a memory size instead: 24GiB, 80GB or a byte count")
    parser.add_argument("--margin", type=fraction, default=None,
                        help="fraction of the memory held back for the CUDA context, "
                        "fragmentation and other processes "
                        f"(default {DEFAULT_MARGIN}; 0 uses all of it)")


def add_model_args(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """The options that describe one configuration, with RunConfig's defaults."""
    d = RunConfig()
    parser.add_argument("--depth", type=positive_int, default=d.depth,
                        help=f"linear layers in all, input and output included (default {d.depth})")
    parser.add_argument("--width", type=positive_int, default=d.width,
                        help=f"units per hidden layer (default {d.width})")
    parser.add_argument("--input-dim", type=positive_int, default=d.input_dim,
                        help=f"input features (default {d.input_dim})")
    parser.add_argument("--output-dim", type=positive_int, default=d.output_dim,
                        help=f"output units (default {d.output_dim})")
    if batch_size:
        parser.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                            help=f"samples per step (default {d.batch_size})")
    parser.add_argument("--phase", choices=PHASES, default=d.phase,
                        help=f"what one step runs (default {d.phase})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS[1:], default=d.optimizer,
                        help=f"optimizer of a train-step (default {d.optimizer})")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=d.dtype,
                        help=f"parameter and activation dtype (default {d.dtype})")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=d.activation,
                        help=f"between layers (default {d.activation})")
    parser.add_argument("--output-activation", choices=OUTPUT_ACTIVATIONS,
                        default=d.output_activation,
                        help=f"after the last layer (default {d.output_activation})")


def add_device_arg(parser: argparse.ArgumentParser, choices=DEVICE_CHOICES, default="auto"):
    parser.add_argument("--device", choices=choices, default=default,
                        help=f"where to run: {', '.join(choices)} (default {default})")


def config_from_args(args: argparse.Namespace, **overrides) -> RunConfig:
    """The RunConfig that parsed options describe; overrides win over the options."""
    fields = {
        "depth": args.depth,
        "width": args.width,
        "input_dim": args.input_dim,
        "output_dim": args.output_dim,
        "batch_size": getattr(args, "batch_size", RunConfig().batch_size),
        "phase": args.phase,
        "optimizer": args.optimizer if args.phase == "train-step" else "none",
        "dtype": args.dtype,
        "activation": args.activation,
        "output_activation": args.output_activation,
    }
    fields.update(overrides)
    return RunConfig(**fields)
