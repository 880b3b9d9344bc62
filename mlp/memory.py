"""Peak memory of one step, measured: CUDA's allocator counters, or live tensor bytes on CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlp.cpu_memory import LiveBytesTracker
from mlp.phases import Workload, synchronize


@dataclass(frozen=True)
class PeakMemory:
    """Memory of one step, bytes."""

    peak_bytes: int  # most bytes of live tensors at any moment of the step
    start_bytes: int  # live when the step began: parameters, batch, optimizer state...
    reserved_bytes: int | None  # CUDA caching allocator's peak reservation; None on CPU


def measure_peak(workload: Workload) -> PeakMemory:
    """Run one round of the workload and return the memory its step reached.

    The round's untimed prepare() runs first (the backward phase's forward), then the peak
    counter is reset, so the figure covers the step alone but counts everything alive in it.
    """
    device = workload.device
    if device.type == "cuda":
        return _measure_cuda(workload)
    if device.type == "cpu":
        return _measure_cpu(workload)
    raise ValueError(f"device must be cpu or cuda for a measurement, got {device.type}")


def _measure_cuda(workload: Workload) -> PeakMemory:
    device = workload.device
    workload.prepare()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start_bytes = torch.cuda.memory_allocated(device)

    workload.step()  # synchronises before returning
    synchronize(device)

    return PeakMemory(
        peak_bytes=torch.cuda.max_memory_allocated(device),
        start_bytes=start_bytes,
        reserved_bytes=torch.cuda.max_memory_reserved(device),
    )


def _measure_cpu(workload: Workload) -> PeakMemory:
    tracker = LiveBytesTracker("cpu")
    with tracker:
        tracker.track(workload.state_tensors())
        workload.prepare()
        tracker.reset_peak()
        start_bytes = tracker.current_bytes
        workload.step()
    return PeakMemory(peak_bytes=tracker.peak_bytes, start_bytes=start_bytes, reserved_bytes=None)
