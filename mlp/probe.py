"""The real search: the largest batch size whose step runs on the device within a budget.

Each trial builds the workload at one batch size, runs the warm-up round and measures the
step's peak (as mlp.measure does). A trial fits when the step ran without running out of
memory and, where a budget is given, its measured peak stayed within it.

The search starts from the estimate (mlp.fit) and tries start and start + 1: when the
estimate is right those two runs settle it. When it is wrong, the measured peaks steer the
next trial: the peak is affine in the batch size, so the line through two measurements says
where the budget is crossed (on the CPU, exactly: a start 10x too high or 3x too low costs 4
or 5 runs). Until a trial has failed, a guess goes at most twice as far as what fitted, so a
failing trial allocates at most twice the budget. Where running out of memory bounds the
bracket, that trial measured nothing and the line cannot say where running out begins, so
the search bisects; with nothing to interpolate it steps away from the last trial by a
growing fraction (1/16, 1/8, ... of the batch) until the answer is bracketed. Lightning's
finder doubles from a guess and then bisects every time: about 2 * log2(B) runs.

Known shortcoming: the search assumes a fit at batch b means a fit at every smaller batch.
On CUDA a cuBLAS kernel choice that needs more workspace at one shape can break this by a few
MiB; the trials listed in the result show what was run.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mlp.config import MAX_BATCH_SIZE, RunConfig, check_positive_int
from mlp.device import is_oom_error
from mlp.fit import Estimator, max_batch_size
from mlp.gpus import DEFAULT_MARGIN
from mlp.memory import measure_peak
from mlp.phases import Workload, build_workload

log = logging.getLogger(__name__)

# The first fraction of the batch size that a step away from a wrong estimate moves by;
# it doubles each time, so a start off by 10x is bracketed in about 8 runs.
_FIRST_STEP_FRACTION = 1 / 16


@dataclass
class ProbeResult:
    """What the search found, and every trial it ran to find it."""

    max_batch_size: int  # largest batch size that fitted; 0 when batch 1 did not
    runs: int  # trials run (each builds the workload, warms up and measures one step)
    trials: list[dict]  # in the order run: batch_size, fits, peak_bytes (None on OOM), ...
    start_batch_size: int  # where the search began: the estimate's answer unless given
    budget_bytes: int | None = None  # the measured peak's limit; None: running out decides
    device: str = "cpu"  # where the trials ran
    target_bytes: int | None = field(default=None, repr=False)  # what interpolation aims at

    @property
    def peak_bytes(self) -> int | None:
        """Measured peak at max_batch_size; None when nothing fitted."""
        for trial in self.trials:
            if trial["batch_size"] == self.max_batch_size and trial["fits"]:
                return trial["peak_bytes"]
        return None

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "budget_bytes": self.budget_bytes,
            "max_batch_size": self.max_batch_size,
            "peak_bytes": self.peak_bytes,
            "runs": self.runs,
            "start_batch_size": self.start_batch_size,
            "trials": self.trials,
        }


def probe_max_batch(
    config: RunConfig,
    device: torch.device,
    budget_bytes: int | None = None,
    start: int | None = None,
    limit: int = 2**20,
    *,
    estimator: Estimator | None = None,
    build: Callable[[RunConfig, torch.device], Workload] = build_workload,
) -> ProbeResult:
    """Find the largest batch size (up to limit) that runs on device, by running it.

    On the CPU, which has no useful out-of-memory point, budget_bytes is required and a
    trial fits when its measured peak is at most budget_bytes. On CUDA a trial fits when it
    does not run out of memory (and, with budget_bytes, when its peak is within it).
    start defaults to mlp.fit's answer from the estimate; estimator and build replace
    mlp.estimate.estimate and mlp.phases.build_workload (tests use them).
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda for a probe, got {device.type}")
    if budget_bytes is not None:
        check_positive_int("budget_bytes", budget_bytes)
    elif device.type == "cpu":
        raise ValueError(
            "budget_bytes (--memory) is required on the cpu, where a step does not run out "
            "of memory at any size worth searching for"
        )
    limit = check_positive_int("limit", limit, MAX_BATCH_SIZE)

    # What interpolation aims at: the budget for measured peaks or, where running out
    # decides, the bytes the caching allocator may still reserve.
    if budget_bytes is not None:
        target_bytes, metric = budget_bytes, "peak_bytes"
    else:
        target_bytes, metric = _cuda_capacity_bytes(device), "reserved_bytes"

    if start is None:
        # Where running out decides, start inside fit's default margin: fragmentation puts
        # the point of running out below the capacity, and a start that fits gives the
        # interpolation two measurements to go by.
        margin = DEFAULT_MARGIN if budget_bytes is None else 0.0
        estimated = max_batch_size(
            config, int(target_bytes * (1 - margin)), device.type, limit=limit,
            estimator=estimator,
        )
        start = max(estimated.max_batch_size, 1)
        log.info("estimate: batch %d fits %d bytes on %s", start, target_bytes, device.type)
    start = min(check_positive_int("start", start), limit)

    search = _Search(limit, target_bytes, metric)
    batch_size = start
    while True:
        trial = _run_trial(config.replace(batch_size=batch_size), device, budget_bytes, build)
        log.info("trial %d: %s", len(search.trials) + 1, trial)
        batch_size = search.record(trial)
        if batch_size is None:
            break

    return ProbeResult(
        max_batch_size=search.lo,
        runs=len(search.trials),
        trials=search.trials,
        start_batch_size=start,
        budget_bytes=budget_bytes,
        device=str(device),
        target_bytes=target_bytes,
    )


class _Search:
    """The bracket [lo, hi] over batch sizes and the choice of the next trial.

    lo fitted (0: nothing has yet) and hi did not (limit + 1: nothing has failed yet).
    """

    def __init__(self, limit: int, target_bytes: int, metric: str):
        self.limit = limit
        self.target_bytes = target_bytes
        self.metric = metric  # the trial figure that is compared with target_bytes
        self.lo, self.hi = 0, limit + 1
        self.trials: list[dict] = []
        self._stalls = 0  # interpolated trials in a row that did not halve the bracket
        self._steps = 0  # steps by a growing fraction taken so far
        self._interpolated = False  # whether the trial just recorded was interpolated

    def record(self, trial: dict) -> int | None:
        """Take in a trial's outcome; return the next batch size to try, or None when done."""
        before = (self.lo, self.hi)
        self.trials.append(trial)
        if trial["fits"]:
            self.lo = trial["batch_size"]
        else:
            self.hi = trial["batch_size"]
        if self.hi - self.lo <= 1:
            return None

        # First, the neighbour of the start: a right estimate is confirmed in two runs.
        if len(self.trials) == 1:
            return self.lo + 1 if trial["fits"] else self.hi - 1

        if self._interpolated:
            self._stalls = 0 if self._progressed(*before) else self._stalls + 1
        guess = self._interpolate() if self._stalls < 2 and self._upper_measured() else None
        if guess is None:
            self._interpolated, self._stalls = False, 0
            return self._step()
        self._interpolated = True
        return self._clamp(guess)

    def _progressed(self, lo: int, hi: int) -> bool:
        """Whether the last trial shrank the bracket [lo, hi] enough to keep interpolating.

        Bracketed, it must have halved; not yet bracketed, it must have bracketed the answer
        or moved the open end by 1/16 or more, as the first step of _step() would.
        """
        if lo > 0 and hi <= self.limit:
            return 2 * (self.hi - self.lo) <= hi - lo
        if lo > 0:
            step = max(1, math.ceil(lo * _FIRST_STEP_FRACTION))
            return self.hi <= self.limit or self.lo - lo >= step
        step = max(1, math.ceil(hi * _FIRST_STEP_FRACTION))
        return self.lo > 0 or hi - self.hi >= step

    def _upper_measured(self) -> bool:
        """False when the bracket's upper end ran out of memory, so measured nothing.

        The line through the trials that fitted then says nothing of where running out
        begins (fragmentation and the CUDA context sit between the two): bisect instead.
        """
        if self.hi > self.limit:
            return True
        upper = next(t for t in self.trials if t["batch_size"] == self.hi)
        return upper.get(self.metric) is not None

    def _interpolate(self) -> int | None:
        """Where the line through the two measurements nearest the boundary meets the target."""
        measured = [t for t in self.trials if t.get(self.metric) is not None]
        below = sorted((t["batch_size"], t[self.metric]) for t in measured if t["fits"])
        above = sorted((t["batch_size"], t[self.metric]) for t in measured if not t["fits"])
        if below and above:
            (b0, p0), (b1, p1) = below[-1], above[0]
        elif len(below) >= 2:
            (b0, p0), (b1, p1) = below[-2], below[-1]
            if p1 <= p0:  # a flat step of CUDA's reserved memory: take the widest pair
                (b0, p0) = below[0]
        elif len(above) >= 2:
            (b0, p0), (b1, p1) = above[0], above[1]
        else:
            return None
        if p1 <= p0:
            return None
        return b0 + (self.target_bytes - p0) * (b1 - b0) // (p1 - p0)

    def _clamp(self, guess: int) -> int:
        high = self.hi - 1
        if self.hi > self.limit:
            # Nothing has failed yet: go at most twice as far, so that a trial that does not
            # fit allocates no more than twice what fitted.
            high = min(high, 2 * self.lo)
        return min(max(guess, self.lo + 1), high)

    def _step(self) -> int:
        """Away from the last trial by a growing fraction until bracketed, then bisect."""
        if self.hi <= self.limit and self.lo > 0:
            return (self.lo + self.hi) // 2
        fraction = _FIRST_STEP_FRACTION * 2**self._steps
        self._steps += 1
        if self.lo > 0:
            return min(self.limit, self.lo + max(1, math.ceil(self.lo * fraction)))
        # Downwards the step stops growing at half: halving reaches batch 1 soon enough.
        return max(1, self.hi - max(1, math.ceil(self.hi * min(fraction, 0.5))))


def _run_trial(
    config: RunConfig,
    device: torch.device,
    budget_bytes: int | None,
    build: Callable[[RunConfig, torch.device], Workload],
) -> dict:
    """Build, warm up and measure one batch size; an out-of-memory error is a result."""
    peak_bytes = reserved_bytes = None
    oom = False
    try:
        peak_bytes, reserved_bytes = _measure_step(config, device, build)
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        oom = True
        log.info("batch %d ran out of memory: %s", config.batch_size, str(exc).split("\n")[0])

    # Leaving the except block dropped the error and its traceback, whose frames held the
    # half-built workload in reference cycles; collect them now, so that the next trial
    # starts from the same memory. Without an error, reference counting has freed the
    # workload already; a collection (0.1 s with torch loaded) then pays only on CUDA, where
    # empty_cache also hands the cached blocks back, so that every trial starts alike.
    if oom or device.type == "cuda":
        _release_memory(device)
    fits = not oom and (budget_bytes is None or peak_bytes <= budget_bytes)
    return {
        "batch_size": config.batch_size,
        "fits": fits,
        "peak_bytes": peak_bytes,
        "reserved_bytes": reserved_bytes,
        "oom": oom,
    }


def _measure_step(config: RunConfig, device: torch.device, build) -> tuple[int, int | None]:
    workload = build(config, device)

    # warm-up: lazy optimizer state, allocator caches, kernel selection
    workload.run_round()

    memory = measure_peak(workload)
    return memory.peak_bytes, memory.reserved_bytes


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _cuda_capacity_bytes(device: torch.device) -> int:
    """Bytes the caching allocator may hold in all: free on the device plus what it holds.

    torch.cuda.set_per_process_memory_fraction caps this further, and is honoured.
    """
    _release_memory(device)
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    capacity_bytes = free_bytes + torch.cuda.memory_reserved(device)
    # Older torch builds have the setter only; without the getter, assume no cap.
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = get_fraction(device) if get_fraction is not None else 1.0
    return min(capacity_bytes, int(fraction * total_bytes))
