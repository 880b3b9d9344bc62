"""`mlpbench measure`: run one configuration and report what it took."""

from __future__ import annotations

import argparse
import json
import sys

from mlp.cli_args import add_device_arg, add_model_args, config_from_args, positive_int
from mlp.device import host_memory_check, is_oom_error, resolve_device
from mlp.measure import measure
from mlp.units import format_bytes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="run one configuration: time, peak memory, FLOPs",
        description="Build the model on the device, run its phase and measure it.",
    )
    add_model_args(parser)
    add_device_arg(parser)
    parser.add_argument("--min-rounds", type=positive_int, default=5,
                        help="timed steps at least (default 5)")
    parser.add_argument("--max-time", type=float, default=1.0,
                        help="seconds of timed steps past min-rounds (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not args.max_time >= 0:
        raise ValueError(f"--max-time must be 0 or more seconds, got {args.max_time}")
    device = resolve_device(args.device)
    if device.type == "cpu":
        predicted_bytes, allowed_bytes = host_memory_check(config)
        if predicted_bytes > allowed_bytes:
            raise ValueError(
                f"this configuration would need about {format_bytes(predicted_bytes)} of host "
                f"memory and {format_bytes(allowed_bytes)} may be used (80% of what is free); "
                "lower --batch-size, --width or --depth"
            )
    try:
        result = measure(config, device, min_rounds=args.min_rounds, max_time_s=args.max_time)
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mlpbench measure: does not fit on {device}: out of memory ({first_line[:200]})",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0

    print(result.config.describe())
    print(f"  device      {result.device} ({result.device_name})")
    print(f"  parameters  {result.params:,}")
    print(f"  FLOPs/step  {result.flops:,}")
    print(f"  peak memory {format_bytes(result.peak_bytes)} ({result.peak_bytes:,} bytes; "
          f"{format_bytes(result.start_bytes)} held before the step)")
    if result.reserved_bytes is not None:
        print(f"  reserved    {format_bytes(result.reserved_bytes)}")
    t = result.timing
    print(f"  step time   {t.median_ms:.3f} ms median over {t.rounds} rounds "
          f"(IQR {t.iqr_ms:.3f} ms)")
    return 0
