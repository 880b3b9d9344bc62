"""Peak memory of one step, traced: the real step run on the meta device under a tracker.

Meta tensors have shapes and dtypes but no data, so the step costs no memory and no compute
at any size, while PyTorch still goes through every operator, autograd node and optimizer
line that a real run does. The tracker counts each storage as the target device would (the
device rules of mlp.estimate) and remembers what was alive at the peak, so the peak can be
split into the same categories as the analytic estimate.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._pytree import tree_flatten

from mlp.config import RunConfig, check_choice
from mlp.cpu_memory import LiveBytesTracker
from mlp.estimate import (
    CATEGORIES,
    DEVICE_TYPES,
    Estimate,
    allocation_bytes,
    device_overhead_bytes,
    loss_scratch_bytes,
    loss_storage_elements,
)
from mlp.model import count_params
from mlp.phases import Workload, build_workload

# The loss operators whose output keeps a batch-sized storage on a real device (see
# mlp.estimate.loss_storage_elements); on meta it is one element.
LOSS_OPS = (torch.ops.aten.binary_cross_entropy.default, torch.ops.aten.mse_loss.default)


class RuleTracker(LiveBytesTracker):
    """LiveBytesTracker on meta tensors, counting each storage as target_device_type would.

    Counted: meta tensors, and for a CPU target also CPU tensors (Adam's step counters live
    on the CPU whatever the device). Each storage is charged allocation_bytes() of its size;
    a loss op's output is charged its batch-sized storage. Every storage gets a serial
    number and a category, and the serials alive at the peak are kept, so that a category
    learnt later (a gradient stolen into .grad, an output autograd kept) still applies.
    """

    def __init__(self, config: RunConfig, target_device_type: str):
        super().__init__("meta")
        self.config = config
        self.target = target_device_type
        self.device_types = ("meta", "cpu") if target_device_type == "cpu" else ("meta",)
        self.moment = "start"
        self.peak_moment = "start"
        self._serial = 0
        self._parts: dict[int, list[tuple[int, int]]] = {}  # storage key -> (serial, bytes)
        self._category: dict[int, str] = {}  # serial -> category
        self._made_in_forward: set[int] = set()  # serials created before the loss
        self._peak_parts: tuple[tuple[int, int], ...] = ()

    def hold(self, category: str, nbytes: int) -> None:
        """Count bytes that exist for the whole run but belong to no tensor (a workspace)."""
        serial = self._new_serial(category)
        self._parts[-serial] = [(serial, nbytes)]  # a key no storage id takes (ids are > 0)
        self._grow(nbytes)

    def track_as(self, tensors, category: str) -> None:
        for t in tensors:
            self._add(t, category=category)

    def mark_gradient(self, tensor: torch.Tensor) -> None:
        """Called once a parameter's .grad is in place: its storage counts as a gradient."""
        for serial, _ in self._parts.get(id(tensor.untyped_storage()), ()):
            if self._category[serial] == "transient":
                self._category[serial] = "gradients"

    def reset_peak(self) -> None:
        super().reset_peak()
        self._snapshot()

    def breakdown(self) -> dict[str, int]:
        totals = dict.fromkeys(CATEGORIES, 0)
        for serial, nbytes in self._peak_parts:
            totals[self._category[serial]] += nbytes
        return totals

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.moment == "loss":
            self.start_backward()
        out = func(*args, **(kwargs or {}))
        is_loss = func in LOSS_OPS
        if is_loss:
            self.moment = "loss"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, loss=is_loss)
        if is_loss:
            # What the op held for a moment before returning (CUDA) peaks with its output.
            scratch_bytes = loss_scratch_bytes(self.config, self.target)
            self._grow(scratch_bytes, [(self._new_serial("device_overhead"), scratch_bytes)])
            self.current_bytes -= scratch_bytes
        return out

    def start_backward(self) -> None:
        """The loss is computed: what the forward made and is still alive is held by autograd
        for backward, so it counts as activations from the start."""
        self.moment = "backward"
        for parts in self._parts.values():
            for serial, _ in parts:
                if serial in self._made_in_forward and self._category[serial] == "transient":
                    self._category[serial] = "activations"

    def _new_serial(self, category: str) -> int:
        self._serial += 1
        self._category[self._serial] = category
        if self.moment == "forward":
            self._made_in_forward.add(self._serial)
        return self._serial

    def _add(self, t: torch.Tensor, category: str = "transient", loss: bool = False) -> None:
        if t.device.type not in self.device_types:
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._parts:
            return
        if loss:
            # The scalar's own bytes are the loss; the rest of its storage is the device's.
            storage_bytes = allocation_bytes(
                loss_storage_elements(self.config) * t.element_size(), self.target)
            value_bytes = min(storage_bytes, allocation_bytes(t.element_size(), self.target))
            parts = [(self._new_serial("transient"), value_bytes),
                     (self._new_serial("device_overhead"), storage_bytes - value_bytes)]
        else:
            parts = [(self._new_serial(category),
                      allocation_bytes(storage.nbytes(), self.target))]
        nbytes = sum(size for _, size in parts)
        self._parts[key] = parts
        self._live[key] = weakref.finalize(storage, self._release, key, nbytes)
        self._grow(nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        super()._release(key, nbytes)
        self._parts.pop(key, None)

    def _grow(self, nbytes: int, extra_parts=()) -> None:
        self.current_bytes += nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self._snapshot(extra_parts)

    def _snapshot(self, extra_parts=()) -> None:
        self.peak_moment = self.moment
        self._peak_parts = tuple(
            part for parts in self._parts.values() for part in parts) + tuple(extra_parts)


def meta_workload(config: RunConfig, target_device_type: str = "cpu") -> Workload:
    """The workload on the meta device, its optimizer set up as on the target device.

    PyTorch picks the for-loop optimizer implementation for meta tensors, as for the CPU;
    on CUDA its default is foreach, so a CUDA target switches it on.
    """
    workload = build_workload(config, "meta")
    if workload.optimizer is not None and target_device_type == "cuda":
        workload.optimizer.defaults["foreach"] = True
        for group in workload.optimizer.param_groups:
            group["foreach"] = True
    return workload


def trace_estimate(config: RunConfig, device_type: str = "cpu", *,
                   capability: tuple[int, int] | None = None) -> Estimate:
    """Run the warm-up and one measured round on meta tensors and return what they reached."""
    check_choice("device_type", device_type, DEVICE_TYPES)
    workload = meta_workload(config, device_type)
    workload.run_round()  # the warm-up: creates gradients and optimizer state as a real one
    tracker = RuleTracker(config, device_type)

    # Gradients of the train step are new tensors that AccumulateGrad installs as .grad.
    handles = [p.register_post_accumulate_grad_hook(lambda p: tracker.mark_gradient(p.grad))
               for p in workload.model.parameters()]
    if workload.optimizer is not None:
        handles.append(workload.optimizer.register_step_pre_hook(
            lambda *_: setattr(tracker, "moment", "optimizer-step")))
    try:
        with tracker:
            _track_state(tracker, workload, device_type, capability)
            tracker.moment = "forward"
            workload.prepare()
            if config.phase == "backward":
                tracker.start_backward()  # prepare() ran the forward and the loss
            tracker.reset_peak()
            workload.step()
    finally:
        for handle in handles:
            handle.remove()

    return Estimate(
        config=config,
        device_type=device_type,
        method="trace",
        params=count_params(config.input_dim, config.width, config.output_dim, config.depth),
        peak_bytes=tracker.peak_bytes,
        breakdown=tracker.breakdown(),
        peak_moment=tracker.peak_moment,
    )


def _track_state(tracker: RuleTracker, workload: Workload, device_type: str, capability):
    """Count what is alive before the step, each under its category."""
    params = list(workload.model.parameters())
    tracker.track_as(params, "parameters")
    tracker.track_as([p.grad for p in params if p.grad is not None], "gradients")
    tracker.track_as([workload.inputs, workload.targets], "activations")
    if workload.optimizer is not None:
        for state in workload.optimizer.state.values():
            tracker.track_as([v for v in state.values() if isinstance(v, torch.Tensor)],
                             "optimizer_state")
    overhead_bytes = device_overhead_bytes(workload.config, device_type, capability)
    if overhead_bytes:
        tracker.hold("device_overhead", overhead_bytes)
