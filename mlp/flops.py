"""Floating-point operations of one step, counted by torch.utils.flop_counter."""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode

from mlp.phases import Workload


def count_flops(workload: Workload) -> int:
    """FLOPs of one step of the workload (its untimed prepare() is not counted).

    FlopCounterMode counts matrix multiplies (2 * m * n * k each) and ignores elementwise
    work (activations, loss, optimizer arithmetic), which is a few percent of an MLP's.
    """
    workload.prepare()
    counter = FlopCounterMode(display=False)
    with counter:
        workload.step()
    return int(counter.get_total_flops())
