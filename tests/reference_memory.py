"""An independent check of the CPU memory probe: the PyTorch profiler's allocator events.

The probe (mlp.cpu_memory) counts tensor storages it sees leave operators; the profiler
instead records every call into the CPU allocator, kernel-internal buffers included. The two
share no code, so agreement between them is evidence that the probe counts what it should.
"""

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function

from mlp.config import RunConfig
from mlp.phases import build_workload

_STEP = "mlpbench-reference-step"


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def profiler_peak_bytes(config: RunConfig) -> int:
    """Peak CPU bytes allocated during one step, everything since the workload was built
    counted, as measure_peak would report it (one warm-up round first)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        workload = build_workload(config, "cpu")
        workload.run_round()
        workload.prepare()
        with record_function(_STEP):
            workload.step()

    events = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
    step = next(e for e in events if e.name == _STEP)
    allocations = sorted(
        (e for e in events
         if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu"),
        key=lambda e: e.start_time_ns,
    )
    live_bytes = peak_bytes = 0
    for event in allocations:
        live_bytes += event.extra_fields.alloc_size
        if event.start_time_ns < step.start_time_ns:
            peak_bytes = live_bytes  # alive as the step begins
        elif event.start_time_ns <= step.end_time_ns:
            peak_bytes = max(peak_bytes, live_bytes)
    return peak_bytes
