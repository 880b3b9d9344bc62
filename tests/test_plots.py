"""mlp.plots: each picture drawn from the real sample run, and what it shows checked."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import PathCollection

from mlp import plots
from mlp.fit import frontier
from mlp.gpus import GPUS, resolve_budget
from mlp.results import config_of, knees, load_results, rows_of_setting, settings

SAMPLE = Path(__file__).parent / "data" / "sample_results.json"
CHOSEN = ["t4", "a100-80gb"]


@pytest.fixture(scope="module")
def table():
    return load_results([SAMPLE])


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("plots")


@pytest.fixture(scope="module")
def latency(table, out):
    path = out / "latency_throughput.png"
    return plots.plot_latency_throughput(table, path), path


def _png_shape(path: Path) -> tuple:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def _labelled(fig) -> None:
    assert fig.get_suptitle()
    for ax in fig.axes:
        if ax.get_visible() and ax.has_data():
            assert ax.get_xlabel() or ax.get_xticklabels()
    assert any(ax.get_ylabel() for ax in fig.axes)


def test_memory_scaling_draws_measured_points_estimate_past_them_and_gpu_lines(table, out):
    path = out / "memory_scaling.png"
    fig = plots.plot_memory_scaling(table, CHOSEN, path)
    height, width, _ = _png_shape(path)
    assert width >= 600 and height >= 400
    _labelled(fig)

    top_bytes = max(GPUS[name].memory_bytes for name in CHOSEN)
    measured = table[table["status"] == "ok"]
    for ax in fig.axes:
        lines = ax.get_lines()
        flat = {float(line.get_ydata()[0]) for line in lines if len(set(line.get_ydata())) == 1}
        assert {GPUS[name].memory_bytes for name in CHOSEN} <= flat  # a line per GPU
        dashed = [line for line in lines if line.get_linestyle() == "--"]
        assert dashed, "an estimate per width"
        for line in dashed:
            x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
            assert x.max() > measured["batch_size"].max()  # drawn past the measurements
            assert y[-1] > top_bytes >= y[-2]  # up to where the largest GPU is full


def test_frontier_cells_hold_the_largest_batch_from_mlp_fit(table, out):
    path = out / "fit_frontier.png"
    fig = plots.plot_fit_frontier(table, CHOSEN, path)
    _png_shape(path)
    _labelled(fig)

    setting = settings(table[table["status"] == "ok"])[0]
    base = config_of(rows_of_setting(table, setting).iloc[0])
    depths = sorted(int(d) for d in table["depth"].unique())
    widths = sorted(int(w) for w in table["width"].unique())
    for ax, name in zip(fig.axes, CHOSEN, strict=False):
        budget = resolve_budget(gpu=name)
        expected = frontier(depths, widths, base, budget.budget_bytes, device_type="cuda")
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
                 for t in ax.texts}
        for _, row in expected.iterrows():
            cell = (depths.index(row["depth"]), widths.index(row["width"]))
            assert texts[cell] == plots._cell_count(int(row["max_batch_size"]))
        assert GPUS[name].label in ax.get_title()


def test_latency_throughput_marks_the_knee_of_each_model(table, latency):
    fig, path = latency
    _png_shape(path)
    _labelled(fig)

    stars = {(float(line.get_xdata()[0]), round(float(line.get_ydata()[0]), 3))
             for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "*"}
    found = knees(table)
    assert len(stars) == len(found)
    for _, row in found.iterrows():
        assert (float(row["knee_batch_size"]), round(row["knee_samples_per_s"], 3)) in stars


def test_latency_throughput_draws_flagged_timings_hollow(table, latency):
    fig, _ = latency
    hollow = [line for ax in fig.axes for line in ax.get_lines()
              if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
    flagged = (table["status"] == "ok") & ~table["timing_ok"].fillna(True).astype(bool)
    assert sum(len(line.get_xdata()) for line in hollow) == 2 * flagged.sum()


def test_memory_breakdown_bars_add_up_to_the_whole_peak(table, out):
    path = out / "memory_breakdown.png"
    fig = plots.plot_memory_breakdown(table, path)
    _png_shape(path)
    ax = fig.axes[0]
    totals = {}
    for patch in ax.patches:
        y = round(patch.get_y() + patch.get_height() / 2)
        totals[y] = totals.get(y, 0.0) + patch.get_width()
    assert 2 <= len(totals) <= plots.MAX_BREAKDOWN_MODELS
    for share in totals.values():
        assert share == pytest.approx(1.0)


def test_estimate_against_measured_puts_each_run_on_the_diagonal(table, out):
    path = out / "estimate_vs_measured.png"
    fig = plots.plot_estimate_vs_measured(table, path)
    _png_shape(path)
    ax = fig.axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections
                             if isinstance(c, PathCollection)])
    measured = table[table["status"] == "ok"]
    assert len(points) == len(measured)
    # The prediction against the measurement: the analytic estimate is built to match the
    # CPU's live-tensor bytes, so every point of this real CPU run lies within 5% of y = x.
    estimated, actual = points[:, 0], points[:, 1]
    assert np.all(np.abs(estimated / actual - 1) < 0.05)


def test_plot_without_any_measured_row_is_refused(table, out):
    skipped = table[table["status"] != "ok"]
    with pytest.raises(ValueError, match="no measured benchmarks"):
        plots.plot_memory_scaling(skipped, CHOSEN, out / "none.png")
    assert not (out / "none.png").exists()


@pytest.mark.parametrize("n, text", [(4096, "4096"), (2**14, "16Ki"), (2**20, "1Mi"),
                                     (3 * 2**19, "1.5Mi")])
def test_batch_axis_labels_use_binary_prefixes_past_16384(n, text):
    assert plots._count(n) == text


@pytest.mark.parametrize("n, text", [(736_658, "736,658"), (4_164_961, "4.16M"),
                                     (2_147_483_647, "2.15G")])
def test_frontier_cells_stay_short(n, text):
    assert plots._cell_count(n) == text
