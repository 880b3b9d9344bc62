"""The main job: run the benchmark suite over a grid into a run folder, then report on it.

The suite runs in a child pytest process, so that a crash in one configuration cannot take
the sweep with it. Each finished configuration leaves a record in RUN/records/ (written
atomically), which is what makes an interrupted sweep resumable: `--resume RUN` runs only
the configurations without a record.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlp.grid import Grid, config_id
from mlp.records import RecordStore, write_json_atomic

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
RUN_FILE = "run.json"  # the sweep's own settings, so that --resume needs nothing else
RESULTS_FILE = "benchmarks.json"  # pytest-benchmark JSON of every finished benchmark


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs and where it writes."""

    grid: Grid
    device: str  # "cpu" or "cuda" (resolved, never "auto")
    gpus: tuple[str, ...]  # catalogue names the report compares against
    max_time_s: float  # pytest-benchmark's --benchmark-max-time per configuration
    host_memory: str | None = None  # --mlp-host-memory, for CPU runs

    def as_dict(self) -> dict:
        return {
            "grid": {k: list(v) if isinstance(v, tuple) else v
                     for k, v in self.grid.__dict__.items()},
            "device": self.device,
            "gpus": list(self.gpus),
            "max_time_s": self.max_time_s,
            "host_memory": self.host_memory,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SweepPlan:
        grid = {k: tuple(v) if isinstance(v, list) else v for k, v in data["grid"].items()}
        return cls(Grid(**grid), data["device"], tuple(data["gpus"]), data["max_time_s"],
                   data.get("host_memory"))


@dataclass(frozen=True)
class SweepOutcome:
    """How a sweep ended."""

    run_dir: Path
    total: int  # configurations in the grid
    done: int  # with a record: measured, or recorded as not fitting or skipped
    interrupted: bool
    failed: list[str]  # ids of configurations that raised an error other than out-of-memory


def new_run_dir(results_dir: Path, device: str, now: dt.datetime | None = None) -> Path:
    """Create results/<date>-<time>-<device>[-N]/ and return it.

    mkdir is atomic: two sweeps started in the same second get different folders.
    """
    now = now or dt.datetime.now()
    stem = f"{now:%Y-%m-%d-%H%M%S}-{device}"
    results_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_dir = results_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise ValueError(f"--out: could not make a new run folder in {results_dir}")


def prepare_run_dir(plan: SweepPlan, out: Path | None, results_dir: Path, force: bool) -> Path:
    """A new run folder for plan, with its run.json; an existing one only with force."""
    option = "--results-dir" if out is None else "--out"
    try:
        if out is None:
            run_dir = new_run_dir(results_dir, plan.device)
        else:
            run_dir = Path(out)
            if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
                if not force:
                    raise ValueError(
                        f"--out: {run_dir} exists and is not an empty folder; it is kept (use "
                        f"--resume {run_dir} to finish a sweep there, or --force to replace it)"
                    )
                shutil.rmtree(run_dir) if run_dir.is_dir() else run_dir.unlink()
            run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / RUN_FILE, plan.as_dict(), overwrite=True)
    except OSError as exc:
        target = exc.filename or (out if out is not None else results_dir)
        raise ValueError(f"{option}: cannot write to {target}: {exc.strerror or exc}") from None
    return run_dir


def load_plan(run_dir: Path) -> SweepPlan:
    """The plan of an earlier sweep, for --resume."""
    path = Path(run_dir) / RUN_FILE
    try:
        with open(path, encoding="utf-8") as f:
            return SweepPlan.from_dict(json.load(f))
    except FileNotFoundError:
        raise ValueError(
            f"--resume: {run_dir} is not a sweep's run folder (no {RUN_FILE})"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"--resume: {path} is damaged ({exc})") from None


def _pytest_command(plan: SweepPlan, run_dir: Path, resume: bool) -> list[str]:
    grid = plan.grid
    raw_dir = run_dir / "raw"
    raw_dir.mkdir(exist_ok=True)
    raw_json = raw_dir / f"pytest-benchmark-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.json"
    options = {
        "--mlp-device": plan.device,
        "--mlp-depths": ",".join(map(str, grid.depths)),
        "--mlp-widths": ",".join(map(str, grid.widths)),
        "--mlp-batch-sizes": ",".join(map(str, grid.batch_sizes)),
        "--mlp-phases": ",".join(grid.phases),
        "--mlp-dtypes": ",".join(grid.dtypes),
        "--mlp-optimizers": ",".join(grid.optimizers),
        "--mlp-input-dim": str(grid.input_dim),
        "--mlp-output-dim": str(grid.output_dim),
        "--mlp-records": str(run_dir / "records"),
        "--benchmark-json": str(raw_json),
        "--benchmark-max-time": str(plan.max_time_s),
    }
    if plan.host_memory:
        options["--mlp-host-memory"] = plan.host_memory
    # OPTION=VALUE, one token each: pytest reads the command line once before its plugins
    # have added their options, and takes a lone VALUE that names an existing folder (the
    # records) for a test path, which would move the root away from pyproject.toml.
    command = [
        sys.executable, "-m", "pytest", str(BENCH_DIR), "--benchmark-only", "-q",
        "-p", "no:cacheprovider", f"--rootdir={BENCH_DIR.parent}",
        f"--config-file={BENCH_DIR.parent / 'pyproject.toml'}",
        *(f"{name}={value}" for name, value in options.items()),
    ]
    if resume:
        command.append("--mlp-resume")
    return command


def run_suite(plan: SweepPlan, run_dir: Path, resume: bool = False, progress=None) -> SweepOutcome:
    """Run the grid's missing configurations in a child pytest, then gather the results.

    progress, when given, is called with (done, total) as records appear. SIGTERM and
    Ctrl-C stop the child; what finished stays on disk.
    """
    if not BENCH_DIR.is_dir():
        raise ValueError(f"sweep needs the bench/ folder of a source checkout (looked in "
                         f"{BENCH_DIR}); install mlpbench with pip install -e .")
    store = RecordStore(run_dir / "records")
    ids = [config_id(c) for c in plan.grid.configs()]
    total = len(ids)
    log_path = run_dir / "pytest.log"

    interrupted = False
    with open(log_path, "a", encoding="utf-8") as log_file:
        # A session of its own: Ctrl-C reaches this process only, which passes on exactly one
        # stop (SIGTERM), so pytest is never interrupted twice while it saves.
        child = subprocess.Popen(_pytest_command(plan, run_dir, resume), stdout=log_file,
                                 stderr=subprocess.STDOUT, cwd=BENCH_DIR.parent,
                                 start_new_session=True)
        # The child stops cleanly on SIGTERM (mlp.benchsuite turns it into KeyboardInterrupt).
        stopped: list[int] = []

        def stop(signum, frame):
            stopped.append(signum)
            child.terminate()

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            while child.poll() is None:
                if progress:
                    progress(len(store.done_ids() & set(ids)), total)
                time.sleep(0.5)
        except KeyboardInterrupt:
            interrupted = True
            child.terminate()
            child.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
    # pytest exits 2 when interrupted, which is how a SIGTERM ends it too
    interrupted = interrupted or bool(stopped) or child.returncode == 2 or child.returncode < 0

    records = store.load_all()
    done = len(store.done_ids() & set(ids))
    if progress:
        progress(done, total)
    failed = [config_id_of(r) for r in records
              if r.get("mlpbench_not_run", {}).get("status") == "error"]
    write_results(run_dir, records)
    return SweepOutcome(run_dir, total, done, interrupted, failed)


def config_id_of(record: dict) -> str:
    from mlp.config import RunConfig

    fields = record.get("mlpbench_not_run") or record.get("extra_info")
    names = RunConfig.__dataclass_fields__
    return config_id(RunConfig(**{k: v for k, v in fields.items() if k in names}))


def write_results(run_dir: Path, records: list[dict]) -> Path:
    """RUN/benchmarks.json: pytest-benchmark JSON of every record, whichever run made it."""
    raw_files = sorted((run_dir / "raw").glob("*.json"), key=lambda p: p.stat().st_mtime)
    head = {}
    for raw in reversed(raw_files):  # the newest complete pytest-benchmark file
        try:
            with open(raw, encoding="utf-8") as f:
                head = json.load(f)
            break
        except (OSError, json.JSONDecodeError):
            continue
    results = {
        "machine_info": head.get("machine_info", {}),
        "commit_info": head.get("commit_info", {}),
        "benchmarks": [r for r in records if "stats" in r],
        "datetime": head.get("datetime", dt.datetime.now(dt.timezone.utc).isoformat()),
        "version": head.get("version"),
        "mlpbench": {
            "version": 1,
            "not_run": [r["mlpbench_not_run"] for r in records if "mlpbench_not_run" in r],
        },
    }
    path = run_dir / RESULTS_FILE
    write_json_atomic(path, results, overwrite=True)
    return path
