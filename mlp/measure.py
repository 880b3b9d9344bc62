"""Measure one configuration: parameters, FLOPs, peak memory and step time."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mlp.config import RunConfig
from mlp.device import device_name
from mlp.flops import count_flops
from mlp.memory import measure_peak
from mlp.model import count_params
from mlp.phases import build_workload
from mlp.timing import Timing, time_rounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """What one configuration did on one device."""

    config: RunConfig
    device: str  # "cpu" or "cuda:0"
    device_name: str  # the GPU or CPU model
    params: int  # trainable parameters
    flops: int  # per step, from torch.utils.flop_counter
    peak_bytes: int  # most live tensor bytes during one step
    start_bytes: int  # live tensor bytes as the step began
    reserved_bytes: int | None  # CUDA caching allocator's peak reservation; None on CPU
    timing: Timing

    def as_dict(self) -> dict:
        return {
            **self.config.as_dict(),
            "device": self.device,
            "device_name": self.device_name,
            "params": self.params,
            "flops": self.flops,
            "peak_bytes": self.peak_bytes,
            "start_bytes": self.start_bytes,
            "reserved_bytes": self.reserved_bytes,
            "rounds": self.timing.rounds,
            "median_ms": self.timing.median_ms,
            "min_ms": self.timing.min_ms,
            "iqr_ms": self.timing.iqr_ms,
        }


def measure(
    config: RunConfig,
    device: torch.device,
    min_rounds: int = 5,
    max_time_s: float = 1.0,
) -> Measurement:
    """Build the workload, warm it up once, then measure memory, FLOPs and time, in that order.

    Memory and FLOPs each take one round of their own, outside the timed rounds, since
    their trackers slow the step down.
    """
    workload = build_workload(config, device)
    log.info("measuring %s on %s", config, device)

    # warm-up: allocator caches, lazy optimizer state, kernel selection
    workload.run_round()

    memory = measure_peak(workload)
    flops = count_flops(workload)
    timing = time_rounds(workload, min_rounds=min_rounds, max_time_s=max_time_s, warmup_rounds=0)

    return Measurement(
        config=config,
        device=str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
        device_name=device_name(device),
        params=count_params(config.input_dim, config.width, config.output_dim, config.depth),
        flops=flops,
        peak_bytes=memory.peak_bytes,
        start_bytes=memory.start_bytes,
        reserved_bytes=memory.reserved_bytes,
        timing=timing,
    )
