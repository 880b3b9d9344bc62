"""`mlpbench sweep`: the run folder, protection of earlier results, interruption and resume."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlp.sweep import new_run_dir

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--device", "cpu", "--depths", "2", "--widths", "16,32", "--batch-sizes", "1,8",
        "--phases", "forward,train-step", "--max-time", "0.01", "--no-progress",
        "--gpus", "t4,a100-80gb"]
PLOTS = ("memory_scaling.png", "fit_frontier.png", "latency_throughput.png",
         "memory_breakdown.png", "estimate_vs_measured.png")


def _sweep(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "mlp.cli", "sweep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, **kwargs)


def test_sweep_writes_the_run_folder_with_results_plots_and_report(tmp_path):
    run_dir = tmp_path / "run"

    proc = _sweep(*TINY, "--out", str(run_dir))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((run_dir / "benchmarks.json").read_text())
    assert len(results["benchmarks"]) == 8
    for name in ("results.csv", "report.md", *PLOTS):
        assert (run_dir / name).stat().st_size > 0, name


def test_an_existing_run_folder_is_kept_without_force(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "benchmarks.json").write_text("{\"earlier\": true}")

    proc = _sweep(*TINY, "--out", str(run_dir))

    assert proc.returncode == 2
    assert "--force" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (run_dir / "benchmarks.json").read_text() == "{\"earlier\": true}"


def test_two_sweeps_started_together_get_separate_folders(tmp_path):
    now = dt.datetime(2026, 12, 3, 12, 0, 0)

    first = new_run_dir(tmp_path, "cpu", now)
    second = new_run_dir(tmp_path, "cpu", now)

    assert first != second and first.is_dir() and second.is_dir()
    assert first.name == "2026-12-03-120000-cpu"


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    proc = _sweep(*TINY, "--out", str(blocker / "run"))

    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--out: cannot write to" in proc.stderr and "Traceback" not in proc.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("bad, named", [
    (["--gpus", "t4,rtx9999"], "--gpus"),
    (["--depths", "2,0"], "--depths"),
    (["--phases", "fwd"], "--phases"),
    (["--max-time", "0"], "--max-time"),
    (["--resume", "no-such-run"], "--resume"),
])
def test_bad_input_writes_nothing_and_exits_2(tmp_path, bad, named):
    results_dir = tmp_path / "results"

    proc = _sweep(*TINY, "--results-dir", str(results_dir), *bad)

    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and named in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not results_dir.exists()


def _sweep_until_first_record(run_dir):
    """Start an 8-configuration sweep in the background; return once one record is saved."""
    args = ["--device", "cpu", "--depths", "2,3", "--widths", "16,32", "--batch-sizes", "1,8",
            "--phases", "train-step", "--max-time", "0.3", "--no-progress", "--gpus", "t4"]
    child = subprocess.Popen([sys.executable, "-m", "mlp.cli", "sweep", *args,
                              "--out", str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((run_dir / "records").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    return child


def test_sigterm_keeps_finished_results_and_resume_finishes_the_rest(tmp_path):
    run_dir = tmp_path / "run"
    records = run_dir / "records"
    child = _sweep_until_first_record(run_dir)

    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=120)
    kept = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}

    assert child.returncode == 130, out
    assert 1 <= len(kept) < 8 and "--resume" in out
    assert not list(records.glob(".*"))  # no half-written record left behind

    proc = _sweep("--resume", str(run_dir), "--no-progress")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {n: os.stat(records / n).st_mtime_ns for n in kept} == kept  # not run again
    assert len(json.loads((run_dir / "benchmarks.json").read_text())["benchmarks"]) == 8


def test_ctrl_c_keeps_finished_results(tmp_path):
    run_dir = tmp_path / "run"
    records = run_dir / "records"
    child = _sweep_until_first_record(run_dir)

    child.send_signal(signal.SIGINT)  # to the sweep alone, not its child pytest
    out, _ = child.communicate(timeout=60)

    assert child.returncode == 130, out
    assert 1 <= len(list(records.glob("*.json"))) < 8
    assert json.loads((run_dir / "benchmarks.json").read_text())["benchmarks"]
