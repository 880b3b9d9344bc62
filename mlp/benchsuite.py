"""The pytest plugin behind bench/: grid options, parametrization, and one benchmark body.

pyproject.toml loads it (`-p mlp.benchsuite`); bench/test_mlp.py holds the one parametrized test.
Each benchmark times its phase with pytest-benchmark's pedantic mode (so the backward phase's
forward can run untimed in `setup`) and writes what it measured into `extra_info`, which
pytest-benchmark saves in its JSON.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mlp.config import DTYPES, OPTIMIZERS, PHASES, RunConfig
from mlp.device import (
    device_name,
    host_memory_check,
    is_oom_error,
    nvml_gpu_facts,
    resolve_device,
)
from mlp.flops import count_flops
from mlp.grid import DEFAULT_GRIDS, Grid, config_id
from mlp.memory import measure_peak
from mlp.model import count_params
from mlp.phases import build_workload
from mlp.records import RecordStore
from mlp.timing_quality import timing_flags
from mlp.units import parse_bytes

log = logging.getLogger(__name__)

# Timed rounds: at least MIN_ROUNDS (pytest-benchmark's --benchmark-min-rounds raises it),
# then more while their total stays under --benchmark-max-time, up to MAX_ROUNDS.
MAX_ROUNDS = 10_000

_LIST_OPTIONS = {
    # option: (grid field, item type, allowed values or None)
    "--mlp-depths": ("depths", int, None),
    "--mlp-widths": ("widths", int, None),
    "--mlp-batch-sizes": ("batch_sizes", int, None),
    "--mlp-phases": ("phases", str, PHASES),
    "--mlp-dtypes": ("dtypes", str, tuple(DTYPES)),
    "--mlp-optimizers": ("optimizers", str, OPTIMIZERS[1:]),
}


def pytest_addoption(parser):
    group = parser.getgroup("mlpbench", "mlpbench grid (comma-separated lists)")
    for option, (field, item_type, allowed) in _LIST_OPTIONS.items():
        kind = "positive integers" if item_type is int else ", ".join(allowed)
        group.addoption(option, default=None, help=f"{field}: {kind} (default: by device)")
    group.addoption("--mlp-input-dim", default=None, help="input features (default 784)")
    group.addoption("--mlp-output-dim", default=None, help="output units (default 10)")
    group.addoption("--mlp-device", default="auto", help="cpu, cuda or auto (default auto)")
    group.addoption("--mlp-records", default=None,
                    help="folder for one JSON record per finished configuration")
    group.addoption("--mlp-resume", action="store_true",
                    help="skip configurations that already have a record in --mlp-records")
    group.addoption("--mlp-host-memory", default=None,
                    help="host memory a CPU run may use (default: what the OS says is free)")
    group.addoption("--mlp-force", action="store_true",
                    help="let --benchmark-json replace an existing file")


def _usage_error(message: str):
    """One line, exit status 2, no traceback: the rule for bad input everywhere in mlpbench."""
    pytest.exit(f"mlpbench: error: {message}", returncode=2)


def _parse_list(option: str, text: str, item_type, allowed):
    items = [item.strip() for item in text.split(",")]
    if item_type is int:
        if not all(item.isdigit() and int(item) > 0 for item in items):
            _usage_error(f"{option} must be a comma-separated list of positive integers, "
                         f"got {text!r}")
        return tuple(int(item) for item in items)
    if not items or any(item not in allowed for item in items):
        _usage_error(f"{option} must be a comma-separated list of {', '.join(allowed)}; "
                     f"got {text!r}")
    return tuple(items)


_stop_requested: list[int] = []  # the signal that asked this run to stop, once one has


def _stop_on_sigterm(signum, frame):
    # Raised wherever the main thread is; if that is a weakref finalizer or __del__, Python
    # prints and drops the exception, so the request is also kept for the next test's setup.
    _stop_requested.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_runtest_setup(item):
    if _stop_requested:
        raise KeyboardInterrupt(f"signal {_stop_requested[0]}")


def pytest_configure(config):
    """Check every mlpbench option once, before anything runs."""
    config.addinivalue_line("markers", "mlpbench: an mlpbench grid benchmark")
    # SIGTERM (a job scheduler's stop, `mlpbench sweep` passing one on) ends the run as
    # Ctrl-C does: pytest stops between benchmarks' steps and pytest-benchmark still saves
    # what finished. Only the main thread may set a handler.
    if threading.current_thread() is threading.main_thread():
        config._mlpbench_sigterm = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        device = resolve_device(config.getoption("--mlp-device"))
    except ValueError as exc:
        _usage_error(f"--mlp-device: {exc}")

    base = DEFAULT_GRIDS["cuda" if device.type == "cuda" else "cpu"]
    changes = {}
    for option, (field, item_type, allowed) in _LIST_OPTIONS.items():
        text = config.getoption(option)
        if text is not None:
            changes[field] = _parse_list(option, text, item_type, allowed)
    for option, field in (("--mlp-input-dim", "input_dim"), ("--mlp-output-dim", "output_dim")):
        text = config.getoption(option)
        if text is not None:
            changes[field] = _parse_list(option, text, int, None)[0]
    try:
        grid = Grid(**{**base.__dict__, **changes})
        configs = grid.configs()
    except ValueError as exc:
        _usage_error(str(exc))

    host_budget = None
    if config.getoption("--mlp-host-memory") is not None:
        try:
            host_budget = parse_bytes(config.getoption("--mlp-host-memory"), "--mlp-host-memory")
        except ValueError as exc:
            _usage_error(str(exc))
    if config.getoption("--mlp-resume") and config.getoption("--mlp-records") is None:
        _usage_error("--mlp-resume needs --mlp-records FOLDER")
    json_path = config.getoption("--benchmark-json", None)
    if json_path is not None and Path(json_path).exists() and not config.getoption("--mlp-force"):
        # pytest-benchmark would replace it at the end of the run: a result once written is
        # never lost by accident.
        _usage_error(f"--benchmark-json: {json_path} exists; it is kept (pass --mlp-force to "
                     "replace it)")

    records = config.getoption("--mlp-records")
    config._mlpbench = {
        "device": device,
        "configs": configs,
        "records": RecordStore(records) if records else None,
        "host_budget_bytes": host_budget,
        "not_run": [],
    }


def pytest_unconfigure(config):
    previous = getattr(config, "_mlpbench_sigterm", None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def pytest_generate_tests(metafunc):
    if "mlp_config" in metafunc.fixturenames:
        state = metafunc.config._mlpbench
        configs = state["configs"]
        metafunc.parametrize("mlp_config", configs, ids=[config_id(c) for c in configs])


def pytest_collection_modifyitems(config, items):
    """With --mlp-resume, leave out what an earlier, interrupted run already finished."""
    state = config._mlpbench
    if not config.getoption("--mlp-resume") or state["records"] is None:
        return
    done = state["records"].done_ids()
    kept, skipped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        cfg = callspec.params.get("mlp_config") if callspec else None
        (skipped if cfg is not None and config_id(cfg) in done else kept).append(item)
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = kept


def pytest_benchmark_update_machine_info(config, machine_info):
    device = config._mlpbench["device"]
    total_bytes = None
    if device.type == "cuda":
        facts = nvml_gpu_facts(device.index or 0)
        total_bytes = (
            facts.total_bytes if facts else torch.cuda.get_device_properties(device).total_memory
        )
    machine_info["mlpbench"] = {
        "torch_version": torch.__version__,
        "device": _device_label(device),
        "device_name": device_name(device),
        "device_total_bytes": total_bytes,
        "cuda_version": torch.version.cuda,
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["mlpbench"] = {"version": 1, "not_run": config._mlpbench["not_run"]}


@pytest.fixture
def mlp_device(request) -> torch.device:
    return request.config._mlpbench["device"]


def _device_label(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def _record_not_run(request, config: RunConfig, device, status, reason, **fields) -> None:
    record = {
        **config.as_dict(),
        "device": _device_label(device),
        "status": status,
        "reason": reason,
        "requested_bytes": fields.get("requested_bytes"),
        "estimated_peak_bytes": fields.get("estimated_peak_bytes"),
    }
    state = request.config._mlpbench
    state["not_run"].append(record)
    if state["records"] is not None:
        state["records"].write(config_id(config), {"mlpbench_not_run": record})


def _free_device_memory(device: torch.device) -> None:
    """After an out-of-memory error: drop the cached blocks so the next run starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _requested_bytes(exc: BaseException) -> int | None:
    """The size of the allocation that failed, from the allocator's message when it says."""
    import re

    message = str(exc)
    match = re.search(r"allocate (\d+) bytes", message)  # the CPU allocator's words
    if match:
        return int(match.group(1))
    match = re.search(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)", message)  # CUDA's
    if match:
        scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[match.group(2)]
        return int(float(match.group(1)) * scale)
    return None


@dataclass(frozen=True)
class NotFitting:
    """A configuration that ran out of device memory."""

    reason: str
    requested_bytes: int | None  # the allocation that failed, when the allocator says


def prepare_measured(config: RunConfig, device: torch.device):
    """Build and warm up the workload, then measure its memory and FLOPs.

    Returns (workload, PeakMemory, flops), or NotFitting after an out-of-memory error, with
    the device's memory released so that the next configuration measures as if this one had
    never run. Every other error propagates.
    """
    try:
        workload = build_workload(config, device)
        workload.run_round()
        memory = measure_peak(workload)
        flops = count_flops(workload)
        return workload, memory, flops
    except Exception as exc:
        if not is_oom_error(exc):
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result = NotFitting(f"does not fit: out of memory ({first_line[:200]})",
                            _requested_bytes(exc))
    # Outside the except block: the exception's traceback holds the step's tensors, and
    # they must be gone before the cache is emptied.
    workload = None
    _free_device_memory(device)
    return result


def run_benchmark(benchmark, request, config: RunConfig, device: torch.device) -> None:
    """Measure one configuration: memory and FLOPs in rounds of their own, then the timing."""
    state = request.config._mlpbench
    cid = config_id(config)

    # host memory: skip what would make the OS kill the process
    if device.type == "cpu":
        predicted_bytes, allowed_bytes = host_memory_check(config, state["host_budget_bytes"])
        if predicted_bytes > allowed_bytes:
            reason = (f"skipped: predicted peak {predicted_bytes} bytes is over "
                      f"{allowed_bytes} bytes of host memory it may use")
            _record_not_run(request, config, device, "skipped-host-memory", reason,
                            estimated_peak_bytes=predicted_bytes)
            pytest.skip(reason)

    # build, warm up, and measure memory and FLOPs; an out-of-memory error means "does not fit"
    try:
        prepared = prepare_measured(config, device)
    except Exception as exc:
        _record_not_run(request, config, device, "error", f"{type(exc).__name__}: {exc}")
        raise
    if isinstance(prepared, NotFitting):
        _record_not_run(request, config, device, "oom", prepared.reason,
                        requested_bytes=prepared.requested_bytes)
        pytest.skip(prepared.reason)
    workload, memory, flops = prepared

    benchmark.extra_info.update({
        **config.as_dict(),
        "device": _device_label(device),
        "device_name": device_name(device),
        "params": count_params(config.input_dim, config.width, config.output_dim, config.depth),
        "flops": flops,
        "peak_bytes": memory.peak_bytes,
        "start_bytes": memory.start_bytes,
        "reserved_bytes": memory.reserved_bytes,
        "status": "ok",
    })

    # calibrate the number of rounds from one timed round, then time them
    workload.prepare()
    t0 = time.perf_counter()
    workload.step()
    step_s = time.perf_counter() - t0
    min_rounds = getattr(benchmark, "_min_rounds", 5)
    max_time_s = getattr(benchmark, "_max_time", 1.0)
    rounds = max(min_rounds, min(MAX_ROUNDS, int(max_time_s / max(step_s, 1e-9))))
    benchmark.pedantic(workload.step, setup=workload.prepare, rounds=rounds, iterations=1,
                       warmup_rounds=1)

    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None:
        # pytest-benchmark measures its timer's precision once and caches it (a private method
        # in versions 4 and 5; without it, the resolution check is left out)
        get_precision = getattr(benchmark, "_get_precision", None)
        precision_s = get_precision(benchmark._timer) if get_precision else None
        benchmark.extra_info["timing_flags"] = timing_flags(stats, precision_s=precision_s)
        if state["records"] is not None:
            state["records"].write(cid, benchmark.stats.as_dict(include_data=False))
    log.info("%s: %d rounds, median %.3f ms", cid, rounds, stats.median * 1e3 if stats else -1)
