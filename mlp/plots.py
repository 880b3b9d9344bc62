"""The report's five pictures, each drawn from the results table into a PNG.

Figures are made with matplotlib's object API (Figure, not pyplot), so nothing needs a
display and no global figure state is kept between calls. Each plot_* function saves its PNG
and returns the Figure, whose texts and lines a test can read back. Memory axes are logarithmic in
base 2 with ticks in KiB/MiB/GiB, batch-size axes in base 2, since sweeps double both.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from mlp.config import MAX_BATCH_SIZE
from mlp.estimate import estimate
from mlp.fit import frontier
from mlp.gpus import lookup_gpu, resolve_budget
from mlp.results import (
    KNEE_TOLERANCE,
    config_of,
    device_type_of,
    rows_of_setting,
    setting_label,
    settings,
    throughput_knee,
)

log = logging.getLogger(__name__)

# Settings (phase, dtype, ...) drawn in plots 1 and 3, a row of panels each: more rows than
# two stop reading at a glance; the report's tables hold every setting.
MAX_SETTINGS = 2
# GPUs drawn side by side in the frontier plot.
MAX_FRONTIER_GPUS = 4
# Models in the breakdown plot: the smallest, the largest, and evenly between.
MAX_BREAKDOWN_MODELS = 5
# The estimate is drawn past the measured batch sizes, doubling, until it passes the largest
# chosen GPU; 2**26 samples bounds it for models so small that no GPU ever fills.
MAX_EXTRAPOLATED_BATCH = 2**26
DPI = 110

BREAKDOWN_PARTS = {
    # estimate's breakdown key(s): (legend label, colour)
    ("parameters",): ("parameters", "#4c72b0"),
    ("gradients",): ("gradients", "#55a868"),
    ("optimizer_state",): ("optimizer state", "#c44e52"),
    ("activations",): ("activations (and batch)", "#dd8452"),
    ("transient",): ("temporaries", "#8172b3"),
    ("device_overhead",): ("device overhead (cuBLAS workspace, loss buffer)", "#8c8c8c"),
}


def plot_memory_scaling(table: pd.DataFrame, gpus: list[str], path: Path) -> Figure:
    """Peak memory against batch size: a panel per depth, a line per width.

    Measured points are joined by solid lines; the analytic estimate (dashed) runs through
    and past them, up to where the largest chosen GPU is full; the GPUs' capacities are
    horizontal lines.
    """
    measured = _measured(table)
    shown = settings(measured)[:MAX_SETTINGS]
    depths = sorted(measured["depth"].unique())
    widths = sorted(measured["width"].unique())
    colours = _width_colours(widths)
    specs = [lookup_gpu(name) for name in gpus]
    top_bytes = max((s.memory_bytes for s in specs), default=int(measured["peak_bytes"].max()))

    fig, axes = _grid(len(shown), len(depths), sharey=True)
    for row, setting in enumerate(shown):
        rows = rows_of_setting(measured, setting)
        rules = device_type_of(setting["device"])
        for col, depth in enumerate(depths):
            ax = axes[row][col]
            for width in widths:
                points = rows[(rows["depth"] == depth) & (rows["width"] == width)]
                if points.empty:
                    continue
                points = _median_per_batch(points, "peak_bytes")
                ax.plot(points.index, points.values, "o-", color=colours[width], ms=4, lw=1.2)
                config = config_of(rows[(rows["depth"] == depth)
                                        & (rows["width"] == width)].iloc[0])
                batches, est_bytes = _estimate_curve(config, rules, points.index, top_bytes)
                ax.plot(batches, est_bytes, "--", color=colours[width], lw=1, alpha=0.8)
            for spec, style in zip(specs, _GPU_STYLES, strict=False):
                ax.axhline(spec.memory_bytes, color="black", lw=1, ls=style, alpha=0.7)
            ax.set_title(f"depth {depth} — {setting_label(setting)}", fontsize=9)
            batch_axis(ax)
            if row == len(shown) - 1:
                ax.set_xlabel("batch size (samples per step)")
            if col == 0:
                ax.set_ylabel("peak memory")
    for ax in fig.axes:
        bytes_axis(ax)

    handles = [Line2D([], [], color=colours[w], lw=2, label=f"width {w}") for w in widths]
    handles += [
        Line2D([], [], color="gray", marker="o", ls="-", label="measured"),
        Line2D([], [], color="gray", ls="--", label=f"estimate ({_estimate_rules(shown)})"),
    ]
    handles += [
        Line2D([], [], color="black", ls=style, label=f"{spec.label} ({_gib(spec.memory_bytes)})")
        for spec, style in zip(specs, _GPU_STYLES, strict=False)
    ]
    _finish(fig, "Peak memory of one step against batch size", handles, path)
    return fig


def plot_fit_frontier(
    table: pd.DataFrame, gpus: list[str], path: Path, margin: float | None = None
) -> Figure:
    """Heatmaps of depth x width: the largest batch whose estimated peak fits each GPU."""
    measured = _measured(table)
    setting = settings(measured)[0]
    base = config_of(rows_of_setting(measured, setting).iloc[0])
    depths = sorted(int(d) for d in measured["depth"].unique())
    widths = sorted(int(w) for w in measured["width"].unique())
    names = list(gpus)[:MAX_FRONTIER_GPUS]

    fig, axes = _grid(1, len(names), size=(max(3.2, 0.9 * len(widths) + 1.6),
                                           max(2.6, 0.55 * len(depths) + 1.6)))
    for ax, name in zip(axes[0], names, strict=True):
        budget = resolve_budget(gpu=name, margin=margin)
        spec = lookup_gpu(name)
        grid = frontier(depths, widths, base, budget.budget_bytes, device_type="cuda")
        batch = grid.pivot(index="depth", columns="width", values="max_batch_size")
        batch = batch.reindex(index=depths, columns=widths)
        values = batch.to_numpy(dtype=float)
        shade = np.log2(np.where(values > 0, values, np.nan))
        ax.imshow(np.ma.masked_invalid(shade), cmap="viridis", aspect="auto", origin="lower")
        ax.set_facecolor("#d9d9d9")  # cells where not even batch 1 fits
        finite = shade[np.isfinite(shade)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(len(depths)):
            for j in range(len(widths)):
                n = int(values[i, j])
                dark = n > 0 and shade[i, j] < middle
                ax.text(j, i, _cell_count(n) if n > 0 else "none", ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(widths)), [str(w) for w in widths])
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("width (units per hidden layer)")
        ax.set_ylabel("depth (linear layers)")
        ax.set_title(f"{spec.label}\nbudget {_gib(budget.budget_bytes)} "
                     f"({budget.margin:.0%} held back)", fontsize=9)
    _finish(fig, "Largest batch that fits (estimate under CUDA rules) — "
                 f"{setting_label(setting, device=False)}", [], path)
    return fig


def plot_latency_throughput(table: pd.DataFrame, path: Path) -> Figure:
    """Step time and samples/s against batch size; a star where throughput stops growing."""
    measured = _measured(table).dropna(subset=["median_ms"])
    shown = settings(measured)[:MAX_SETTINGS]
    depths = sorted(measured["depth"].unique())
    widths = sorted(measured["width"].unique())
    colours = _width_colours(widths)

    fig, axes = _grid(2 * len(shown), len(depths), sharey="row", size=(4.2, 2.9))
    any_flagged = False
    for s, setting in enumerate(shown):
        rows = rows_of_setting(measured, setting)
        for col, depth in enumerate(depths):
            latency_ax, throughput_ax = axes[2 * s][col], axes[2 * s + 1][col]
            for width in widths:
                points = rows[(rows["depth"] == depth) & (rows["width"] == width)]
                if points.empty:
                    continue
                per_batch = points.groupby("batch_size").agg(
                    median_ms=("median_ms", "median"),
                    samples_per_s=("samples_per_s", "median"),
                    timing_ok=("timing_ok", "all"),
                )
                colour = colours[width]
                for ax, column in ((latency_ax, "median_ms"), (throughput_ax, "samples_per_s")):
                    ax.plot(per_batch.index, per_batch[column], "-", color=colour, lw=1.2)
                    clean = per_batch[per_batch["timing_ok"].astype(bool)]
                    flagged = per_batch[~per_batch["timing_ok"].astype(bool)]
                    ax.plot(clean.index, clean[column], "o", color=colour, ms=4)
                    ax.plot(flagged.index, flagged[column], "o", mfc="none", mec=colour, ms=6)
                    any_flagged |= not flagged.empty
                knee = throughput_knee(per_batch.index, per_batch["samples_per_s"])
                if knee is not None:
                    throughput_ax.plot([knee], [per_batch.loc[knee, "samples_per_s"]], "*",
                                       color=colour, mec="black", ms=13, zorder=5)
            latency_ax.set_title(f"depth {depth} — {setting_label(setting)}", fontsize=9)
            for ax in (latency_ax, throughput_ax):
                ax.set_yscale("log")
                batch_axis(ax, ticks=sorted(int(b) for b in measured["batch_size"].unique()))
                ax.grid(True, which="major", alpha=0.3)
            throughput_ax.set_xlabel("batch size (samples per step)")
            if col == 0:
                latency_ax.set_ylabel("step time, median (ms)")
                throughput_ax.set_ylabel("throughput (samples/s)")

    handles = [Line2D([], [], color=colours[w], lw=2, label=f"width {w}") for w in widths]
    handles.append(Line2D([], [], marker="*", color="gray", mec="black", ms=12, ls="",
                          label=f"throughput stops growing (within {KNEE_TOLERANCE:.0%} of best)"))
    if any_flagged:
        handles.append(Line2D([], [], marker="o", mfc="none", mec="gray", ls="", ms=7,
                              label="timing flagged untrustworthy"))
    _finish(fig, "Step time and throughput against batch size", handles, path)
    return fig


def plot_memory_breakdown(table: pd.DataFrame, path: Path, device_type: str = "cuda") -> Figure:
    """Where the peak goes for a few models at one batch size, as shares of the estimate."""
    measured = _measured(table)
    setting = settings(measured)[0]
    rows = rows_of_setting(measured, setting)
    batch_size = int(rows["batch_size"].max())
    models = (rows.drop_duplicates(["depth", "width"]).sort_values(["params", "depth"])
              .reset_index(drop=True))
    picks = sorted(set(np.linspace(0, len(models) - 1, MAX_BREAKDOWN_MODELS).round().astype(int)))
    models = models.iloc[picks]

    fig, axes = _grid(1, 1, size=(8.5, 0.55 * len(models) + 1.9))
    ax = axes[0][0]
    labels, totals = [], []
    for y, (_, row) in enumerate(models.iterrows()):
        config = config_of(row).replace(batch_size=batch_size)
        result = estimate(config, device_type, "analytic")
        left = 0.0
        for keys, (_, colour) in BREAKDOWN_PARTS.items():
            part_bytes = sum(result.breakdown.get(k, 0) for k in keys)
            share = part_bytes / result.peak_bytes if result.peak_bytes else 0.0
            ax.barh(y, share, left=left, color=colour, height=0.6)
            if share >= 0.07:
                ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center",
                        fontsize=8, color="white")
            left += share
        labels.append(f"depth {row['depth']}, width {row['width']}")
        totals.append((result.peak_bytes, result.peak_moment))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # smallest model on top
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_xlabel("share of the estimated peak")
    # The moment tells why a part can be missing: a train-step's peak early in backward has
    # almost no gradients yet (zero_grad(set_to_none=True) freed them after the last step).
    for y, (total, moment) in enumerate(totals):
        ax.text(1.01, y, f"{_bytes(total)}\nat {moment}", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    handles = [Patch(color=colour, label=label) for label, colour in BREAKDOWN_PARTS.values()]
    rules = "CUDA" if device_type == "cuda" else "CPU"
    _finish(fig, f"Memory at the peak, batch {batch_size} — "
                 f"{setting_label(setting, device=False)} (estimate under {rules} rules)",
            handles, path)
    return fig


def plot_estimate_vs_measured(table: pd.DataFrame, path: Path) -> Figure:
    """Each measured peak against its estimate, on the y = x line, a colour per phase."""
    measured = _measured(table)
    estimated = estimated_peaks(measured)
    fig, axes = _grid(1, 1, size=(6.0, 5.2))
    ax = axes[0][0]
    phases = [p for p in ("forward", "backward", "forward-backward", "train-step")
              if p in set(measured["phase"])]
    palette = dict(zip(phases, ("#4c72b0", "#55a868", "#c44e52", "#dd8452"), strict=False))
    for phase in phases:
        mask = (measured["phase"] == phase).to_numpy()
        ax.scatter(estimated[mask], measured["peak_bytes"].to_numpy(dtype=float)[mask], s=18,
                   color=palette[phase], label=phase, alpha=0.8, edgecolor="none")
    low = min(estimated.min(), float(measured["peak_bytes"].min())) / 1.5
    high = max(estimated.max(), float(measured["peak_bytes"].max())) * 1.5
    line = np.array([low, high])
    ax.plot(line, line, color="black", lw=1, label="y = x (estimate exact)")
    ax.fill_between(line, line / 1.1, line * 1.1, color="gray", alpha=0.15,
                    label="within 10%")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    bytes_axis(ax, "x")
    bytes_axis(ax, "y")
    ax.set_xlabel("estimated peak memory (analytic)")
    ax.set_ylabel("measured peak memory")
    ax.set_aspect("equal")
    error = np.abs(estimated / measured["peak_bytes"].to_numpy(dtype=float) - 1)
    ax.legend(loc="upper left", fontsize=8)
    devices = ", ".join(sorted(set(measured["device"])))
    _finish(fig, f"Estimated against measured peak ({len(measured)} runs on {devices})\n"
                 f"median error {np.median(error):.2%}, largest {error.max():.2%}", [], path)
    return fig


def estimated_peaks(measured: pd.DataFrame) -> np.ndarray:
    """The analytic estimate of each row's peak, under the rules of the device it ran on."""
    return np.array([
        estimate(config_of(row), device_type_of(row["device"]), "analytic").peak_bytes
        for _, row in measured.iterrows()
    ], dtype=float)


# -- helpers ----------------------------------------------------------------------------------

_GPU_STYLES = (":", "-.", (0, (5, 2)), (0, (1, 3)), (0, (3, 1, 1, 1)), "-")


def _measured(table: pd.DataFrame) -> pd.DataFrame:
    measured = table[table["status"] == "ok"].dropna(subset=["peak_bytes"])
    if measured.empty:
        raise ValueError("results: no measured benchmarks to plot (every configuration was "
                         "skipped or ran out of memory)")
    return measured


def _median_per_batch(points: pd.DataFrame, column: str) -> pd.Series:
    return points.groupby("batch_size")[column].median().astype(float).sort_index()


def _estimate_curve(config, rules: str, measured_batches, top_bytes: int):
    """Estimated peak at the measured batch sizes and doubling past them until top_bytes."""
    batches = sorted(int(b) for b in measured_batches)
    b = batches[-1]
    while b < min(MAX_EXTRAPOLATED_BATCH, MAX_BATCH_SIZE):
        b *= 2
        batches.append(b)
        if estimate(config.replace(batch_size=b), rules, "analytic").peak_bytes > top_bytes:
            break
    est = [estimate(config.replace(batch_size=n), rules, "analytic").peak_bytes for n in batches]
    return batches, est


def _estimate_rules(shown: list[dict]) -> str:
    types = sorted({device_type_of(s["device"]) for s in shown})
    return ", ".join("CUDA rules" if t == "cuda" else "CPU rules" for t in types)


def _width_colours(widths) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(widths) - 1, 1)
    return {w: cmap(0.85 * i / n) for i, w in enumerate(widths)}


def _grid(nrows: int, ncols: int, sharey=False, size=(4.2, 3.4)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _finish(fig: Figure, title: str, handles: list, path: Path) -> None:
    fig.suptitle(title, fontsize=11)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                   fontsize=8, frameon=False)
    fig.savefig(path)
    log.info("wrote %s", path)


def _power2_ticks(low: float, high: float, steps=(1, 2, 3, 5, 10), most: int = 8) -> list:
    lo, hi = math.floor(math.log2(max(low, 1))), math.ceil(math.log2(max(high, 1)))
    for step in steps:
        exps = [e for e in range(lo, hi + 1) if e % step == 0]
        if len(exps) <= most:
            return [2.0**e for e in exps]
    return [2.0**e for e in range(lo, hi + 1, 10)]


def batch_axis(ax, ticks=None) -> None:
    ax.set_xscale("log", base=2)
    if ticks is not None and len(ticks) <= 10:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _count(v)))


def bytes_axis(ax, which: str = "y") -> None:
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=2)
    low, high = (ax.get_ylim() if which == "y" else ax.get_xlim())
    axis.set_major_locator(FixedLocator(_power2_ticks(low, high, steps=(1, 2, 5, 10))))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _: _bytes(v)))
    ax.grid(True, which="major", axis=which, alpha=0.3)


def _count(n: float) -> str:
    """Batch sizes on a doubling axis: 512, 4096, 64Ki, 1Mi (binary prefixes from 2**14)."""
    n = int(round(n))
    if n < 2**14:
        return str(n)
    for unit, scale in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 100 or value.is_integer() \
                else f"{value:.1f}{unit}"
    return str(n)


def _cell_count(n: int) -> str:
    """A largest batch in a heatmap cell: exact up to 999,999, then 4.16M, 21.6M, 1.2G."""
    if n < 10**6:
        return f"{n:,}"
    for unit, scale in (("G", 10**9), ("M", 10**6)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _bytes(v: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= scale:
            value = v / scale
            return f"{value:.0f} {unit}" if value >= 10 or value.is_integer() \
                else f"{value:.1f} {unit}"
    return f"{v:.0f} B"


def _gib(size_bytes: int) -> str:
    return f"{size_bytes / 2**30:.1f} GiB"

