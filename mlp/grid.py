"""The grid of configurations a benchmark run or sweep covers, and defaults per device."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mlp.config import RunConfig


@dataclass(frozen=True)
class Grid:
    """Lists to take the product of; phases other than train-step ignore optimizers."""

    depths: tuple[int, ...]  # linear layers per model
    widths: tuple[int, ...]  # hidden units per layer
    batch_sizes: tuple[int, ...]  # samples per step
    phases: tuple[str, ...]  # from mlp.config.PHASES
    dtypes: tuple[str, ...] = ("float32",)  # keys of mlp.config.DTYPES
    optimizers: tuple[str, ...] = ("adam",)  # used by train-step
    input_dim: int = 784  # features per sample (an MNIST image, flattened)
    output_dim: int = 10  # classes

    def configs(self) -> list[RunConfig]:
        """Every configuration once, smallest models first (a sweep's early results come fast)."""
        seen: dict[RunConfig, None] = {}
        for depth, width, phase, dtype, optimizer, batch_size in itertools.product(
            self.depths, self.widths, self.phases, self.dtypes, self.optimizers, self.batch_sizes
        ):
            config = RunConfig(
                input_dim=self.input_dim,
                width=width,
                output_dim=self.output_dim,
                depth=depth,
                batch_size=batch_size,
                phase=phase,
                dtype=dtype,
                optimizer=optimizer if phase == "train-step" else "none",
            )
            seen.setdefault(config, None)
        return list(seen)


# Sized so that the CPU grid runs in a few minutes on 2 cores (its largest step, depth 8 width
# 1024 batch 1024 with Adam, is 45 GFLOP: about a second there), and the CUDA grid reaches
# batch sizes and widths where a GPU is busy (a 4096-wide layer at batch 4096 is
# 2 * 4096**3 = 137 GFLOP).
DEFAULT_GRIDS = {
    "cpu": Grid(
        depths=(2, 4, 8),
        widths=(64, 256, 1024),
        batch_sizes=(1, 16, 64, 256, 1024),
        phases=("forward", "train-step"),
    ),
    "cuda": Grid(
        depths=(2, 4, 8),
        widths=(1024, 4096),
        batch_sizes=(1, 64, 512, 4096),
        phases=("forward", "backward", "forward-backward", "train-step"),
        dtypes=("float32", "bfloat16"),
    ),
}


def config_id(config: RunConfig) -> str:
    """A short, stable name for a configuration: a pytest id and a record's file name."""
    parts = [
        f"d{config.depth}",
        f"w{config.width}",
        f"b{config.batch_size}",
        config.phase,
        config.dtype,
    ]
    if config.phase == "train-step":
        parts.append(config.optimizer)
    if (config.input_dim, config.output_dim) != (784, 10):
        parts.append(f"io{config.input_dim}x{config.output_dim}")
    if (config.activation, config.output_activation) != ("relu", "sigmoid"):
        parts.append(f"{config.activation}-{config.output_activation}")
    return "-".join(parts)
