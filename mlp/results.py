"""Benchmark results: pytest-benchmark JSON files read into one tidy table.

A row per benchmark (and per configuration that did not run), a column per fact: the
RunConfig fields, the device, what was measured (params, flops, bytes) and the time figures
derived from pytest-benchmark's statistics. Bytes stay integers (pandas' nullable Int64, so
that a CPU row's missing reserved_bytes is empty rather than a float NaN).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from mlp.config import RunConfig
from mlp.model import count_params

log = logging.getLogger(__name__)

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))

# What makes two rows the same model run the same way: every RunConfig field but the
# batch size, and the device. Curves against batch size are drawn per model.
MODEL_FIELDS = tuple(f for f in CONFIG_FIELDS if f != "batch_size") + ("device",)
# A model's fields less its shape (depth, width): the setting it was run in. A plot panel
# holds one setting.
SETTING_FIELDS = tuple(f for f in MODEL_FIELDS if f not in ("depth", "width"))

# Statuses a row can have: "ok" ran and was measured; the others come from mlpbench's
# "not_run" list (the step ran out of device memory, was skipped because it would not fit
# in host memory, or failed otherwise).
STATUSES = ("ok", "oom", "skipped-host-memory", "error")

# Throughput "stops growing" at the smallest batch whose samples/s is within this fraction
# of the best measured for the model: past it, a larger batch buys at most 10% more
# throughput for proportionally more memory and latency.
KNEE_TOLERANCE = 0.10

BYTE_COLUMNS = ("peak_bytes", "start_bytes", "reserved_bytes", "requested_bytes",
                "estimated_peak_bytes", "device_total_bytes")
INT_COLUMNS = ("input_dim", "width", "output_dim", "depth", "batch_size", "params", "flops",
               "rounds") + BYTE_COLUMNS

# The table's columns, in order.
COLUMNS = (
    *CONFIG_FIELDS,
    "device", "device_name", "status", "fits", "reason",
    "params", "flops",
    *BYTE_COLUMNS,
    "median_s", "median_ms", "iqr_ms", "stddev_ms", "min_ms", "mean_ms", "rounds",
    "samples_per_s", "flop_per_s",
    "timing_flags", "timing_ok",
    "name", "source",
)

# extra_info keys every mlpbench benchmark carries; without them a row cannot be placed.
_REQUIRED_EXTRA = (*CONFIG_FIELDS, "device", "params", "flops", "peak_bytes")
_REQUIRED_STATS = ("median", "iqr", "stddev", "min", "mean", "rounds")


class ResultsError(ValueError):
    """A results file that is missing, unreadable or not mlpbench's pytest-benchmark JSON."""


def load_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read pytest-benchmark JSON files into one table, a row per benchmark or skipped run.

    Raises ResultsError naming the file and what is wrong with it; no file is read in part.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ResultsError("results: give at least one pytest-benchmark JSON file")

    rows: list[dict] = []
    for path in paths:
        rows.extend(_rows_of_file(path))
    if not rows:
        names = ", ".join(str(p) for p in paths)
        raise ResultsError(f"{names}: no benchmarks in the results (an empty run?)")

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in INT_COLUMNS:
        table[column] = table[column].astype("Int64")
    table["fits"] = table["fits"].astype("boolean")
    table["timing_ok"] = table["timing_ok"].astype("boolean")
    for column in ("median_s", "median_ms", "iqr_ms", "stddev_ms", "min_ms", "mean_ms",
                   "samples_per_s", "flop_per_s"):
        table[column] = table[column].astype("float64")
    log.info("read %d rows from %d file(s)", len(table), len(paths))
    return table


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """The table as CSV; byte counts are written as integers, missing values as empty cells."""
    path = Path(path)
    table.to_csv(path, index=False)
    return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """A table written by write_csv, with its integer columns integer again."""
    table = pd.read_csv(path, keep_default_na=True)
    for column in INT_COLUMNS:
        if column in table:
            table[column] = table[column].astype("Int64")
    table["timing_flags"] = table["timing_flags"].fillna("")
    return table


def config_of(row) -> RunConfig:
    """The RunConfig of a table row (a Series, a dict or a namedtuple)."""
    get = row.get if hasattr(row, "get") else lambda k: getattr(row, k)
    fields = {}
    for name in CONFIG_FIELDS:
        value = get(name)
        fields[name] = int(value) if name in INT_COLUMNS else str(value)
    return RunConfig(**fields)


def settings(table: pd.DataFrame) -> list[dict]:
    """The distinct settings (SETTING_FIELDS) of the table, the most telling first.

    train-step first (what a training job runs, and the most memory), then the other phases
    from the heaviest down; float32 before the half-precision types; then by row count.
    """
    phase_rank = {p: i for i, p in enumerate(("train-step", "forward-backward", "backward",
                                              "forward"))}
    dtype_rank = {d: i for i, d in enumerate(("float32", "bfloat16", "float16"))}
    counts = table.groupby(list(SETTING_FIELDS), sort=False, dropna=False).size()
    found = [dict(zip(SETTING_FIELDS, key, strict=True)) | {"rows": int(n)}
             for key, n in counts.items()]
    found.sort(key=lambda s: (phase_rank.get(s["phase"], 9), dtype_rank.get(s["dtype"], 9),
                              -s["rows"]))
    for s in found:
        del s["rows"]
    return found


def setting_label(setting, device: bool = True) -> str:
    """'train-step with adam, float32, on cpu': a setting in words (device optional)."""
    get = setting.get if hasattr(setting, "get") else lambda k: getattr(setting, k)
    phase = get("phase")
    if phase == "train-step":
        phase = f"train-step with {get('optimizer')}"
    label = f"{phase}, {get('dtype')}"
    if device:
        label += f", on {get('device')}"
    io = (int(get("input_dim")), int(get("output_dim")))
    if io != (784, 10):
        label += f", {io[0]} in / {io[1]} out"
    if (get("activation"), get("output_activation")) != ("relu", "sigmoid"):
        label += f", {get('activation')}/{get('output_activation')}"
    return label


def rows_of_setting(table: pd.DataFrame, setting: dict) -> pd.DataFrame:
    """The rows of the table that have the setting."""
    mask = pd.Series(True, index=table.index)
    for name in SETTING_FIELDS:
        mask &= table[name] == setting[name]
    return table[mask]


def device_type_of(device: str) -> str:
    """'cuda:0' -> 'cuda', 'cpu' -> 'cpu': the device type the estimate's rules follow."""
    return "cpu" if str(device) == "cpu" else "cuda"


def throughput_knee(batch_sizes, samples_per_s, tolerance: float = KNEE_TOLERANCE) -> int | None:
    """The smallest batch size whose throughput is within `tolerance` of the best given.

    The one definition of where throughput stops growing, shared by the plots, the report
    and the advice. None when no throughput is given.
    """
    pairs = sorted(
        (int(b), float(s)) for b, s in zip(batch_sizes, samples_per_s, strict=True)
        if s is not None and not pd.isna(s) and s > 0
    )
    if not pairs:
        return None
    best = max(s for _, s in pairs)
    return next(b for b, s in pairs if s >= (1.0 - tolerance) * best)


def knees(table: pd.DataFrame, tolerance: float = KNEE_TOLERANCE) -> pd.DataFrame:
    """Per model (MODEL_FIELDS): where throughput stops growing, from the measured rows.

    Columns: the model fields, knee_batch_size, knee_samples_per_s, best_batch_size,
    best_samples_per_s, measured_batch_sizes (how many batch sizes were timed), timing_ok
    (False when any timing of the model is flagged untrustworthy), flagged_batch_sizes
    (a tuple of the batch sizes whose timing is flagged) and still_growing (True when the
    knee is the largest batch measured: throughput may grow further past the sweep).
    """
    measured = table[table["status"] == "ok"].dropna(subset=["samples_per_s"])
    out = []
    for key, group in measured.groupby(list(MODEL_FIELDS), sort=True, dropna=False):
        # A batch size measured twice (two files) counts once, at its median throughput.
        per_batch = group.groupby("batch_size")["samples_per_s"].median()
        knee = throughput_knee(per_batch.index, per_batch.values, tolerance)
        flagged = group[~group["timing_ok"].astype(bool)]["batch_size"]
        out.append({
            **dict(zip(MODEL_FIELDS, key, strict=True)),
            "knee_batch_size": knee,
            "knee_samples_per_s": float(per_batch.loc[knee]) if knee is not None else math.nan,
            "best_batch_size": int(per_batch.idxmax()),
            "best_samples_per_s": float(per_batch.max()),
            "measured_batch_sizes": int(per_batch.size),
            "timing_ok": flagged.empty,
            "flagged_batch_sizes": tuple(sorted({int(b) for b in flagged})),
            "still_growing": knee is not None and per_batch.size > 1
            and knee == int(per_batch.index.max()),
        })
    columns = [*MODEL_FIELDS, "knee_batch_size", "knee_samples_per_s", "best_batch_size",
               "best_samples_per_s", "measured_batch_sizes", "timing_ok", "flagged_batch_sizes",
               "still_growing"]
    result = pd.DataFrame(out, columns=columns)
    result["knee_batch_size"] = result["knee_batch_size"].astype("Int64")
    return result


# -- reading one file ------------------------------------------------------------------------

def _rows_of_file(path: Path) -> list[dict]:
    document = _read_json(path)
    benchmarks = document.get("benchmarks") if isinstance(document, dict) else None
    if not isinstance(benchmarks, list):
        raise ResultsError(f"{path} is not pytest-benchmark JSON: no 'benchmarks' list")

    machine = document.get("machine_info") if isinstance(document.get("machine_info"), dict) \
        else {}
    facts = machine.get("mlpbench") if isinstance(machine.get("mlpbench"), dict) else {}
    device_total_bytes = _optional_int(path, "machine_info.mlpbench.device_total_bytes",
                                       facts.get("device_total_bytes"))

    rows = [_benchmark_row(path, index, b) for index, b in enumerate(benchmarks)]
    rows.extend(_not_run_rows(path, document.get("mlpbench")))
    for row in rows:
        row["device_total_bytes"] = device_total_bytes
        row["source"] = str(path)
        if not row.get("device_name"):
            row["device_name"] = facts.get("device_name") or row["device"]
    return rows


def _read_json(path: Path):
    if not path.exists():
        raise ResultsError(f"results file {path} does not exist")
    if path.is_dir():
        raise ResultsError(f"results file {path} is a folder; give pytest-benchmark JSON files")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not pytest-benchmark JSON: not UTF-8 text") from None
    except OSError as exc:
        raise ResultsError(f"results file {path} cannot be read: {exc.strerror}") from None
    if not text.strip():
        raise ResultsError(f"{path} is empty; expected pytest-benchmark JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{path} is not valid JSON (truncated or corrupt?): {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None


def _benchmark_row(path: Path, index: int, benchmark) -> dict:
    if not isinstance(benchmark, dict) or not isinstance(benchmark.get("stats"), dict):
        raise ResultsError(
            f"{path} is not pytest-benchmark JSON: benchmarks[{index}] has no 'stats'"
        )
    name = str(benchmark.get("name", f"benchmarks[{index}]"))
    where = f"{path}: benchmark {name!r}"
    extra = benchmark.get("extra_info")
    missing = [k for k in _REQUIRED_EXTRA if not isinstance(extra, dict) or k not in extra]
    if missing:
        raise ResultsError(
            f"{where} is not an mlpbench benchmark: extra_info lacks {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''} (write results with the bench/ suite or "
            "mlpbench sweep)"
        )
    stats = benchmark["stats"]
    missing = [k for k in _REQUIRED_STATS if not _is_number(stats.get(k))]
    if missing:
        raise ResultsError(f"{where}: stats lack numbers for {', '.join(missing)}")

    config = _config(where, extra)
    status = str(extra.get("status", "ok"))
    if status != "ok":
        raise ResultsError(f"{where}: status must be 'ok' for a timed benchmark, got {status!r}")
    flags = extra.get("timing_flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ResultsError(f"{where}: extra_info.timing_flags must be a list of strings")

    median_s = float(stats["median"])
    flops = _optional_int(where, "flops", extra["flops"])
    return {
        **config.as_dict(),
        "device": str(extra["device"]),
        "device_name": extra.get("device_name"),
        "status": "ok",
        "fits": True,
        "reason": "",
        "params": _optional_int(where, "params", extra["params"]),
        "flops": flops,
        "peak_bytes": _optional_int(where, "peak_bytes", extra["peak_bytes"]),
        "start_bytes": _optional_int(where, "start_bytes", extra.get("start_bytes")),
        "reserved_bytes": _optional_int(where, "reserved_bytes", extra.get("reserved_bytes")),
        "requested_bytes": None,
        "estimated_peak_bytes": None,
        "median_s": median_s,
        "median_ms": median_s * 1e3,
        "iqr_ms": float(stats["iqr"]) * 1e3,
        "stddev_ms": float(stats["stddev"]) * 1e3,
        "min_ms": float(stats["min"]) * 1e3,
        "mean_ms": float(stats["mean"]) * 1e3,
        "rounds": int(stats["rounds"]),
        "samples_per_s": config.batch_size / median_s if median_s > 0 else math.nan,
        "flop_per_s": flops / median_s if flops is not None and median_s > 0 else math.nan,
        "timing_flags": ";".join(flags),
        "timing_ok": not flags,
        "name": name,
    }


def _not_run_rows(path: Path, section) -> list[dict]:
    if section is None:
        return []
    not_run = section.get("not_run", []) if isinstance(section, dict) else None
    if not isinstance(not_run, list):
        raise ResultsError(f"{path}: 'mlpbench.not_run' must be a list of configurations")
    rows = []
    for index, entry in enumerate(not_run):
        where = f"{path}: mlpbench.not_run[{index}]"
        if not isinstance(entry, dict):
            raise ResultsError(f"{where} must be an object")
        missing = [k for k in (*CONFIG_FIELDS, "device", "status") if k not in entry]
        if missing:
            raise ResultsError(f"{where} lacks {', '.join(missing)}")
        status = entry["status"]
        if status not in STATUSES[1:]:
            raise ResultsError(
                f"{where}: status must be one of {', '.join(STATUSES[1:])}; got {status!r}"
            )
        config = _config(where, entry)
        rows.append({
            **config.as_dict(),
            "device": str(entry["device"]),
            "device_name": entry.get("device_name"),
            "status": status,
            # An out-of-memory error is a measured "does not fit"; a skip or another error
            # says nothing about fitting.
            "fits": False if status == "oom" else None,
            "reason": str(entry.get("reason") or ""),
            "params": count_params(config.input_dim, config.width, config.output_dim,
                                   config.depth),
            "requested_bytes": _optional_int(where, "requested_bytes",
                                             entry.get("requested_bytes")),
            "estimated_peak_bytes": _optional_int(where, "estimated_peak_bytes",
                                                  entry.get("estimated_peak_bytes")),
            "timing_flags": "",
            "timing_ok": None,
            "name": "",
        })
    return rows


def _config(where: str, fields: dict) -> RunConfig:
    try:
        return RunConfig(**{name: fields[name] for name in CONFIG_FIELDS})
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"{where}: {exc}") from None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_int(where, name: str, value) -> int | None:
    if value is None:
        return None
    if _is_number(value) and float(value).is_integer() and value >= 0:
        return int(value)
    raise ResultsError(f"{where}: {name} must be a whole number of 0 or more, got {value!r}")
