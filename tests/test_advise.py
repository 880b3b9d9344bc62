"""mlp.advise and `mlpbench advise`: what fits, which batch to pick, what to change."""

import json
import math
from pathlib import Path

import pytest
from cli_runner import run_cli

from mlp.advise import Advice, advise, estimated_knee, modelled_step_s
from mlp.cli import main
from mlp.config import RunConfig
from mlp.estimate import estimate
from mlp.fit import max_batch_size
from mlp.gpus import resolve_budget
from mlp.results import knees, load_results

SAMPLE = Path(__file__).parent / "data" / "sample_results.json"
CLASSIC = RunConfig(input_dim=3, width=32, output_dim=1, depth=3)
# 12 layers of 32768 units: 11.8 billion parameters, 200 GiB with Adam at batch 1.
HUGE = RunConfig(depth=12, width=32768)


@pytest.fixture(scope="module")
def t4():
    return resolve_budget(gpu="t4")


def test_model_that_fits_gets_its_largest_batch_and_no_changes(t4):
    advice = advise(CLASSIC, t4)
    fit = max_batch_size(CLASSIC, t4.budget_bytes, device_type="cuda")
    assert advice.max_batch_size == fit.max_batch_size > 0
    assert estimate(CLASSIC.replace(batch_size=advice.max_batch_size), "cuda").peak_bytes \
        <= t4.budget_bytes
    assert 1 <= advice.recommended_batch_size <= advice.max_batch_size
    assert advice.knee_source == "estimate" and "no measured results" in advice.reason
    assert advice.suggestions == []


def test_measured_results_place_the_knee_and_say_so(t4):
    table = load_results([SAMPLE])
    config = RunConfig(depth=3, width=1024)  # in the sample: train-step, adam, float32
    advice = advise(config, t4, table)
    found = knees(table)
    row = found[(found["depth"] == 3) & (found["width"] == 1024)
                & (found["phase"] == "train-step")].iloc[0]
    assert advice.knee_source == "measured"
    assert advice.knee_batch_size == row["knee_batch_size"]
    assert advice.recommended_batch_size == row["knee_batch_size"]
    assert "measured on cpu" in advice.reason
    # batch 2048 of this model was skipped, so its knee is the largest batch measured
    assert row["still_growing"] and "still growing" in advice.reason


def test_measured_knee_below_the_largest_batch_measured_is_where_growth_stops(t4):
    table = load_results([SAMPLE])
    found = knees(table)
    row = found[~found["still_growing"]].iloc[0]
    config = RunConfig(depth=int(row["depth"]), width=int(row["width"]), phase=row["phase"],
                       optimizer=row["optimizer"] if row["phase"] == "train-step" else "adam")
    advice = advise(config, t4, table)
    assert advice.recommended_batch_size == row["knee_batch_size"]
    assert "stops growing" in advice.reason and "still growing" not in advice.reason


def test_results_without_the_model_fall_back_to_the_estimate(t4):
    advice = advise(CLASSIC, t4, load_results([SAMPLE]))
    assert advice.knee_source == "estimate"
    assert "do not hold this model" in advice.reason


def test_model_that_does_not_fit_gets_each_change_with_its_figure(t4):
    advice = advise(HUGE, t4)
    assert advice.max_batch_size == 0 and advice.recommended_batch_size == 0
    assert "not even batch 1 fits" in advice.reason
    kinds = {s.kind: s for s in advice.suggestions}
    assert set(kinds) == {"dtype", "depth", "width", "sharding"}

    # each figure is what the estimate says of the changed model
    half = max_batch_size(HUGE.replace(dtype="bfloat16", batch_size=1), t4.budget_bytes)
    assert kinds["dtype"].max_batch_size == half.max_batch_size
    depth = int(kinds["depth"].change.split()[1])
    assert estimate(HUGE.replace(depth=depth, batch_size=1), "cuda").peak_bytes <= t4.budget_bytes
    assert estimate(HUGE.replace(depth=depth + 1, batch_size=1), "cuda").peak_bytes \
        > t4.budget_bytes
    width = int(kinds["width"].change.split()[1])
    assert estimate(HUGE.replace(width=width, batch_size=1), "cuda").peak_bytes <= t4.budget_bytes
    assert estimate(HUGE.replace(width=width + 1, batch_size=1), "cuda").peak_bytes \
        > t4.budget_bytes
    gpus = int(kinds["sharding"].change.split()[-2])
    whole = estimate(HUGE.replace(batch_size=1), "cuda").peak_bytes
    assert gpus >= math.ceil(whole / t4.budget_bytes)


def test_batch_too_big_for_one_gpu_gets_accumulation_and_data_parallel(t4):
    config = RunConfig(depth=3, width=4096)
    fit = max_batch_size(config, t4.budget_bytes)
    target = 5 * fit.max_batch_size - 7
    advice = advise(config, t4, target_batch_size=target)
    assert "does not fit" in advice.reason
    kinds = {s.kind: s for s in advice.suggestions}
    micro = kinds["accumulation"].max_batch_size
    steps = int(kinds["accumulation"].change.split(" with ")[1].split()[0])
    assert micro <= fit.max_batch_size and micro * steps >= target and steps == 5
    assert kinds["sharding"].change == "data parallel over 5 GPUs"


def test_batch_that_fits_needs_no_change(t4):
    advice = advise(CLASSIC, t4, target_batch_size=4096)
    assert advice.suggestions == [] and "4,096, fits" in advice.reason


def test_modelled_throughput_grows_then_levels_off():
    config = RunConfig(depth=4, width=4096, dtype="bfloat16")
    batches = (1, 64, 2**16, 2**18)
    rates = [b / modelled_step_s(config.replace(batch_size=b)) for b in batches]
    assert rates == sorted(rates)
    assert rates[1] / rates[0] > 30  # weight-read bound: 64x the batch, nearly 64x the rate
    assert rates[3] / rates[2] < 1.1  # compute bound: little more to gain
    knee = estimated_knee(config, 2**20)
    assert 64 < knee < 2**16
    # float32 matmuls run 16x slower (19.5 against 312 TFLOP/s), so they saturate sooner
    assert estimated_knee(config.replace(dtype="float32"), 2**20) < knee


def test_advice_as_dict_holds_the_promised_keys(t4):
    data = advise(HUGE, t4).as_dict()
    for key in ("max_batch_size", "recommended_batch_size", "reason", "suggestions",
                "knee_source", "budget_bytes"):
        assert key in data
    assert isinstance(data["suggestions"], list) and data["suggestions"]
    json.dumps(data)  # plain JSON types throughout
    assert isinstance(advise(CLASSIC, t4), Advice)


def test_cli_json_for_a_model_that_fits(capsys):
    status = main(["advise", "--gpu", "t4", "--depth", "3", "--width", "32", "--input-dim", "3",
                   "--output-dim", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert data["max_batch_size"] == advise(CLASSIC, resolve_budget(gpu="t4")).max_batch_size
    assert data["suggestions"] == [] and data["fits"] is True


def test_cli_text_for_a_model_that_does_not_fit(capsys):
    status = main(["advise", "--memory", "16GiB", "--depth", "12", "--width", "32768"])
    out = capsys.readouterr().out
    assert status == 0
    assert "none: batch 1 needs" in out and "dtype bfloat16" in out and "sharded" in out
    assert "--memory 16GiB" in out


def test_cli_uses_measured_results_when_given(capsys):
    status = main(["advise", "--gpu", "a100-80gb", "--depth", "2", "--width", "128", "--json",
                   "--results", str(SAMPLE)])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["knee_source"] == "measured"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--gpu", "nope"], "gpu must be one of"),
        (["--memory", "12XB"], "argument --memory"),
        (["--gpu", "t4", "--margin", "1.5"], "argument --margin"),
        (["--gpu", "t4", "--width", "0"], "argument --width"),
        ([], "one of the arguments --gpu --memory is required"),
        (["--gpu", "t4", "--results", "/nonexistent/r.json"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(capsys, args, words):
    status, _, err = run_cli(["advise", *args], capsys)
    assert status == 2
    assert words in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
