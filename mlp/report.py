"""A report folder from benchmark results: the tidy CSV, five plots and report.md.

Everything is written into a temporary folder first and moved into place at the end, so a
failure part-way leaves nothing behind, and a report already there is replaced only when
asked to (force).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from mlp.fit import max_batch_size
from mlp.gpus import GPUS, resolve_budget
from mlp.results import (
    KNEE_TOLERANCE,
    MODEL_FIELDS,
    SETTING_FIELDS,
    config_of,
    knees,
    load_results,
    setting_label,
    settings,
    write_csv,
)
from mlp.units import format_bytes, format_gib

log = logging.getLogger(__name__)

# GPUs a report is drawn against when none are named (as mlpbench sweep's default): a small
# inference card and the two common 80 GB training cards.
DEFAULT_REPORT_GPUS = ("t4", "a100-80gb", "h100-80gb")

PLOT_FILES = {
    # file name: (what it shows, for the report's caption)
    "memory_scaling.png": "Peak memory against batch size, a panel per depth and a line per "
                          "width: measured points, the analytic estimate drawn past them "
                          "(dashed), and each chosen GPU's memory as a horizontal line.",
    "fit_frontier.png": "The largest batch that fits each chosen GPU, for every depth and "
                        "width of the sweep (estimate under CUDA's memory rules, margin held "
                        "back).",
    "latency_throughput.png": "Median step time and samples per second against batch size; "
                              f"the star marks where throughput stops growing (the smallest "
                              f"batch within {KNEE_TOLERANCE:.0%} of the best measured); hollow "
                              "points are timings flagged untrustworthy.",
    "memory_breakdown.png": "What the peak is made of for a few models at the largest batch "
                            "measured (estimate under CUDA's memory rules).",
    "estimate_vs_measured.png": "Each measured peak against the analytic estimate for the "
                                "device it ran on; points on the line are predicted exactly.",
}
CSV_FILE = "results.csv"
REPORT_FILE = "report.md"
# Written in this order; report.md last, so that a report.md is only ever there with
# everything it refers to.
OUTPUT_FILES = (CSV_FILE, *PLOT_FILES, REPORT_FILE)

_STATUS_WORDS = {
    "oom": "does not fit (out of memory)",
    "skipped-host-memory": "skipped (would not fit in host memory)",
    "error": "failed",
}
FLAG_MARK = "⚠"


def check_gpu_names(gpus: Iterable[str], option: str = "--gpus") -> list[str]:
    """The GPU names, lower-case, or a ValueError naming the option and the known names."""
    names = [str(g).strip().lower() for g in gpus]
    bad = [g for g in names if g not in GPUS]
    if not names or bad:
        got = ", ".join(bad) if bad else "nothing"
        raise ValueError(
            f"{option} must be a comma-separated list of {', '.join(GPUS)}; got {got}"
        )
    return list(dict.fromkeys(names))


def build_report(
    json_paths: list[Path],
    out_dir: Path,
    gpus: list[str],
    force: bool = False,
    margin: float | None = None,
) -> Path:
    """Read the results, write results.csv, the five plots and report.md into out_dir.

    out_dir may exist (a sweep's run folder holding the JSON), but if it already holds any
    of the report's files they are replaced only with force. Returns report.md's path.
    Bad input raises ValueError before anything is written.
    """
    from mlp import plots  # matplotlib: imported only when drawing

    out_dir = Path(out_dir)
    gpus = check_gpu_names(gpus)
    budgets = {name: resolve_budget(gpu=name, margin=margin) for name in gpus}
    _check_out_dir(out_dir, force)
    table = load_results(json_paths)
    if not (table["status"] == "ok").any():
        raise ValueError(f"{', '.join(map(str, json_paths))}: no configuration was measured "
                         "(all were skipped or out of memory); nothing to plot")

    staging = _staging_folder(out_dir)
    try:
        write_csv(table, staging / CSV_FILE)
        plots.plot_memory_scaling(table, gpus, staging / "memory_scaling.png")
        plots.plot_fit_frontier(table, gpus, staging / "fit_frontier.png", margin=margin)
        plots.plot_latency_throughput(table, staging / "latency_throughput.png")
        plots.plot_memory_breakdown(table, staging / "memory_breakdown.png", "cuda")
        plots.plot_estimate_vs_measured(table, staging / "estimate_vs_measured.png")
        text = render_report(table, budgets, [Path(p) for p in json_paths])
        (staging / REPORT_FILE).write_text(text, encoding="utf-8")
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("report written to %s", out_dir)
    return out_dir / REPORT_FILE


# -- report.md --------------------------------------------------------------------------------

def fit_table(table: pd.DataFrame, budgets: dict) -> pd.DataFrame:
    """Per model (all fields but batch size and device) and GPU: the largest batch that fits.

    Columns: the model fields, params, then per GPU name the max_batch_size (0 when batch 1
    does not fit) and GPU__peak_bytes (the estimate there, or at batch 1 when 0).
    """
    fields = [f for f in MODEL_FIELDS if f != "device"]
    models = table.drop_duplicates(fields).sort_values(
        ["phase", "dtype", "optimizer", "depth", "width"]
    )
    rows = []
    for _, row in models.iterrows():
        config = config_of(row).replace(batch_size=1)
        out = {f: row[f] for f in fields}
        out["params"] = int(row["params"])
        for name, budget in budgets.items():
            fit = max_batch_size(config, budget.budget_bytes, device_type="cuda")
            out[name] = fit.max_batch_size
            out[f"{name}__peak_bytes"] = fit.peak_bytes
        rows.append(out)
    return pd.DataFrame(rows)


def render_report(table: pd.DataFrame, budgets: dict, sources: list[Path]) -> str:
    """The text of report.md for the table, against budgets (GPU name -> mlp.gpus.Budget)."""
    measured = table[table["status"] == "ok"]
    fits = fit_table(table, budgets)
    margin = next(iter(budgets.values())).margin
    devices = sorted({f"{d} ({n})" for d, n in zip(table["device"], table["device_name"],
                                                     strict=True)})
    not_run = table[table["status"] != "ok"]
    lines = [
        "# mlpbench report",
        "",
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
        + ", ".join(f"`{p.name}`" for p in sources) + ".",
        f"{len(measured)} configurations measured on {', '.join(devices)}"
        + (f"; {len(not_run)} did not run (see the last table)." if len(not_run) else "."),
        "",
        "GPUs reported against (a fit holds back "
        f"{margin:.0%} of each GPU's memory for the CUDA context, fragmentation and other "
        "processes):",
        "",
    ]
    for name, budget in budgets.items():
        lines.append(f"- **{_label(name, budget)}** (`{name}`): {format_gib(budget.total_bytes)}, "
                     f"budget {format_gib(budget.budget_bytes)}")
    lines += [
        "",
        "Fits are predicted by the analytic estimate under CUDA's memory rules (the caching "
        "allocator's rounding, cuBLAS workspace), whatever device the measurements ran on; "
        "the estimate-against-measured plot below shows how far to trust it.",
        "",
        "## Where each model stops fitting",
        "",
        *_fit_markdown(fits, budgets, table),
        "",
        *_stop_sentences(fits, budgets),
        "",
        "## Plots",
        "",
    ]
    for name, caption in PLOT_FILES.items():
        lines += [f"![{name}]({name})", "", f"*{caption}*", ""]
    lines += [*_shown_settings(measured), ""]
    lines += [
        *_accuracy_lines(measured),
        "",
        "## Where throughput stops growing",
        "",
        f"The smallest batch whose samples/s is within {KNEE_TOLERANCE:.0%} of the best "
        "measured for the model; a larger batch buys little speed for more memory.",
        "",
        *_knee_markdown(table),
        "",
        "## Measurements",
        "",
        *_measurement_markdown(table),
        "",
    ]
    return "\n".join(lines)


def _shown_settings(measured: pd.DataFrame) -> list[str]:
    """Which settings the plots show, when the results hold more than they draw."""
    from mlp import plots  # matplotlib: imported only when drawing

    found = settings(measured)
    if len(found) <= 1:
        return []
    drawn = found[:plots.MAX_SETTINGS]
    rest = found[plots.MAX_SETTINGS:]
    shown = _join_words([setting_label(s) for s in drawn])
    text = (f"The memory-scaling and latency plots show {shown}; the frontier and breakdown "
            f"plots show {setting_label(found[0], device=False)}.")
    if rest:
        text += (" Not drawn, but in the tables: "
                 + _join_words([setting_label(s) for s in rest]) + ".")
    return [text]


def _fit_markdown(fits: pd.DataFrame, budgets: dict, table: pd.DataFrame) -> list[str]:
    header = ["setting", "depth", "width", "params"]
    header += [f"{_label(n, b)} ({format_gib(b.budget_bytes, 1)})" for n, b in budgets.items()]
    header += ["measured: largest run", "measured: out of memory at"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in fits.iterrows():
        mask = np.ones(len(table), dtype=bool)
        for f in MODEL_FIELDS:
            if f != "device":
                mask &= (table[f] == row[f]).to_numpy()
        rows = table[mask]
        ran = rows[rows["status"] == "ok"]
        oom = rows[rows["status"] == "oom"]
        cells = [setting_label(row, device=False), str(row["depth"]), str(row["width"]),
                 f"{row['params']:,}"]
        cells += [f"{row[n]:,}" if row[n] > 0 else "none (batch 1 too big)" for n in budgets]
        cells.append(_batch_on_device(ran, max) if not ran.empty else "—")
        cells.append(_batch_on_device(oom, min) if not oom.empty else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _stop_sentences(fits: pd.DataFrame, budgets: dict) -> list[str]:
    lines = []
    for _, row in fits.iterrows():
        parts = []
        said = False  # "stops fitting" is said once per sentence, then "at batch ..."
        for name, budget in budgets.items():
            label = _label(name, budget)
            n = int(row[name])
            if n == 0:
                parts.append(f"does not fit on the {label} at all (batch 1 needs "
                             f"{format_gib(row[f'{name}__peak_bytes'])} of "
                             f"{format_gib(budget.budget_bytes)})")
                said = False
            else:
                verb = "at" if said else "stops fitting at"
                parts.append(f"{verb} batch {n + 1:,} on the {label}")
                said = True
        model = f"Depth {row['depth']}, width {row['width']} ({setting_label(row, device=False)})"
        lines.append(f"- {model} " + _join_words(parts) + ".")
    return lines


def _accuracy_lines(measured: pd.DataFrame) -> list[str]:
    from mlp import plots  # matplotlib: imported only when drawing

    estimated = plots.estimated_peaks(measured)
    error = np.abs(estimated / measured["peak_bytes"].to_numpy(dtype=float) - 1)
    if error.max() == 0:
        return [f"The analytic estimate equals the measured peak, to the byte, in all "
                f"{len(measured)} runs."]
    worst = measured.iloc[int(np.argmax(error))]
    return [
        f"The analytic estimate is within {np.median(error):.2%} of the measured peak for half "
        f"the {len(measured)} runs, and {error.max():.2%} off at worst (depth {worst['depth']}, "
        f"width {worst['width']}, batch {worst['batch_size']}, {worst['phase']} on "
        f"{worst['device']}).",
    ]


def _knee_markdown(table: pd.DataFrame) -> list[str]:
    found = knees(table)
    if found.empty:
        return ["No timings to judge from."]
    header = ["setting", "depth", "width", "stops growing at batch", "samples/s there",
              "best samples/s", "timings"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {_key(s): i for i, s in enumerate(settings(table))}
    found = found.assign(_order=[order[_key(r)] for _, r in found.iterrows()])
    flagged_any = False
    for _, row in found.sort_values(["_order", "depth", "width"]).iterrows():
        flagged = set(row["flagged_batch_sizes"])
        flagged_any |= bool(flagged)
        knee_mark = f" {FLAG_MARK}" if int(row["knee_batch_size"]) in flagged else ""
        best_mark = f" {FLAG_MARK}" if int(row["best_batch_size"]) in flagged else ""
        timing = ("clean" if not flagged else
                  f"{FLAG_MARK} flagged at batch " + ", ".join(f"{b:,}" for b in sorted(flagged)))
        lines.append("| " + " | ".join([
            setting_label(row), str(row["depth"]), str(row["width"]),
            f"{int(row['knee_batch_size']):,}{knee_mark}"
            + (" (still growing: the largest measured)" if row["still_growing"] else ""),
            f"{row['knee_samples_per_s']:,.0f}{knee_mark}",
            f"{row['best_samples_per_s']:,.0f} at batch {int(row['best_batch_size']):,}"
            f"{best_mark}",
            timing,
        ]) + " |")
    if flagged_any:
        lines += ["", f"{FLAG_MARK} marks a figure from a timing flagged untrustworthy (see the "
                  "last table); where a flagged timing is the knee or the best, the knee may "
                  "move on a quieter run."]
    if int(found["measured_batch_sizes"].min()) < 3:
        lines += ["", "Some models were timed at fewer than 3 batch sizes, so where their "
                  "throughput stops growing is only roughly placed."]
    return lines


def _measurement_markdown(table: pd.DataFrame) -> list[str]:
    header = ["setting", "depth", "width", "batch", "status", "peak memory", "reserved",
              "step time (median)", "IQR", "samples/s", "FLOP/s", "timing flags / reason"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = {_key(s): i for i, s in enumerate(settings(table))}
    rows = table.assign(_order=[order[_key(r)] for _, r in table.iterrows()])
    flagged_any = False
    for _, row in rows.sort_values(["_order", "depth", "width", "batch_size"]).iterrows():
        cells = [setting_label(row), str(row["depth"]), str(row["width"]),
                 f"{row['batch_size']:,}"]
        if row["status"] != "ok":
            reason = " ".join(str(row["reason"]).split()).replace("|", "/")
            cells += [_STATUS_WORDS.get(row["status"], row["status"]), "—", "—", "—", "—",
                      "—", "—", reason or "—"]
        else:
            mark = "" if row["timing_ok"] else f" {FLAG_MARK}"
            flagged_any |= not row["timing_ok"]
            reserved = row["reserved_bytes"]
            cells += [
                "ok",
                format_bytes(int(row["peak_bytes"])),
                "—" if pd.isna(reserved) else format_bytes(int(reserved)),
                f"{row['median_ms']:.3g} ms{mark}",
                f"{row['iqr_ms']:.2g} ms",
                f"{row['samples_per_s']:,.0f}{mark}",
                _flop_rate(row["flop_per_s"]) + mark,
                row["timing_flags"].replace(";", ", ") or "—",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if flagged_any:
        lines += [
            "",
            f"{FLAG_MARK} This timing is flagged untrustworthy: *few-rounds* (too few timed "
            "rounds for a stable median), *high-spread* (rounds disagree by more than a quarter "
            "of the median), *below-timer-resolution* (the step is too short for the clock). "
            "Read it as a rough figure.",
        ]
    return lines


# -- small helpers ----------------------------------------------------------------------------

def _key(row) -> tuple:
    get = row.get if hasattr(row, "get") else lambda k: getattr(row, k)
    return tuple(str(get(f)) for f in SETTING_FIELDS)


def _label(name: str, budget) -> str:
    """The GPU's name for a person; a budget not from the catalogue goes by its source."""
    return GPUS[name].label if name in GPUS else budget.source


def _batch_on_device(rows: pd.DataFrame, pick) -> str:
    batch = pick(int(b) for b in rows["batch_size"])
    devices = ", ".join(sorted(set(rows[rows["batch_size"] == batch]["device"])))
    return f"{batch:,} ({devices})"


def _join_words(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _flop_rate(flop_per_s: float) -> str:
    if flop_per_s is None or not math.isfinite(flop_per_s):
        return "—"
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if flop_per_s >= scale:
            return f"{flop_per_s / scale:.3g} {unit}"
    return f"{flop_per_s:.3g} FLOP/s"


# -- writing safely ---------------------------------------------------------------------------

def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the report")
    if out_dir.is_dir() and not force:
        present = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
        if present:
            raise ValueError(f"--out {out_dir} already holds a report ({', '.join(present[:3])}"
                             f"{', ...' if len(present) > 3 else ''}); it is kept (pass --force "
                             "to replace it)")
    # The nearest folder that exists must take new files.
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir} cannot be written: {parent} is not a writable folder")


def _staging_folder(out_dir: Path) -> Path:
    """A new empty folder on the same file system as out_dir, so renames are atomic."""
    try:
        if out_dir.is_dir():
            return Path(tempfile.mkdtemp(prefix=".report-", suffix=".tmp", dir=out_dir))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", suffix=".tmp",
                                        dir=out_dir.parent))
        # mkdtemp makes it private (0700); the report folder gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        return staging
    except OSError as exc:
        raise ValueError(f"--out {out_dir} cannot be written: {exc.strerror}") from None


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if staging.parent == out_dir:
        # The run folder existed: move the files in one by one, report.md last.
        for name in OUTPUT_FILES:
            os.replace(staging / name, out_dir / name)
        staging.rmdir()
        return
    try:
        os.rename(staging, out_dir)  # atomic; fails if out_dir appeared meanwhile
    except OSError as exc:
        raise ValueError(f"--out {out_dir} appeared while the report was written; it is kept "
                         f"({exc.strerror})") from None
