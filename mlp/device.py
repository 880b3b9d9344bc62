"""Which device a run uses, what it is, and how its out-of-memory errors look."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Fraction of the host's available memory held back from a CPU run: room for Python, the
# allocator's fragmentation and other processes, so that the operating system's
# out-of-memory killer never ends a run. A configuration predicted past the rest is refused.
HOST_MARGIN = 0.2


def resolve_device(name: str) -> torch.device:
    """cpu, cuda (or cuda:N) or auto; a CUDA request without a GPU is an error, never a CPU run."""
    if not isinstance(name, str) or not (name in DEVICE_CHOICES or name.startswith("cuda:")):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name} was asked for but no CUDA GPU is visible; use cpu or auto"
            )
        device = torch.device(name)
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name} does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible"
            )
        return torch.device("cuda", index)
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """A person's name for the device: the GPU model, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model_name()


def _cpu_model_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def is_oom_error(exc: BaseException) -> bool:
    """True for an allocator's out-of-memory error on any device; every other error is not."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc)
        # The CPU allocator's words when malloc fails, and CUDA's when raised as plain
        # RuntimeError by a library call (cuBLAS workspace, for one).
        return (
            "can't allocate memory" in message
            or "CUDA out of memory" in message
            or "CUBLAS_STATUS_ALLOC_FAILED" in message
        )
    return False


@dataclass(frozen=True)
class GpuFacts:
    """What NVML says of an NVIDIA GPU."""

    name: str
    total_bytes: int
    free_bytes: int
    driver_version: str


def nvml_gpu_facts(index: int = 0) -> GpuFacts | None:
    """Name and memory of GPU `index` through nvidia-ml-py, or None where NVML is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return GpuFacts(
            name=name.decode() if isinstance(name, bytes) else name,
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            driver_version=driver.decode() if isinstance(driver, bytes) else driver,
        )
    except pynvml.NVMLError as exc:
        log.debug("NVML query failed: %s", exc)
        return None
    finally:
        pynvml.nvmlShutdown()


def host_memory_check(config, available_bytes: int | None = None) -> tuple[int, int]:
    """(predicted peak bytes of config on the CPU, bytes a CPU run may use).

    available_bytes defaults to what the OS says is available now (psutil).
    """
    import psutil

    from mlp.estimate import estimate

    if available_bytes is None:
        available_bytes = int(psutil.virtual_memory().available)
    return estimate(config, "cpu").peak_bytes, int(available_bytes * (1 - HOST_MARGIN))
