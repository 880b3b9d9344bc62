"""Regenerate sample_results.json: a real, small CPU run of the bench/ suite.

    python tests/data/make_sample.py

The grid is small enough for about a minute on two cores, and holds what the report must
handle: two phases, several depths, widths and batch sizes, timings flagged untrustworthy
(short steps on a shared machine), and configurations skipped for host memory (the
--mlp-host-memory cap below is set so that the largest train-steps are predicted not to fit).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "sample_results.json"

ARGS = [
    "--benchmark-only",
    "--mlp-device", "cpu",
    "--mlp-depths", "2,3",
    "--mlp-widths", "16,128,1024",
    "--mlp-batch-sizes", "1,16,256,2048",
    "--mlp-phases", "forward,train-step",
    # 64 MiB, of which the suite may use 80% (51 MiB): depth 3, width 1024 train-step at batch
    # 2048 (an estimated 60 MiB) is skipped, the rest runs (the next largest needs 40 MiB).
    "--mlp-host-memory", "64MiB",
    "--benchmark-max-time", "0.1",
    "--benchmark-min-rounds", "5",
]


def main() -> int:
    command = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", *ARGS,
               f"--benchmark-json={OUT}"]
    print(" ".join(command))
    # One intra-op thread: on a shared two-core machine a second thread is often descheduled,
    # and every parallel op then waits a whole scheduler slice for it (steps of 8 or 16 ms
    # that take 0.1 ms alone). The sample is for the report's shape, not for peak speed.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
