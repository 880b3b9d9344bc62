"""One benchmark configuration, and the names each of its fields accepts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

PHASES = ("forward", "backward", "forward-backward", "train-step")
OPTIMIZERS = ("none", "sgd", "momentum", "adam", "adamw")
ACTIVATIONS = ("relu", "gelu", "tanh")
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")
# float16 is left out: trained without loss scaling (as a plain step here would be), Adam's
# eps of 1e-8 underflows to 0 in float16 and the outputs soon turn to NaN. Mixed precision
# with a gradient scaler is a different workload from the ones measured here.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Sizes past these are refused as typos rather than tried: a 2**24-wide layer holds
# 2**48 weights (1 PiB in float32), far past any device this tool reports on.
MAX_DIM = 2**24
MAX_DEPTH = 1024
MAX_BATCH_SIZE = 2**31 - 1


def check_positive_int(name: str, value: object, upper: int | None = None) -> int:
    """Return value as an int, or raise ValueError naming the field and what is allowed."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value, ok = int(value), True
    if not ok or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper}, got {value!r}")
    return value


def check_choice(name: str, value: object, allowed) -> str:
    """Return value if it is one of allowed, else raise ValueError listing the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


@dataclass(frozen=True)
class RunConfig:
    """What one measurement or estimate runs: the model, the step and the batch."""

    input_dim: int = 784  # features per sample fed to the first layer
    width: int = 1024  # units in each hidden layer
    output_dim: int = 10  # units in the output layer
    depth: int = 3  # linear layers in all, input and output layers included
    batch_size: int = 64  # samples per step
    phase: str = "train-step"  # which part of a training step is run, one of PHASES
    dtype: str = "float32"  # parameter and activation dtype, a key of DTYPES
    optimizer: str = "adam"  # used by train-step only; "none" for the other phases
    activation: str = "relu"  # between layers
    output_activation: str = "sigmoid"  # after the last layer

    def __post_init__(self):
        for name in ("input_dim", "width", "output_dim"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name), MAX_DIM))
        object.__setattr__(self, "depth", check_positive_int("depth", self.depth, MAX_DEPTH))
        object.__setattr__(
            self, "batch_size", check_positive_int("batch_size", self.batch_size, MAX_BATCH_SIZE)
        )
        check_choice("phase", self.phase, PHASES)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        if self.phase != "train-step" and self.optimizer != "none":
            # Only a train step uses an optimizer; keep one spelling for the other phases so
            # that two equal runs compare equal.
            object.__setattr__(self, "optimizer", "none")
        if self.phase == "train-step" and self.optimizer == "none":
            raise ValueError(
                "optimizer must be one of sgd, momentum, adam, adamw for phase train-step"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_bytes(self) -> int:
        return self.torch_dtype.itemsize

    def describe(self, batch: bool = True) -> str:
        """One line for people: 'MLP depth 4, width 1024, 784 -> 10, float32, batch 256, ...'."""
        optimizer = f" with {self.optimizer}" if self.phase == "train-step" else ""
        batch_text = f", batch {self.batch_size}" if batch else ""
        return (f"MLP depth {self.depth}, width {self.width}, {self.input_dim} -> "
                f"{self.output_dim}, {self.dtype}{batch_text}, {self.phase}{optimizer}")

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
