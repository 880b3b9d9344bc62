import json
import random
import time
from dataclasses import dataclass

import pytest
from cli_runner import run_cli

import mlp.gpus
from mlp.cli import main
from mlp.config import RunConfig
from mlp.estimate import estimate
from mlp.fit import FitResult, frontier, largest_fitting, largest_within, max_batch_size
from mlp.gpus import GPUS
from mlp.model import count_params

SMALL = RunConfig(input_dim=32, width=64, output_dim=8, depth=3)


# Stand-ins for mlp.estimate with the shapes its peak can take, for the search alone; the
# tests further down repeat the checks with the real one.
@dataclass(frozen=True)
class FakeEstimate:
    peak_bytes: int


def _params(config):
    return count_params(config.input_dim, config.width, config.output_dim, config.depth)


def affine(config, device_type="cuda", method="analytic"):
    """Adam's four copies of the parameters, and per sample every layer's output twice."""
    per_sample = 2 * 4 * (config.depth * config.width + config.output_dim)
    return FakeEstimate(16 * _params(config) + per_sample * config.batch_size)


def staircase(config, device_type="cuda", method="analytic"):
    """Each tensor rounded up to 2 MiB, as CUDA's caching allocator rounds large blocks."""
    def block(nbytes):
        return -(-nbytes // 2**21) * 2**21

    activations = 2 * config.depth * block(4 * config.width * config.batch_size)
    return FakeEstimate(4 * block(4 * _params(config)) + activations)


def two_moments(config, device_type="cuda", method="analytic"):
    """The larger of two peaks: the optimizer step's at small batches, backward's at large."""
    optimizer_step = 20 * _params(config) + 4 * config.width * config.batch_size
    backward = 16 * _params(config) + 12 * config.depth * config.width * config.batch_size
    return FakeEstimate(max(optimizer_step, backward))


FAKES = [affine, staircase, two_moments]


def counting(estimator):
    calls = []

    def wrapped(config, device_type, method):
        calls.append(config)
        return estimator(config, device_type, method)

    return wrapped, calls


def random_models(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        config = RunConfig(
            input_dim=rng.choice([8, 100, 784, 3072]),
            width=rng.choice([1, 7, 64, 1000, 4096, 16384]),
            output_dim=rng.choice([1, 10, 1000]),
            depth=rng.randint(1, 24),
            dtype=rng.choice(["float32", "bfloat16"]),
            phase=rng.choice(["forward", "backward", "forward-backward", "train-step"]),
            optimizer=rng.choice(["sgd", "momentum", "adam", "adamw"]),
        )
        budget_bytes = rng.randint(2**20, 2**38)
        yield config, budget_bytes


def check_largest(result: FitResult, peak_at, limit):
    """The fit invariant: the answer's peak is within the budget and the next one's is not."""
    m = result.max_batch_size
    if m == 0:
        assert peak_at(1) > result.budget_bytes
        assert result.peak_bytes == peak_at(1) and result.config.batch_size == 1
        return
    assert result.config.batch_size == m
    assert result.peak_bytes == peak_at(m) <= result.budget_bytes
    if m < limit:
        assert result.next_peak_bytes == peak_at(m + 1) > result.budget_bytes
    else:
        assert result.next_peak_bytes is None


@pytest.mark.parametrize("estimator", FAKES, ids=lambda f: f.__name__)
def test_max_batch_size_is_the_largest_that_fits_over_random_models(estimator):
    for config, budget_bytes in random_models(seed=1, count=150):
        result = max_batch_size(config, budget_bytes, estimator=estimator)

        check_largest(
            result,
            lambda b, config=config: estimator(config.replace(batch_size=b)).peak_bytes,
            limit=2**31 - 1,
        )


def test_zero_when_batch_one_does_not_fit():
    need_bytes = affine(SMALL.replace(batch_size=1)).peak_bytes

    result = max_batch_size(SMALL, need_bytes - 1, estimator=affine)

    assert result.max_batch_size == 0 and not result.fits
    assert result.peak_bytes == need_bytes and result.config.batch_size == 1
    assert result.as_dict()["fits"] is False


def test_batch_one_exactly_at_the_budget_fits():
    need_bytes = affine(SMALL.replace(batch_size=1)).peak_bytes

    assert max_batch_size(SMALL, need_bytes, estimator=affine).max_batch_size == 1


def test_limit_caps_the_answer():
    result = max_batch_size(SMALL, 2**60, limit=1000, estimator=affine)

    assert result.max_batch_size == 1000 and result.next_peak_bytes is None


def test_an_affine_peak_is_settled_in_a_handful_of_estimates():
    estimator, calls = counting(affine)

    result = max_batch_size(SMALL, 3 * 2**30, estimator=estimator)

    assert result.max_batch_size > 1000
    # batch 1 and the limit, the secant's answer, and its neighbour
    assert len(calls) <= 5


@pytest.mark.parametrize("estimator", [staircase, two_moments], ids=lambda f: f.__name__)
def test_a_peak_far_from_affine_still_takes_logarithmically_many_estimates(estimator):
    counted, calls = counting(estimator)

    max_batch_size(SMALL.replace(width=4096), 40 * 2**30, estimator=counted)

    # bisection alone would take 31 over [1, 2**31 - 1]; the safeguard bisects after at
    # most two secant steps that failed to halve the interval
    assert len(calls) <= 2 + 3 * 31


def test_largest_within_reports_none_below_the_lower_end():
    assert largest_within(lambda n: 10 * n, 5, 1, 100) == (0, None, 10)
    assert largest_within(lambda n: 10 * n, 55, 1, 100) == (5, 50, 60)
    assert largest_within(lambda n: 10 * n, 5000, 1, 100) == (100, 1000, None)


def test_frontier_has_one_row_per_model_in_depth_major_order():
    table = frontier([2, 4, 8], [256, 1024], SMALL, 2**30, estimator=affine)

    assert list(table.columns) == ["depth", "width", "params", "max_batch_size", "peak_bytes",
                                   "budget_bytes"]
    pairs = list(zip(table.depth, table.width, strict=True))
    assert pairs == [(2, 256), (2, 1024), (4, 256), (4, 1024), (8, 256), (8, 1024)]
    for row in table.itertuples():
        config = SMALL.replace(depth=row.depth, width=row.width)
        one = max_batch_size(config, 2**30, estimator=affine)
        assert (row.max_batch_size, row.peak_bytes) == (one.max_batch_size, one.peak_bytes)
        assert row.params == _params(config)


def test_frontier_batch_shrinks_as_models_grow():
    table = frontier([2, 4, 8], [256, 1024, 4096], SMALL, 2**30, estimator=affine)

    for _, by_depth in table.groupby("depth"):
        assert by_depth.max_batch_size.is_monotonic_decreasing
    for _, by_width in table.groupby("width"):
        assert by_width.max_batch_size.is_monotonic_decreasing


@pytest.mark.parametrize("estimator", FAKES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("vary", ["width", "depth"])
def test_largest_fitting_is_the_largest_width_or_depth_that_fits(estimator, vary):
    for config, budget_bytes in random_models(seed=2, count=40):
        config = config.replace(depth=max(config.depth, 2), batch_size=64)

        found = largest_fitting(config, budget_bytes, vary, estimator=estimator)

        def peak_at(value, config=config):
            return estimator(config.replace(**{vary: value})).peak_bytes

        if found:
            assert peak_at(found) <= budget_bytes
        upper = 2**24 if vary == "width" else 1024
        if found < upper:
            assert peak_at(max(found + 1, 2)) > budget_bytes


def test_largest_depth_can_be_one_when_depth_two_does_not_fit():
    # With input 10,000 wide and width 1,000, depth 2 holds ten times depth 1's weights.
    config = RunConfig(input_dim=10_000, width=1000, output_dim=1, depth=4, batch_size=1)
    budget_bytes = affine(config.replace(depth=1)).peak_bytes

    assert largest_fitting(config, budget_bytes, "depth", estimator=affine) == 1


@pytest.mark.parametrize("call, message", [
    (lambda: max_batch_size(SMALL, 0, estimator=affine), "budget_bytes"),
    (lambda: max_batch_size(SMALL, -5, estimator=affine), "budget_bytes"),
    (lambda: max_batch_size(SMALL, 2**30, limit=0, estimator=affine), "limit"),
    (lambda: max_batch_size(SMALL, 2**30, limit=2**31, estimator=affine), "limit"),
    (lambda: largest_fitting(SMALL, 2**30, "height", estimator=affine), "vary"),
    (lambda: largest_fitting(SMALL.replace(depth=1), 2**30, "width", estimator=affine),
     "depth"),
    (lambda: frontier([], [64], SMALL, 2**30, estimator=affine), "depths"),
    (lambda: frontier([2], [0], SMALL, 2**30, estimator=affine), "widths"),
])
def test_bad_arguments_are_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- with the real estimator -----------------------------------------------------------

# The ids avoid the bare word "cuda", which marks a test as needing a GPU (conftest.py).
@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["cpu-rules", "cuda-rules"])
def test_max_batch_size_invariant_holds_for_the_estimate(device_type):
    for config, budget_bytes in random_models(seed=3, count=60):
        result = max_batch_size(config, budget_bytes, device_type)

        check_largest(
            result,
            lambda b, config=config: estimate(
                config.replace(batch_size=b), device_type, "analytic").peak_bytes,
            limit=2**31 - 1,
        )


# The ids avoid the bare word "cuda", which marks a test as needing a GPU (conftest.py).
@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["cpu-rules", "cuda-rules"])
def test_the_real_estimate_is_searched_in_a_handful_of_calls(device_type):
    counts = []
    for config, budget_bytes in random_models(seed=4, count=100):
        counted, calls = counting(estimate)
        max_batch_size(config, budget_bytes, device_type, estimator=counted)
        counts.append(len(calls))

    # Two far points, the secant's answer and its neighbour; rounding costs one or two more
    # now and then. Bisection would take 31 or 32 every time.
    assert sum(counts) / len(counts) <= 5 and max(counts) <= 16


def test_a_thousand_model_frontier_takes_well_under_a_second():
    depths = list(range(2, 12))
    widths = [64 * k for k in range(1, 101)]
    frontier([2], [64], SMALL, 80 * 2**30)  # imports and first-call costs

    # CPU time of this process: other people's tests share the machine's two cores.
    started = time.process_time()
    table = frontier(depths, widths, RunConfig(), 80 * 2**30, "cuda")
    seconds = time.process_time() - started

    assert len(table) == 1000 and (table.max_batch_size > 0).all()
    assert seconds < 1.0


# --- the command line ------------------------------------------------------------------

def test_fit_h100_for_a_depth_8_width_8192_model_answers_at_once(capsys):
    main(["fit", "--gpu", "h100-80gb", "--depth", "2", "--json"])  # imports
    capsys.readouterr()

    started = time.process_time()
    status, out, _ = run_cli(
        ["fit", "--gpu", "h100-80gb", "--depth", "8", "--width", "8192", "--json"], capsys)
    seconds = time.process_time() - started

    result = json.loads(out)
    assert status == 0 and seconds < 0.5
    budget_bytes = int(GPUS["h100-80gb"].memory_bytes * 0.9)
    assert result["budget_bytes"] == budget_bytes and result["margin"] == 0.1
    config = RunConfig(depth=8, width=8192)
    m = result["max_batch_size"]
    assert m > 0
    assert result["peak_bytes"] == estimate(config.replace(batch_size=m), "cuda",
                                                 "analytic").peak_bytes <= budget_bytes
    assert estimate(config.replace(batch_size=m + 1), "cuda",
                         "analytic").peak_bytes > budget_bytes


def test_fit_summary_states_the_margin_and_labels_units(capsys):
    status, out, _ = run_cli(["fit", "--gpu", "t4", "--depth", "4", "--width", "2048"], capsys)

    assert status == 0
    assert "GiB" in out and "10% margin" in out and "--margin 0" in out
    assert "max batch" in out


def test_fit_margin_zero_uses_the_whole_memory(capsys):
    status, out, _ = run_cli(["fit", "--memory", "8GiB", "--margin", "0", "--json"], capsys)

    assert status == 0 and json.loads(out)["budget_bytes"] == 8 * 2**30


def test_fit_lists_give_the_frontier_table(capsys):
    status, out, _ = run_cli(["fit", "--gpu", "a100-80gb", "--depths", "2,4,8,16",
                              "--widths", "1024,4096,16384", "--json"], capsys)

    result = json.loads(out)
    assert status == 0 and len(result["rows"]) == 12
    assert {(r["depth"], r["width"]) for r in result["rows"]} == {
        (d, w) for d in (2, 4, 8, 16) for w in (1024, 4096, 16384)}

    status, out, _ = run_cli(["fit", "--gpu", "a100-80gb", "--depths", "2,4",
                              "--widths", "1024,4096"], capsys)
    assert status == 0 and "max_batch_size" in out and "peak (GiB)" in out


def test_fit_vary_width_gives_the_largest_width_per_depth(capsys):
    status, out, _ = run_cli(["fit", "--memory", "24GiB", "--vary", "width", "--batch-size",
                              "256", "--depths", "4,8", "--json"], capsys)

    rows = json.loads(out)["rows"]
    assert status == 0 and [r["depth"] for r in rows] == [4, 8]
    budget_bytes = int(24 * 2**30 * 0.9)
    for row in rows:
        config = RunConfig(depth=row["depth"], width=row["width"], batch_size=256)
        assert estimate(config, "cuda", "analytic").peak_bytes <= budget_bytes
        wider = config.replace(width=row["width"] + 1)
        assert estimate(wider, "cuda", "analytic").peak_bytes > budget_bytes
    assert rows[0]["width"] > rows[1]["width"]


@pytest.mark.parametrize("argv, named", [
    (["--gpu", "h100"], "gpu must be one of"),
    (["--gpu", "h100-80gb", "--margin", "-0.1"], "--margin"),
    (["--gpu", "h100-80gb", "--margin", "1"], "--margin"),
    (["--gpu", "h100-80gb", "--memory", "80GB"], "--memory"),
    ([], "--gpu"),
    (["--memory", "lots"], "memory"),
    (["--memory", "0"], "memory"),
    (["--gpu", "t4", "--vary", "width"], "--batch-size"),
    (["--gpu", "t4", "--batch-size", "64"], "--batch-size"),
    (["--gpu", "t4", "--vary", "width", "--batch-size", "8", "--widths", "64"], "--widths"),
    (["--gpu", "t4", "--depths", "2,,4"], "--depths"),
    (["--gpu", "t4", "--device", "tpu"], "--device"),
])
def test_fit_bad_input_is_one_line_and_exit_status_2(argv, named, capsys):
    status, out, err = run_cli(["fit", *argv], capsys)

    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert named in err


def test_fit_gpu_auto_without_an_nvidia_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(mlp.gpus, "nvml_gpu_facts", lambda: None)

    status, out, err = run_cli(["fit", "--gpu", "auto"], capsys)

    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "gpu auto needs an NVIDIA GPU" in err


def test_fit_unknown_gpu_lists_the_choices(capsys):
    _, _, err = run_cli(["fit", "--gpu", "h100"], capsys)

    assert all(name in err for name in GPUS)
