"""Peak memory of one step, predicted without running it: a closed-form model or a meta trace.

The analytic method replays, as integer arithmetic, the order in which the step allocates and
frees its tensors: the forward pass layer by layer, the loss, the autograd engine freeing each
node's inputs and saved tensors as it runs, the optimizer's temporaries and zero_grad. The
order was read off real CPU runs under mlp.cpu_memory.LiveBytesTracker (every op's output
bytes and every free, at odd sizes such as batch 7, widths 3 and 5), and the tests hold it to
the measured peak exactly on a randomized grid. Identical hidden layers are folded into one
block, so a 1,000-layer model costs no more than a 3-layer one.

What a device adds behind the tensors (a loss's batch-sized buffer, CUDA's 512-byte blocks,
the cuBLAS workspaces) is written below as named device rules, each with its evidence.
The trace method (mlp.trace) runs the real step on the meta device and applies the same rules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from mlp.config import RunConfig, check_choice
from mlp.model import count_params, layer_dims

DEVICE_TYPES = ("cpu", "cuda")
METHODS = ("analytic", "trace")
# Where the bytes live at the peak moment; the values of Estimate.breakdown sum to peak_bytes.
CATEGORIES = (
    "parameters",  # weights and biases
    "gradients",  # parameter .grad tensors, kept or being created by this backward
    "optimizer_state",  # momentum buffers, Adam's exp_avg, exp_avg_sq and step counters
    "activations",  # the batch and its targets, and every tensor autograd saved for backward
    "transient",  # temporaries: layer outputs not saved, activation gradients, the loss
    "device_overhead",  # what the device adds: the loss's unreduced buffer, cuBLAS workspaces
)
# The moments of a step, in order; Estimate.peak_moment is one of them.
MOMENTS = ("start", "forward", "loss", "backward", "optimizer-step")

# ---------------------------------------------------------------------------------------------
# Device rules: what a device allocates that the tensors' own sizes do not show.

# The CUDA caching allocator hands out blocks in multiples of 512 bytes (kMinBlockSize and
# round_size() in c10/cuda/CUDACachingAllocator.cpp), and torch.cuda.max_memory_allocated
# counts the rounded block sizes, so a 4-byte scalar costs 512 bytes there. The CPU tracker
# counts storage bytes as they are.
CUDA_BLOCK_BYTES = 512

# cuBLAS workspace that PyTorch gives each (handle, stream) on the first matmul and keeps for
# the life of the process, allocated through the caching allocator, so it is inside
# max_memory_allocated in every step after the warm-up. Default sizes from
# parseChosenWorkspaceSize() in aten/src/ATen/cuda/CublasHandlePool.cpp (PyTorch 2.x): 32 MiB
# on compute capability 9.0 (H100, H200), else ":4096:2:16:8", that is 2 x 4096 KiB + 8 x
# 16 KiB. CUBLAS_WORKSPACE_CONFIG (":SIZE_KIB:COUNT" pairs) overrides both. Read from the
# source, not yet checked on a GPU in this session.
CUBLAS_WORKSPACE_BYTES_SM90 = 4096 * 8 * 1024
CUBLAS_WORKSPACE_BYTES_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8

# cuBLASLt keeps a second workspace, CUBLASLT_WORKSPACE_SIZE KiB (default 1024), allocated the
# first time addmm takes the Lt path (a bias, and weights with both dimensions above 1: see
# addmm_out_cuda_impl in aten/src/ATen/native/cuda/Blas.cpp). Unverified here as above.
CUBLASLT_WORKSPACE_BYTES_DEFAULT = 1024 * 1024

# With no GPU to ask, a CUDA estimate assumes compute capability 9.0 (Hopper): its workspace
# is the larger one, so a fit decision made on the estimate errs on the safe side.
ASSUMED_CUDA_CAPABILITY = (9, 0)


def allocation_bytes(nbytes: int, device_type: str) -> int:
    """Bytes the device's memory counter charges for a tensor storage of nbytes."""
    if device_type == "cuda" and nbytes > 0:
        return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES
    return nbytes


def loss_storage_elements(config: RunConfig) -> int:
    """Elements in the storage of the scalar loss: batch_size * output_dim, not 1.

    binary_cross_entropy and mse_loss write the unreduced loss into their output and then
    resize it to a scalar, which keeps the storage. Measured on the CPU (torch 2.13): for a
    (7, 2) float32 output, F.binary_cross_entropy(...).untyped_storage().nbytes() and the same
    for F.mse_loss are 56, not 4. The meta device reports 4, so the trace adds the rest.
    """
    return config.batch_size * config.output_dim


def loss_scratch_bytes(config: RunConfig, device_type: str) -> int:
    """Bytes a loss op holds for a moment inside the op, before it returns (CUDA only).

    On CUDA every allocation counts toward the peak, even one freed before the op returns:
    binary_cross_entropy reduces into a new scalar (one block); mse_loss builds its unreduced
    loss in a TensorIterator temporary of batch_size * output_dim elements besides its result.
    The CPU tracker, the CPU's measurement, sees op outputs only, so these are 0 there.
    Derived from aten/src/ATen/native/{cuda/Loss.cu,Loss.cpp}; unverified on a GPU here.
    """
    if device_type != "cuda":
        return 0
    if config.output_activation == "sigmoid":
        return allocation_bytes(config.element_bytes, device_type)
    unreduced_bytes = config.batch_size * config.output_dim * config.element_bytes
    return allocation_bytes(unreduced_bytes, device_type)


def adam_step_counter_bytes(device_type: str) -> int:
    """Adam keeps a float32 0-dim `step` tensor per parameter, on the CPU unless capturable or
    fused (torch/optim/adam.py, _init_group), so it costs 4 bytes on the CPU and nothing in
    CUDA memory."""
    return 4 if device_type == "cpu" else 0


def cublas_workspace_bytes(capability: tuple[int, int]) -> int:
    """The cuBLAS workspace PyTorch keeps on a GPU of this compute capability."""
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:
        pairs = re.findall(r":([0-9]+):([0-9]+)", config)
        if pairs:
            return sum(int(size_kib) * 1024 * int(count) for size_kib, count in pairs)
    if tuple(capability) == (9, 0):
        return CUBLAS_WORKSPACE_BYTES_SM90
    return CUBLAS_WORKSPACE_BYTES_DEFAULT


def cublaslt_workspace_bytes(config: RunConfig) -> int:
    """The cuBLASLt workspace, if some layer's addmm takes the Lt path (both dims above 1)."""
    dims = layer_dims(config.input_dim, config.width, config.output_dim, config.depth)
    if not any(fan_in > 1 and fan_out > 1 for fan_in, fan_out in dims):
        return 0
    size_kib = os.environ.get("CUBLASLT_WORKSPACE_SIZE", "")
    if size_kib.isdigit():
        return int(size_kib) * 1024
    return CUBLASLT_WORKSPACE_BYTES_DEFAULT


def cuda_capability() -> tuple[int, int]:
    """The visible GPU's compute capability, or ASSUMED_CUDA_CAPABILITY without one."""
    if torch.cuda.is_available():
        return tuple(torch.cuda.get_device_capability())
    return ASSUMED_CUDA_CAPABILITY


def device_overhead_bytes(config: RunConfig, device_type: str,
                          capability: tuple[int, int] | None = None) -> int:
    """Bytes the device holds for the whole step besides the tensors: the cuBLAS workspaces."""
    if device_type != "cuda":
        return 0
    capability = capability or cuda_capability()
    return cublas_workspace_bytes(capability) + cublaslt_workspace_bytes(config)


# ---------------------------------------------------------------------------------------------
# The estimate.


@dataclass(frozen=True)
class Estimate:
    """Predicted peak memory of one step of config on a device type."""

    config: RunConfig
    device_type: str  # "cpu" or "cuda": whose allocation rules apply
    method: str  # "analytic" (closed form) or "trace" (the step run on the meta device)
    params: int  # trainable parameters
    peak_bytes: int  # most bytes alive at any moment of the step; == sum(breakdown.values())
    breakdown: dict[str, int]  # bytes alive at the peak moment, by CATEGORIES
    peak_moment: str  # the part of the step the peak falls in, one of MOMENTS

    def as_dict(self) -> dict:
        return {
            **self.config.as_dict(),
            "device_type": self.device_type,
            "method": self.method,
            "params": self.params,
            "peak_bytes": self.peak_bytes,
            "breakdown": dict(self.breakdown),
            "peak_moment": self.peak_moment,
        }


def estimate(config: RunConfig, device_type: str = "cpu", method: str = "analytic", *,
             capability: tuple[int, int] | None = None) -> Estimate:
    """Peak memory of one step of config (after a warm-up round), as `measure` would report it.

    device_type says whose rules apply ("cuda" needs no GPU); capability is the GPU's compute
    capability, which sets the cuBLAS workspace (default: the visible GPU, else 9.0).
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a RunConfig, got {type(config).__name__}")
    check_choice("device_type", device_type, DEVICE_TYPES)
    check_choice("method", method, METHODS)
    if method == "trace":
        from mlp.trace import trace_estimate

        return trace_estimate(config, device_type, capability=capability)
    return analytic_estimate(config, device_type, capability=capability)


class _Ledger:
    """Live bytes by category along the step, and their composition at the first peak."""

    def __init__(self):
        self.live = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.peak_total = None  # None until the first event (a block starts from nothing)
        self.peak_live = dict(self.live)
        self.peak_moment = "start"
        self.moment = "start"

    def alloc(self, category: str, nbytes: int) -> None:
        self.live[category] += nbytes
        self.total += nbytes
        if self.peak_total is None or self.total > self.peak_total:
            self.peak_total = self.total
            self.peak_live = dict(self.live)
            self.peak_moment = self.moment

    def free(self, category: str, nbytes: int) -> None:
        self.live[category] -= nbytes
        self.total -= nbytes

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now, as measure_peak does after prepare()."""
        self.peak_total = self.total
        self.peak_live = dict(self.live)
        self.peak_moment = self.moment

    def repeat(self, count: int, block) -> None:
        """Apply block(ledger) count times, in O(1): live bytes change by the same amount each
        time, so the highest point is in the first repetition if that amount is not positive
        and in the last one if it is."""
        if count <= 0:
            return
        once = _Ledger()
        once.moment = self.moment
        block(once)
        if once.peak_total is not None:
            before = 0 if once.total <= 0 else count - 1
            candidate = self.total + before * once.total + once.peak_total
            if self.peak_total is None or candidate > self.peak_total:
                self.peak_total = candidate
                self.peak_live = {
                    k: self.live[k] + before * once.live[k] + once.peak_live[k]
                    for k in CATEGORIES
                }
                self.peak_moment = once.peak_moment
        for k in CATEGORIES:
            self.live[k] += count * once.live[k]
        self.total += count * once.total
        self.moment = once.moment


def analytic_estimate(config: RunConfig, device_type: str = "cpu", *,
                      capability: tuple[int, int] | None = None) -> Estimate:
    """The closed-form estimate: the step's allocations and frees replayed as arithmetic."""
    check_choice("device_type", device_type, DEVICE_TYPES)
    model = _StepModel(config, device_type, capability)
    ledger = model.run()
    return Estimate(
        config=config,
        device_type=device_type,
        method="analytic",
        params=count_params(config.input_dim, config.width, config.output_dim, config.depth),
        peak_bytes=ledger.peak_total,
        breakdown=dict(ledger.peak_live),
        peak_moment=ledger.peak_moment,
    )


class _StepModel:
    """The allocation order of one steady-state step of an MLP, as read off the tracker.

    Notation in the comments: z_i is layer i's linear output, h_i its activation output,
    g_* a gradient; every size below is (rows, columns) of elements. In grad mode addmm saves
    its input h_{i-1}; relu and tanh save their output h_i, gelu its input z_i, sigmoid its
    output y, and the loss saves its input.
    """

    def __init__(self, config: RunConfig, device_type: str, capability):
        self.c = config
        self.device_type = device_type
        self.capability = capability
        self.dims = layer_dims(config.input_dim, config.width, config.output_dim, config.depth)
        self.gelu = config.activation == "gelu"  # gelu saves z_i, relu and tanh save h_i

    def nbytes(self, rows: int, cols: int = 1) -> int:
        return allocation_bytes(rows * cols * self.c.element_bytes, self.device_type)

    # The steady state before the step: what measure_peak counts as start_bytes.
    def hold_state(self, ledger: _Ledger) -> None:
        c = self.c
        param_bytes = sum(self.nbytes(fo, fi) + self.nbytes(fo) for fi, fo in self.dims)
        ledger.alloc("parameters", param_bytes)
        ledger.alloc("activations", self.nbytes(c.batch_size, c.input_dim))  # inputs
        ledger.alloc("activations", self.nbytes(c.batch_size, c.output_dim))  # targets
        if c.phase in ("backward", "forward-backward"):
            # Those phases never zero the grads: the warm-up's stay and backward adds into them.
            ledger.alloc("gradients", param_bytes)
        if c.optimizer == "momentum":
            ledger.alloc("optimizer_state", param_bytes)  # momentum_buffer
        elif c.optimizer in ("adam", "adamw"):
            counters = 2 * len(self.dims) * adam_step_counter_bytes(self.device_type)
            ledger.alloc("optimizer_state", 2 * param_bytes + counters)  # exp_avg, exp_avg_sq
        overhead = device_overhead_bytes(c, self.device_type, self.capability)
        if overhead:
            ledger.alloc("device_overhead", overhead)

    def run(self) -> _Ledger:
        ledger = _Ledger()
        self.hold_state(ledger)
        ledger.reset_peak()
        phase = self.c.phase
        if phase == "forward":
            ledger.moment = "forward"
            self.forward_inference(ledger)
            return ledger
        if phase == "backward":
            # prepare() runs the forward untimed; measure_peak resets the peak after it.
            self.forward_loss(ledger)
            ledger.moment = "backward"
            ledger.reset_peak()
            self.backward(ledger)
            return ledger
        self.forward_loss(ledger)
        self.backward(ledger)
        if phase == "train-step":
            ledger.moment = "optimizer-step"
            self.optimizer_step(ledger)
            # zero_grad(set_to_none=True) then frees every gradient; nothing is allocated.
        return ledger

    # Forward under torch.inference_mode: nothing is saved, each h_{i-1} dies once h_i exists.
    def forward_inference(self, ledger: _Ledger) -> None:
        b = self.c.batch_size
        *inner, (_, out_dim) = self.dims
        previous = 0  # bytes of h_{i-1}; the input batch belongs to the state

        def layer(led, fan_out, previous_bytes):
            led.alloc("transient", self.nbytes(b, fan_out))  # z_i = linear(h_{i-1})
            led.alloc("transient", self.nbytes(b, fan_out))  # h_i = act(z_i)
            led.free("transient", self.nbytes(b, fan_out))  # z_i
            led.free("transient", previous_bytes)  # h_{i-1}, rebound to h_i

        if inner:
            layer(ledger, inner[0][1], 0)
            previous = self.nbytes(b, self.c.width)
            ledger.repeat(len(inner) - 1, lambda led: layer(led, self.c.width, previous))
        ledger.alloc("transient", self.nbytes(b, out_dim))  # z_L
        if self.c.output_activation == "sigmoid":
            ledger.alloc("transient", self.nbytes(b, out_dim))  # y = sigmoid(z_L)
            ledger.free("transient", self.nbytes(b, out_dim))  # z_L
        ledger.free("transient", previous)  # h_{L-1}, when forward() returns
        ledger.free("transient", self.nbytes(b, out_dim))  # y, dropped by the step

    # Forward in grad mode, then the loss: what autograd saves stays alive for backward.
    def forward_loss(self, ledger: _Ledger) -> None:
        c, b = self.c, self.c.batch_size
        ledger.moment = "forward"
        *inner, (_, out_dim) = self.dims
        z_category = "activations" if self.gelu else "transient"

        def layer(led, fan_out):
            led.alloc(z_category, self.nbytes(b, fan_out))  # z_i (b, fan_out)
            led.alloc("activations", self.nbytes(b, fan_out))  # h_i, saved by addmm_{i+1}
            if not self.gelu:
                led.free("transient", self.nbytes(b, fan_out))  # z_i, nobody saved it

        if inner:
            layer(ledger, inner[0][1])
            ledger.repeat(len(inner) - 1, lambda led: layer(led, c.width))
        if c.output_activation == "sigmoid":
            ledger.alloc("transient", self.nbytes(b, out_dim))  # z_L
            ledger.alloc("activations", self.nbytes(b, out_dim))  # y, saved by sigmoid, BCE
            ledger.free("transient", self.nbytes(b, out_dim))  # z_L
        else:
            ledger.alloc("activations", self.nbytes(b, out_dim))  # z_L, saved by mse_loss

        ledger.moment = "loss"
        scratch = loss_scratch_bytes(c, self.device_type)
        value_bytes, extra_bytes = self.loss_bytes()
        ledger.alloc("transient", value_bytes)
        ledger.alloc("device_overhead", extra_bytes + scratch)
        ledger.free("device_overhead", scratch)

    def loss_bytes(self) -> tuple[int, int]:
        """(the scalar's own bytes, the rest of the loss storage) on this device."""
        storage = self.nbytes(loss_storage_elements(self.c))
        value = min(storage, self.nbytes(1))
        return value, storage - value

    # Backward: the engine runs one node at a time and then frees its inputs and whatever it
    # alone had saved; each weight/bias gradient goes through AccumulateGrad before the next
    # node. With grads from an earlier round it is added in place and freed; without (the
    # train step) the new tensor becomes .grad.
    def backward(self, ledger: _Ledger) -> None:
        c, b = self.c, self.c.batch_size
        ledger.moment = "backward"
        out_dim = c.output_dim
        grads_kept = c.phase != "train-step"
        grad_category = "transient" if grads_kept else "gradients"
        # The node that runs last frees a saved h_{i-1}: relu/tanh's, or addmm's under gelu.
        h_freed_by_act = not self.gelu

        ledger.alloc("transient", self.nbytes(1))  # the root gradient, ones_like(loss)
        if c.output_activation == "sigmoid":
            ledger.alloc("transient", self.nbytes(b, out_dim))  # g_y
            ledger.alloc("transient", self.nbytes(b, out_dim))  # g_zL = sigmoid_backward
            ledger.free("transient", self.nbytes(b, out_dim))  # g_y
            ledger.free("activations", self.nbytes(b, out_dim))  # y
        else:
            ledger.alloc("transient", self.nbytes(b, out_dim))  # g_zL = mse_loss_backward
            ledger.free("activations", self.nbytes(b, out_dim))  # z_L

        def addmm_node(led, fan_in, fan_out, first_layer):
            if not first_layer:
                led.alloc("transient", self.nbytes(b, fan_in))  # g_h_{i-1} = g_z @ W
            led.alloc(grad_category, self.nbytes(fan_out, fan_in))  # g_W
            led.alloc(grad_category, self.nbytes(fan_out))  # g_b = g_z.sum(0)
            led.free("transient", self.nbytes(b, fan_out))  # g_z_i, the node's input
            if not first_layer and not h_freed_by_act:
                led.free("activations", self.nbytes(b, fan_in))  # h_{i-1}, saved by addmm
            if grads_kept:
                led.free("transient", self.nbytes(fan_out))  # g_b, once added into .grad
                led.free("transient", self.nbytes(fan_out, fan_in))  # g_W, likewise

        def act_node(led, width):
            led.alloc("transient", self.nbytes(b, width))  # g_z_i = act_backward(g_h_i)
            led.free("transient", self.nbytes(b, width))  # g_h_i
            led.free("activations", self.nbytes(b, width))  # h_i (relu, tanh) or z_i (gelu)

        depth = c.depth
        fan_in_out, fan_out_out = self.dims[-1]
        addmm_node(ledger, fan_in_out, fan_out_out, first_layer=depth == 1)
        if depth > 1:

            def hidden(led):
                act_node(led, c.width)
                addmm_node(led, c.width, c.width, first_layer=False)

            ledger.repeat(depth - 2, hidden)
            act_node(ledger, c.width)
            addmm_node(ledger, c.input_dim, c.width, first_layer=True)

        value_bytes, extra_bytes = self.loss_bytes()
        ledger.free("transient", self.nbytes(1))  # the root gradient
        ledger.free("transient", value_bytes)  # the loss, once backward() returns
        ledger.free("device_overhead", extra_bytes)

    # optimizer.step(): on the CPU PyTorch runs one parameter at a time (the for-loop
    # implementation); on CUDA its default is foreach, one kernel over the list of all.
    def optimizer_step(self, ledger: _Ledger) -> None:
        if self.c.optimizer not in ("adam", "adamw"):
            return  # SGD and momentum update param and buffer in place: nothing allocated
        sizes = []  # bytes of each parameter, in model.parameters() order
        for fan_in, fan_out in self.dims:
            sizes += [self.nbytes(fan_out, fan_in), self.nbytes(fan_out)]
        if self.device_type == "cuda":
            # _multi_tensor_adam: exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs), then
            # div_, add_ and addcdiv_ in place; the whole list is alive at once.
            total = sum(sizes)
            ledger.alloc("transient", total)
            ledger.free("transient", total)
            return

        # _single_tensor_adam: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        # makes two tensors of the parameter's size and frees the first; the previous
        # parameter's denom dies only when the name is rebound, after the new one exists.
        def param(led, size, previous_size):
            led.alloc("transient", size)  # exp_avg_sq.sqrt()
            led.alloc("transient", size)  # ... / bias_correction2_sqrt, the new denom
            led.free("transient", size)  # the sqrt
            led.free("transient", previous_size)  # the previous parameter's denom

        def hidden(led):
            param(led, sizes[2], sizes[1])  # weight (width, width) after a (width,) bias
            param(led, sizes[3], sizes[2])  # bias (width,)

        depth = self.c.depth
        if depth > 1:
            param(ledger, sizes[0], 0)
            param(ledger, sizes[1], sizes[0])
            ledger.repeat(depth - 2, hidden)
            param(ledger, sizes[-2], sizes[1])
        else:
            param(ledger, sizes[-2], 0)
        param(ledger, sizes[-1], sizes[-2])
        ledger.free("transient", sizes[-1])  # the last denom, as step() returns
