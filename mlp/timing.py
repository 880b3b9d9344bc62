"""Wall-clock time of a workload's step, for the command line (pytest-benchmark times bench/).

Each round runs the untimed prepare(), then reads the clock around step(). step() returns
only after the device has finished (it synchronises on CUDA), so a round's time is the
device's time, not the time to queue kernels.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from mlp.phases import Workload


@dataclass(frozen=True)
class Timing:
    """Seconds per step over the timed rounds, warm-up left out."""

    times_s: tuple[float, ...]

    @property
    def rounds(self) -> int:
        return len(self.times_s)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_s) * 1e3

    @property
    def min_ms(self) -> float:
        return min(self.times_s) * 1e3

    @property
    def iqr_ms(self) -> float:
        if len(self.times_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return (q3 - q1) * 1e3


def time_rounds(
    workload: Workload,
    min_rounds: int = 5,
    max_time_s: float = 1.0,
    max_rounds: int = 1000,
    warmup_rounds: int = 1,
) -> Timing:
    """Time at least min_rounds steps, more while under max_time_s in all, after warm-up."""
    if min_rounds < 1:
        raise ValueError(f"min_rounds must be a positive integer, got {min_rounds}")
    for _ in range(warmup_rounds):
        workload.run_round()

    times_s: list[float] = []
    started = time.perf_counter()
    while len(times_s) < min_rounds or (
        len(times_s) < max_rounds and time.perf_counter() - started < max_time_s
    ):
        workload.prepare()
        t0 = time.perf_counter()
        workload.step()  # synchronised: returns when the device is done
        times_s.append(time.perf_counter() - t0)
    return Timing(tuple(times_s))
