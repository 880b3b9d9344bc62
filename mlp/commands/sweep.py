"""`mlpbench sweep`: the main job. Runs the benchmark grid and writes a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlp.cli_args import byte_size, choice_list, int_list, positive_int
from mlp.config import DTYPES, OPTIMIZERS, PHASES
from mlp.device import resolve_device
from mlp.grid import DEFAULT_GRIDS, Grid
from mlp.report import DEFAULT_REPORT_GPUS
from mlp.sweep import SweepPlan, load_plan, prepare_run_dir, run_suite

DEFAULT_MAX_TIME_S = {"cpu": 0.2, "cuda": 1.0}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="the main job: benchmark a grid of MLPs, then plot and report",
        description=(
            "Run the benchmark suite over a grid of depth x width x batch size (x phase, dtype,"
            " optimizer) and write results/<date>-<device>/ with the pytest-benchmark JSON, a "
            "CSV, plots and report.md. The default grid is sized for the device."
        ),
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (default auto: CUDA when present)")
    parser.add_argument("--depths", type=int_list, help="e.g. 2,4,8 (default: by device)")
    parser.add_argument("--widths", type=int_list, help="e.g. 256,1024")
    parser.add_argument("--batch-sizes", type=int_list, help="e.g. 1,64,512")
    parser.add_argument("--phases", type=choice_list(PHASES), help=", ".join(PHASES))
    parser.add_argument("--dtypes", type=choice_list(tuple(DTYPES)), help=", ".join(DTYPES))
    parser.add_argument("--optimizers", type=choice_list(OPTIMIZERS[1:]),
                        help=", ".join(OPTIMIZERS[1:]))
    parser.add_argument("--input-dim", type=positive_int, help="input features (default 784)")
    parser.add_argument("--output-dim", type=positive_int, help="output units (default 10)")
    default_gpus = ",".join(DEFAULT_REPORT_GPUS)
    parser.add_argument("--gpus", default=default_gpus,
                        help=f"GPUs the report compares against (default {default_gpus})")
    parser.add_argument("--max-time", type=float, default=None,
                        help="seconds of timed rounds per configuration (default 0.2 on CPU)")
    parser.add_argument("--host-memory", type=byte_size, default=None,
                        help="host memory a CPU run may use (default: what is free)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default results/<date>-<time>-<device>/)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="where new run folders go (default results/)")
    parser.add_argument("--resume", type=Path, metavar="RUN",
                        help="finish an interrupted sweep's run folder")
    parser.add_argument("--force", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _plan_from_args(args: argparse.Namespace) -> SweepPlan:
    from mlp.gpus import GPUS

    device = resolve_device(args.device).type
    base = DEFAULT_GRIDS[device]
    changes = {
        field: tuple(value)
        for field, value in (
            ("depths", args.depths), ("widths", args.widths), ("batch_sizes", args.batch_sizes),
            ("phases", args.phases), ("dtypes", args.dtypes), ("optimizers", args.optimizers),
        )
        if value is not None
    }
    for field in ("input_dim", "output_dim"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    grid = Grid(**{**base.__dict__, **changes})
    grid.configs()  # every configuration checked before anything is written

    gpus = tuple(name.strip() for name in args.gpus.split(",") if name.strip())
    unknown = [name for name in gpus if name not in GPUS]
    if unknown or not gpus:
        raise ValueError(f"--gpus must be a comma-separated list of {', '.join(GPUS)}; "
                         f"got {args.gpus!r}")
    max_time_s = DEFAULT_MAX_TIME_S[device] if args.max_time is None else args.max_time
    if not 0 < max_time_s <= 3600:
        raise ValueError(f"--max-time must be more than 0 and at most 3600 seconds, "
                         f"got {args.max_time}")
    host_memory = str(args.host_memory) if args.host_memory else None
    return SweepPlan(grid, device, gpus, max_time_s, host_memory)


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.out is not None:
            raise ValueError("--resume and --out cannot be used together: --resume names the "
                             "run folder")
        plan = load_plan(args.resume)
        resolve_device(plan.device)  # the resumed sweep must run where it started
        run_dir = args.resume
    else:
        plan = _plan_from_args(args)
        run_dir = prepare_run_dir(plan, args.out, args.results_dir, args.force)

    total = len(plan.grid.configs())
    print(f"sweep: {total} configurations on {plan.device} -> {run_dir}")
    progress = None if args.no_progress else _progress_bar(total)
    outcome = run_suite(plan, run_dir, resume=args.resume is not None, progress=progress)
    if progress:
        progress.close()

    if outcome.interrupted:
        print(f"interrupted: {outcome.done} of {outcome.total} configurations are saved in "
              f"{run_dir}; finish with: mlpbench sweep --resume {run_dir}")
        return 130

    from mlp.report import build_report

    report_path = build_report([run_dir / "benchmarks.json"], run_dir, list(plan.gpus),
                               force=True)
    print(f"{outcome.done} of {outcome.total} configurations done; report: {report_path}")
    if outcome.failed:
        print(f"{len(outcome.failed)} configuration(s) failed with an error (see "
              f"{run_dir / 'pytest.log'}): {', '.join(outcome.failed)}")
        return 1
    return 0


def _progress_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="config", desc="sweep")

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    update.close = bar.close
    return update
