"""The four measured phases of a training step, as a workload that a timer or probe can run.

A Workload owns everything one configuration needs on its device (model, batch, targets,
optimizer) and splits each round into an untimed `prepare()` and the timed `step()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mlp.config import RunConfig
from mlp.model import build_model

log = logging.getLogger(__name__)

# Learning rates are irrelevant to speed and memory; these are the usual defaults.
_OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01),
}


def loss_fn(output: torch.Tensor, target: torch.Tensor, output_activation: str) -> torch.Tensor:
    """The loss that fits the output activation: binary cross-entropy after a Sigmoid."""
    if output_activation == "sigmoid":
        return F.binary_cross_entropy(output, target)
    return F.mse_loss(output, target)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a clock read or memory counter sees the step done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Workload:
    """One configuration, built on a device, ready to run rounds of its phase."""

    config: RunConfig
    device: torch.device
    model: torch.nn.Module
    inputs: torch.Tensor  # (batch_size, input_dim)
    targets: torch.Tensor  # (batch_size, output_dim)
    optimizer: torch.optim.Optimizer | None = None
    _loss: torch.Tensor | None = field(default=None, repr=False)

    def prepare(self) -> None:
        """Untimed work before each round: the backward phase needs a fresh forward graph."""
        if self.config.phase == "backward":
            self._loss = self._forward_loss()
            synchronize(self.device)

    def step(self) -> None:
        """One round of the phase; returns once the device has finished it."""
        phase = self.config.phase
        if phase == "forward":
            with torch.inference_mode():
                self.model(self.inputs)  # (batch_size, output_dim), dropped at once
        elif phase == "backward":
            loss, self._loss = self._loss, None
            loss.backward()
        elif phase == "forward-backward":
            self._forward_loss().backward()
        else:
            self._forward_loss().backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)

    def run_round(self) -> None:
        """prepare() then step(): a whole round, as a warm-up or a probe runs it."""
        self.prepare()
        self.step()

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the workload holds between rounds: what is alive before a step."""
        tensors = [self.inputs, self.targets]
        for p in self.model.parameters():
            tensors.append(p)
            if p.grad is not None:
                tensors.append(p.grad)
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return tensors

    def _forward_loss(self) -> torch.Tensor:
        output = self.model(self.inputs)  # (batch_size, output_dim)
        return loss_fn(output, self.targets, self.config.output_activation)  # ()


def build_workload(config: RunConfig, device: torch.device | str, seed: int = 0) -> Workload:
    """Model, batch and optimizer for config on device; nothing is run yet."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(config, device)
    model.train(config.phase != "forward")
    inputs = torch.randn(
        config.batch_size, config.input_dim, device=device, dtype=config.torch_dtype
    )  # (batch_size, input_dim)
    # Targets in [0, 1], as binary cross-entropy requires.
    targets = torch.rand(
        config.batch_size, config.output_dim, device=device, dtype=config.torch_dtype
    )  # (batch_size, output_dim)
    optimizer = None
    if config.phase == "train-step":
        optimizer = _OPTIMIZERS[config.optimizer](model.parameters())
    return Workload(config, device, model, inputs, targets, optimizer)
