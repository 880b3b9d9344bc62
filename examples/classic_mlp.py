"""The classic MLP(3, 32, 1), from building it to the batch size to train it with.

    python examples/classic_mlp.py [--gpu t4] [--plot memory_curve.png]

Four steps, each printed as it runs (a few seconds on a laptop CPU):
  1. build the model and count its parameters, by formula and by PyTorch;
  2. measure the peak memory of one Adam training step on the CPU at growing batch sizes,
     beside the analytic estimate of the same step;
  3. carry the estimate on to where the model would fill a GPU;
  4. ask for the batch-size advice on that GPU.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mlp.advise import advise
from mlp.config import RunConfig
from mlp.estimate import estimate
from mlp.fit import max_batch_size
from mlp.gpus import GPUS, resolve_budget
from mlp.memory import measure_peak
from mlp.model import MLP, count_params
from mlp.phases import build_workload
from mlp.units import format_bytes

# Three inputs, a hidden width of 32 and one output: three linear layers, 3 -> 32 -> 32 -> 1.
CLASSIC = RunConfig(input_dim=3, width=32, output_dim=1, depth=3, batch_size=1,
                    phase="train-step", optimizer="adam")
# Measured on the CPU: each quadruples the one before, and the largest still takes
# milliseconds, since a sample holds only 3 + 32 + 32 + 1 activations.
MEASURED_BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="t4", choices=tuple(GPUS),
                        help="the GPU to advise for (default t4)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw the memory curve into this PNG file")
    args = parser.parse_args(argv)
    config = CLASSIC

    # 1. build it and count its parameters
    print("1. The model")
    model = MLP(config.input_dim, config.width, config.output_dim, depth=config.depth)
    print(model)
    by_formula = count_params(config.input_dim, config.width, config.output_dim, config.depth)
    by_torch = sum(p.numel() for p in model.parameters())
    print(f"   parameters: {by_formula:,} by formula, {by_torch:,} counted by PyTorch "
          f"({by_torch * config.element_bytes:,} bytes in {config.dtype})")

    # 2. measure its memory curve and set the estimate beside it
    print("\n2. Peak memory of one train-step with Adam, CPU, measured and estimated")
    print(f"   {'batch':>7} {'measured':>12} {'estimated':>12} {'error':>7}")
    curve = []
    for batch_size in MEASURED_BATCH_SIZES:
        run = config.replace(batch_size=batch_size)
        workload = build_workload(run, torch.device("cpu"))
        workload.run_round()  # warm-up: Adam creates its state on the first step
        measured_bytes = measure_peak(workload).peak_bytes
        estimated_bytes = estimate(run, "cpu", "analytic").peak_bytes
        curve.append((batch_size, measured_bytes, estimated_bytes))
        error = estimated_bytes / measured_bytes - 1
        print(f"   {batch_size:>7,} {format_bytes(measured_bytes):>12} "
              f"{format_bytes(estimated_bytes):>12} {error:>+7.1%}")
    per_sample = (curve[-1][1] - curve[-2][1]) / (curve[-1][0] - curve[-2][0])
    print(f"   each extra sample costs about {per_sample:.0f} bytes: the activations it keeps "
          "for the backward pass")

    # 3. where it would stop fitting on a GPU
    budget = resolve_budget(gpu=args.gpu)
    fit = max_batch_size(config, budget.budget_bytes, device_type="cuda")
    on_gpu = estimate(config, "cuda", "analytic")
    print(f"\n3. On the {GPUS[args.gpu].label}: budget {budget.describe()}")
    print(f"   batch 1 needs {format_bytes(on_gpu.peak_bytes)} there, "
          f"{format_bytes(on_gpu.breakdown['device_overhead'])} of it the GPU's own overhead "
          "(cuBLAS workspace), so the curve starts higher than on the CPU")
    print(f"   largest batch that fits: {fit.max_batch_size:,} "
          f"(estimated peak {format_bytes(fit.peak_bytes)})")

    # 4. the advice
    advice = advise(config, budget)
    print("\n4. Advice")
    print(f"   recommended batch size: {advice.recommended_batch_size:,}")
    print(f"   why: {advice.reason}")

    if args.plot:
        _plot(curve, config, fit, budget, args.plot)
        print(f"\nmemory curve drawn in {args.plot}")
    return 0


def _plot(curve, config, fit, budget, path) -> None:
    from matplotlib.figure import Figure

    from mlp.plots import batch_axis, bytes_axis

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    batches = [b for b, _, _ in curve]
    ax.plot(batches, [m for _, m, _ in curve], "o", label="measured on the CPU")
    ax.plot(batches, [e for _, _, e in curve], "-", lw=1, label="estimate, CPU rules")
    # On to the GPU: the estimate under CUDA's rules, doubling until past the budget.
    further = [2**k for k in range(0, 40) if 2**k <= 2 * fit.max_batch_size]
    ax.plot(further, [estimate(config.replace(batch_size=b), "cuda").peak_bytes
                      for b in further], "--", lw=1, label="estimate, CUDA rules")
    ax.axhline(budget.budget_bytes, color="black", ls=":",
               label=f"{budget.source} budget ({budget.budget_bytes / 2**30:.1f} GiB)")
    batch_axis(ax)
    bytes_axis(ax)
    ax.set_xlabel("batch size (samples per step)")
    ax.set_ylabel("peak memory of one train-step")
    ax.set_title(f"MLP(3, 32, 1) with Adam: fits up to batch {fit.max_batch_size:,} "
                 f"on a {budget.source}", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
