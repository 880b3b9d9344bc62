"""A catalogue of common GPUs and their memory, and the memory budget a fit is checked against."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlp.device import nvml_gpu_facts
from mlp.units import GIB, format_bytes, parse_bytes

MIB = 2**20


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model of the catalogue."""

    name: str  # lower-case key, as typed after --gpu: "a100-80gb"
    label: str  # the maker's name for it: "NVIDIA A100 80GB"
    memory_bytes: int  # device memory as the driver reports it (see the note on each entry)
    vendor: str  # "nvidia" or "amd"


# Memory is what the driver reports as the device's total (NVML's memory.total, which is
# nvidia-smi's "MiB" figure and what --gpu auto reads), not the data sheet's
# round number: an "80GB" H100 reports 81,559 MiB (79.6 GiB), a "16GB" T4 15,360 MiB (15 GiB).
# A fit is judged against what the program can see, so the reported figure is the right one.
# (CUDA's own total, torch.cuda.mem_get_info, can be a few hundred MiB lower still, where the
# driver reserves memory that NVML counts; the default margin covers it.)
# Sources, per entry:
#   [modal]  NVML totals tabulated by Modal (thundergolfer.com/blog/nvidia-gpu-memory-capacity)
#   [smi]    nvidia-smi output posted in public bug reports (driver 525-595, ECC as shipped)
#   [torch]  torch.cuda.get_device_properties().total_memory printed in a public log
#   [sheet]  the data sheet's capacity, read in binary units (HBM stacks come in 2**30 bytes);
#            the driver may report a little less, which the default margin covers
_CATALOGUE = (
    GpuSpec("t4", "NVIDIA Tesla T4", 15_360 * MIB, "nvidia"),  # [modal] 16 GB sheet
    GpuSpec("l4", "NVIDIA L4", 23_034 * MIB, "nvidia"),  # [modal] 24 GB sheet
    GpuSpec("a10", "NVIDIA A10", 23_028 * MIB, "nvidia"),  # [modal] 24 GB sheet
    GpuSpec("rtx3090", "NVIDIA GeForce RTX 3090", 24_576 * MIB, "nvidia"),  # [smi]
    GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090", 24_564 * MIB, "nvidia"),  # [smi]
    GpuSpec("rtx5090", "NVIDIA GeForce RTX 5090", 32_607 * MIB, "nvidia"),  # [smi]
    GpuSpec("v100-16gb", "NVIDIA Tesla V100 16GB", 16_160 * MIB, "nvidia"),  # [torch] SXM2
    GpuSpec("v100-32gb", "NVIDIA Tesla V100 32GB", 32_510 * MIB, "nvidia"),  # [smi] SXM2, ECC on
    GpuSpec("a6000", "NVIDIA RTX A6000", 48 * GIB, "nvidia"),  # [sheet] 48 GB GDDR6
    GpuSpec("l40s", "NVIDIA L40S", 46_068 * MIB, "nvidia"),  # [modal] 48 GB sheet
    # [modal] PCIe; SXM4 40GB boards report 40,536 MiB [smi], 1% less, inside the margin.
    GpuSpec("a100-40gb", "NVIDIA A100 40GB", 40_960 * MIB, "nvidia"),
    GpuSpec("a100-80gb", "NVIDIA A100 80GB", 81_920 * MIB, "nvidia"),  # [modal]
    GpuSpec("h100-80gb", "NVIDIA H100 80GB HBM3", 81_559 * MIB, "nvidia"),  # [modal]
    GpuSpec("h200", "NVIDIA H200 141GB", 143_771 * MIB, "nvidia"),  # [modal]
    # [sheet] 128 GB per board, but each of its two dies is a device of 64 GiB to PyTorch.
    GpuSpec("mi250x", "AMD Instinct MI250X (one die)", 64 * GIB, "amd"),
    # [sheet] 192 GB HBM3; split into eight partitions, each reports 25,767,706,624 bytes
    # (ROCm issue 4750), an eighth of 192 GiB less 2 MiB.
    GpuSpec("mi300x", "AMD Instinct MI300X", 192 * GIB, "amd"),
)
GPUS: dict[str, GpuSpec] = {spec.name: spec for spec in _CATALOGUE}

# The fraction of a device's memory that a fit holds back by default, for what PyTorch's
# allocator cannot see or cannot use:
# - the CUDA context (kernels, cuBLAS and cuDNN handles): 300-500 MiB on recent drivers with
#   lazy module loading, up to ~1 GiB on older ones; 3% of a T4, 0.6% of an H100;
# - the caching allocator's fragmentation: reserved exceeds allocated, since blocks round up
#   (large ones to 2 MiB) and freed blocks of one size cannot always serve another; a few
#   percent for an MLP's repeating shapes, more for irregular ones;
# - other processes on the same GPU (a display server holds 100s of MiB on a desktop card).
# 10% covers a 1 GiB context plus 3% fragmentation on the smallest card listed (a 15 GiB T4);
# vLLM's default gpu_memory_utilization of 0.9 holds back the same 10% for the same reasons.
# --margin 0 judges against the whole of the memory.
DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class Budget:
    """How many bytes a step's peak may reach, and where the figure came from."""

    total_bytes: int  # the device's memory (or the size given)
    budget_bytes: int  # total_bytes less the margin: what the peak must not pass
    margin: float  # fraction of total_bytes held back
    source: str  # "h100-80gb", "auto: NVIDIA H200", "--memory 24GiB"
    free_bytes: int | None = None  # free on the device when read (--gpu auto only)

    def as_dict(self) -> dict:
        return {
            "total_bytes": self.total_bytes,
            "budget_bytes": self.budget_bytes,
            "margin": self.margin,
            "budget_source": self.source,
            "free_bytes": self.free_bytes,
        }

    def describe(self) -> str:
        """'72.00 GiB of 80.00 GiB (10% margin) from h100-80gb'."""
        return (
            f"{format_bytes(self.budget_bytes)} of {format_bytes(self.total_bytes)} "
            f"({self.margin:.0%} margin) from {self.source}"
        )


def check_margin(margin: object) -> float:
    """Return margin as a float in [0, 1), or raise ValueError naming it."""
    ok = isinstance(margin, (int, float)) and not isinstance(margin, bool)
    if not ok or not math.isfinite(margin) or not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be a fraction in [0, 1), got {margin!r}")
    return float(margin)


def lookup_gpu(name: str) -> GpuSpec:
    """The catalogue entry for name (any case), or a ValueError listing the names."""
    spec = GPUS.get(str(name).strip().lower())
    if spec is None:
        raise ValueError(f"gpu must be one of {', '.join(GPUS)} or auto; got {name!r}")
    return spec


def resolve_budget(
    gpu: str | None = None,
    memory: str | int | None = None,
    margin: float | None = None,
) -> Budget:
    """The budget of a named GPU, of this machine's GPU (gpu="auto"), or of a size given.

    Exactly one of gpu and memory. The margin (DEFAULT_MARGIN when None) is held back from
    the total: budget_bytes = floor(total_bytes * (1 - margin)).
    """
    if (gpu is None) == (memory is None):
        given = "both" if gpu is not None else "neither"
        raise ValueError(f"give exactly one of gpu (--gpu) or memory (--memory); got {given}")
    margin = DEFAULT_MARGIN if margin is None else check_margin(margin)

    free_bytes = None
    if memory is not None:
        if isinstance(memory, int) and not isinstance(memory, bool):
            if memory <= 0:
                raise ValueError(f"memory must be more than 0 bytes, got {memory!r}")
            total_bytes = memory
        else:
            total_bytes = parse_bytes(memory, "memory")
        source = f"--memory {memory}"
    elif str(gpu).strip().lower() == "auto":
        facts = nvml_gpu_facts()
        if facts is None:
            raise ValueError(
                "gpu auto needs an NVIDIA GPU and its driver (read through NVML), and found "
                f"none here; name a GPU ({', '.join(list(GPUS)[:4])}, ...) or give --memory"
            )
        total_bytes, free_bytes = facts.total_bytes, facts.free_bytes
        source = f"auto: {facts.name}"
    else:
        spec = lookup_gpu(gpu)
        total_bytes = spec.memory_bytes
        source = spec.name

    return Budget(
        total_bytes=total_bytes,
        budget_bytes=math.floor(total_bytes * (1.0 - margin)),
        margin=margin,
        source=source,
        free_bytes=free_bytes,
    )
