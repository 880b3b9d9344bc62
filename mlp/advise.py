"""Batch-size advice for one model on one GPU: what fits, what runs fastest, what to change.

The largest batch comes from the memory estimate (mlp.fit). Where throughput stops growing
comes from measured results when they hold the model, else from a rough time model of a
data-centre GPU below; the advice says which. When the model does not fit (or not at the
batch asked for), each change that would help is listed with the figure it would give.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from mlp.config import RunConfig
from mlp.estimate import estimate
from mlp.fit import FitResult, largest_fitting, max_batch_size
from mlp.gpus import Budget
from mlp.model import layer_dims
from mlp.results import KNEE_TOLERANCE, MODEL_FIELDS, knees, throughput_knee
from mlp.units import format_gib

log = logging.getLogger(__name__)

KNEE_SOURCES = ("measured", "estimate")
SUGGESTION_KINDS = ("dtype", "depth", "width", "accumulation", "sharding")

# A rough time model of one step on a data-centre GPU, used only to place the batch where
# throughput stops growing when nothing was measured. Figures are an A100's data sheet:
# 19.5 TFLOP/s in float32 (PyTorch keeps float32 matmuls off TF32 by default), 312 TFLOP/s
# dense in bfloat16/float16 on tensor cores, 2.0 TB/s of HBM; 5 us to launch and schedule a
# small kernel. A step costs, per kernel, the launch, plus the larger of its arithmetic time
# and its memory time (a roofline). Small batches are launch- or weight-read-bound, so
# doubling the batch nearly doubles throughput; once the matmuls are compute-bound, it stops.
# It ranks batch sizes; it does not predict milliseconds, and other GPUs shift the knee by
# their FLOP/s-to-bandwidth ratio (up to ~2x between an A100 and an H100).
REFERENCE_FLOP_PER_S = {"float32": 19.5e12, "bfloat16": 312e12, "float16": 312e12}
REFERENCE_BYTES_PER_S = 2.0e12
REFERENCE_LAUNCH_S = 5e-6
# Kernels per linear layer: forward runs the matmul and the activation; backward the two
# matmuls (input and weight gradients), the bias gradient's sum and the activation's backward.
FORWARD_KERNELS_PER_LAYER = 2
BACKWARD_KERNELS_PER_LAYER = 4
# Bytes each parameter moves in an optimizer step, in units of its element size: Adam reads
# the parameter, gradient and two moments and writes the parameter and both moments.
OPTIMIZER_TRAFFIC = {"sgd": 3, "momentum": 5, "adam": 7, "adamw": 7}
# Kernels of one optimizer step (the foreach implementations, the CUDA default).
OPTIMIZER_KERNELS = 10
# Fully sharded data parallel (ZeRO-3 / FSDP) past this many GPUs is not a practical answer.
MAX_SHARDS = 4096


@dataclass(frozen=True)
class Suggestion:
    """One change that would make the model fit, and the figure it would give."""

    kind: str  # one of SUGGESTION_KINDS
    change: str  # the change in words: "dtype bfloat16", "depth 6 (from 12)"
    max_batch_size: int | None  # largest batch per GPU after the change; None if not a batch
    reaches_target: bool  # True when the change fits the batch asked for (or batch 1)
    detail: str  # the figure in a sentence

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Advice:
    """The answer for one model on one memory budget."""

    config: RunConfig  # the model; batch_size is the batch asked for (1 when none was)
    budget: Budget
    fit: FitResult  # the largest batch that fits, and its estimated peak
    target_batch_size: int | None  # the batch asked for, if one was
    knee_batch_size: int | None  # where throughput stops growing (None when nothing fits)
    knee_source: str  # "measured" or "estimate"
    knee_note: str  # where the knee came from, in words
    recommended_batch_size: int  # 0 when nothing fits
    reason: str
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def max_batch_size(self) -> int:
        return self.fit.max_batch_size

    def as_dict(self) -> dict:
        config = self.config.as_dict()
        config.pop("batch_size")
        return {
            **config,
            "target_batch_size": self.target_batch_size,
            **self.budget.as_dict(),
            "max_batch_size": self.fit.max_batch_size,
            "peak_bytes": self.fit.peak_bytes,
            "fits": self.fit.max_batch_size > 0,
            "recommended_batch_size": self.recommended_batch_size,
            "knee_batch_size": self.knee_batch_size,
            "knee_source": self.knee_source,
            "reason": self.reason,
            "suggestions": [s.as_dict() for s in self.suggestions],
        }


def advise(
    config: RunConfig,
    budget: Budget,
    results: pd.DataFrame | None = None,
    target_batch_size: int | None = None,
) -> Advice:
    """Advice for config (its batch_size is ignored) within budget.

    results: a table from mlp.results.load_results, used for where throughput stops growing
    when it holds this model. target_batch_size: the batch the user wants; without one,
    changes are suggested only when not even batch 1 fits.
    """
    target = target_batch_size or 1
    config = config.replace(batch_size=target)
    fit = max_batch_size(config, budget.budget_bytes, device_type="cuda")
    on = f"{format_gib(budget.budget_bytes)} of {budget.source} ({budget.margin:.0%} held back)"

    # where throughput stops growing: measured when the results hold the model
    knee, source, note, still_growing = _measured_knee(config, results)
    if knee is None and fit.max_batch_size > 0:
        knee, source = estimated_knee(config, fit.max_batch_size), "estimate"
        note = ("estimated with a rough A100-class time model; "
                + (note if note else "no measured results were given"))

    # the recommendation, and why
    if fit.max_batch_size == 0:
        recommended = 0
        reason = (f"not even batch 1 fits: it needs {format_gib(fit.peak_bytes)} and the budget "
                  f"is {on}")
    elif still_growing and knee < fit.max_batch_size:
        recommended = knee
        reason = (f"fits up to batch {fit.max_batch_size:,} in {on}; throughput was still "
                  f"growing at batch {knee:,}, the largest measured ({note}), so that batch is "
                  "recommended until larger ones are timed")
    elif knee is not None and knee <= fit.max_batch_size:
        recommended = knee
        reason = (f"fits up to batch {fit.max_batch_size:,} in {on}; throughput stops growing "
                  f"at batch {knee:,} ({note}), so a larger batch buys under "
                  f"{KNEE_TOLERANCE:.0%} more samples/s for more memory")
    else:
        recommended = fit.max_batch_size
        reason = (f"fits up to batch {fit.max_batch_size:,} in {on}; throughput was still "
                  f"growing past that ({note}), so the largest batch that fits is recommended")
    if target_batch_size is not None and fit.max_batch_size >= target_batch_size:
        reason += f"; the batch asked for, {target_batch_size:,}, fits"
    elif target_batch_size is not None and fit.max_batch_size > 0:
        reason += f"; the batch asked for, {target_batch_size:,}, does not fit"

    suggestions = []
    if fit.max_batch_size < target:
        suggestions = suggest_changes(config, budget, fit)
    return Advice(
        config=config,
        budget=budget,
        fit=fit,
        target_batch_size=target_batch_size,
        knee_batch_size=knee,
        knee_source=source,
        knee_note=note,
        recommended_batch_size=recommended,
        reason=reason,
        suggestions=suggestions,
    )


def suggest_changes(config: RunConfig, budget: Budget, fit: FitResult) -> list[Suggestion]:
    """Changes that would fit config.batch_size (the target) within budget, with figures."""
    target = config.batch_size
    budget_bytes = budget.budget_bytes
    found: list[Suggestion] = []

    # half precision halves parameters, gradients, optimizer state and activations alike
    if config.dtype == "float32":
        half = max_batch_size(config.replace(dtype="bfloat16"), budget_bytes, "cuda")
        if half.max_batch_size > 0:
            detail = f"in bfloat16 it fits up to batch {half.max_batch_size:,}"
        else:
            detail = (f"in bfloat16 batch 1 still needs {format_gib(half.peak_bytes)}: not "
                      "enough alone")
        found.append(Suggestion("dtype", "dtype bfloat16 (from float32)", half.max_batch_size,
                                half.max_batch_size >= target, detail))

    # fewer layers, or narrower ones, at the target batch
    for vary, now in (("depth", config.depth), ("width", config.width)):
        if vary == "width" and config.depth < 2:
            continue
        largest = largest_fitting(config, budget_bytes, vary, "cuda", upper=now)
        if largest == 0:
            least = config.replace(**{vary: 1})
            found.append(Suggestion(
                vary, f"fewer {'layers' if vary == 'depth' else 'units'}", 0, False,
                f"no {vary} fits batch {target:,}: {vary} 1 still needs "
                f"{format_gib(estimate(least, 'cuda', 'analytic').peak_bytes)}",
            ))
        elif largest < now:
            smaller = config.replace(**{vary: largest})
            peak = estimate(smaller, "cuda", "analytic").peak_bytes
            more = max_batch_size(smaller, budget_bytes, "cuda").max_batch_size
            found.append(Suggestion(
                vary, f"{vary} {largest} (from {now})", more, True,
                f"at {vary} {largest} batch {target:,} needs {format_gib(peak)}; it fits up "
                f"to batch {more:,}",
            ))

    # the same samples per update in smaller pieces
    if 0 < fit.max_batch_size < target:
        steps = math.ceil(target / fit.max_batch_size)
        micro = math.ceil(target / steps)
        peak = estimate(config.replace(batch_size=micro), "cuda", "analytic").peak_bytes
        found.append(Suggestion(
            "accumulation", f"batch {micro:,} with {steps} gradient-accumulation steps", micro,
            True,
            f"{steps} steps of batch {micro:,} make {micro * steps:,} samples per update "
            f"and need {format_gib(peak)} each",
        ))

    # more GPUs
    sharding = _sharding_suggestion(config, budget_bytes, fit)
    if sharding is not None:
        found.append(sharding)
    return found


def estimated_knee(config: RunConfig, largest_batch_size: int) -> int | None:
    """Where throughput stops growing in the rough time model, among batches that fit."""
    batches = [2**k for k in range(32) if 2**k <= largest_batch_size]
    if largest_batch_size not in batches:
        batches.append(largest_batch_size)
    rates = [b / modelled_step_s(config.replace(batch_size=b)) for b in batches]
    return throughput_knee(batches, rates)


def modelled_step_s(config: RunConfig) -> float:
    """Seconds of one step in the reference GPU's roofline (see REFERENCE_*): rough."""
    flop_per_s = REFERENCE_FLOP_PER_S[config.dtype]
    e = config.element_bytes
    b = config.batch_size
    forward = config.phase in ("forward", "forward-backward", "train-step")
    backward = config.phase != "forward"

    def kernel_s(flops: float, moved_bytes: float) -> float:
        return REFERENCE_LAUNCH_S + max(flops / flop_per_s, moved_bytes / REFERENCE_BYTES_PER_S)

    step_s = 0.0
    for fan_in, fan_out in layer_dims(config.input_dim, config.width, config.output_dim,
                                      config.depth):
        # one matmul: 2*b*in*out FLOPs; reads the weight and its input, writes its output
        flops = 2.0 * b * fan_in * fan_out
        moved_bytes = e * (fan_in * fan_out + b * fan_in + b * fan_out)
        elementwise_s = REFERENCE_LAUNCH_S + 2 * e * b * fan_out / REFERENCE_BYTES_PER_S
        if forward:
            step_s += kernel_s(flops, moved_bytes)
            step_s += (FORWARD_KERNELS_PER_LAYER - 1) * elementwise_s
        if backward:
            step_s += 2 * kernel_s(flops, moved_bytes)  # input and weight gradients
            step_s += (BACKWARD_KERNELS_PER_LAYER - 2) * elementwise_s
    if config.phase == "train-step":
        params = sum((i + 1) * o for i, o in layer_dims(
            config.input_dim, config.width, config.output_dim, config.depth))
        step_s += OPTIMIZER_KERNELS * REFERENCE_LAUNCH_S
        step_s += OPTIMIZER_TRAFFIC[config.optimizer] * e * params / REFERENCE_BYTES_PER_S
    return step_s


# -- helpers ----------------------------------------------------------------------------------

def _measured_knee(config: RunConfig, results: pd.DataFrame | None):
    """(knee, "measured", note, still_growing) from results holding this model.

    (None, "estimate", why not, False) when they do not.
    """
    if results is None:
        return None, "estimate", "", False
    found = knees(results)
    mask = pd.Series(True, index=found.index)
    for name in MODEL_FIELDS:
        if name != "device":
            mask &= found[name] == getattr(config, name)
    found = found[mask & found["knee_batch_size"].notna()]
    if found.empty:
        return None, "estimate", "the results given do not hold this model", False
    # A GPU's figure is the better guide for a GPU, when both were measured.
    found = found.assign(on_gpu=found["device"] != "cpu").sort_values("on_gpu", ascending=False)
    row = found.iloc[0]
    flagged = "" if row["timing_ok"] else "; some of its timings are flagged untrustworthy"
    note = (f"measured on {row['device']} at {row['measured_batch_sizes']} batch sizes: the "
            f"smallest within {KNEE_TOLERANCE:.0%} of the best samples/s{flagged}")
    return int(row["knee_batch_size"]), "measured", note, bool(row["still_growing"])


def _sharding_suggestion(config: RunConfig, budget_bytes: int, fit: FitResult):
    target = config.batch_size
    if fit.max_batch_size > 0:
        # plain data parallel: each GPU holds the whole model and a share of the batch
        gpus = math.ceil(target / fit.max_batch_size)
        per_gpu = math.ceil(target / gpus)
        return Suggestion(
            "sharding", f"data parallel over {gpus} GPUs", per_gpu, True,
            f"{gpus} GPUs of {per_gpu:,} samples each make a batch of {per_gpu * gpus:,}",
        )
    # Fully sharded (ZeRO-3 / FSDP), idealised: each of n GPUs keeps 1/n of the parameters,
    # gradients and optimizer state and runs 1/n of the batch, so all of the peak divides by
    # n but the device's own overhead (cuBLAS workspace) and the one layer whose full
    # weights and gradient are gathered for the moment. Communication buffers and per-shard
    # rounding are left out: the figure is a lower bound on the GPUs needed.
    whole = estimate(config, "cuda", "analytic")
    overhead_bytes = whole.breakdown.get("device_overhead", 0)
    layer_bytes = max((i + 1) * o for i, o in layer_dims(
        config.input_dim, config.width, config.output_dim, config.depth)) * config.element_bytes
    room_bytes = budget_bytes - overhead_bytes - 2 * layer_bytes
    if room_bytes <= 0:
        return Suggestion(
            "sharding", "fully sharded (ZeRO-3/FSDP)", None, False,
            f"no number of GPUs helps: one layer's weights and gradient "
            f"({format_gib(2 * layer_bytes)}) alone leave no room; narrow the layers",
        )
    gpus = max(2, math.ceil((whole.peak_bytes - overhead_bytes) / room_bytes))
    per_gpu_bytes = (whole.peak_bytes - overhead_bytes) / gpus + overhead_bytes + 2 * layer_bytes
    return Suggestion(
        "sharding", f"fully sharded (ZeRO-3/FSDP) over {gpus} GPUs", None, gpus <= MAX_SHARDS,
        f"at least {gpus} GPUs, each holding about {format_gib(per_gpu_bytes)} (1/{gpus} of "
        f"the {format_gib(whole.peak_bytes)} peak, plus one gathered layer and the workspace); "
        "a lower bound, communication buffers left out",
    )

