import json
import weakref

import pytest
import torch
from cli_runner import run_cli

from mlp.config import RunConfig
from mlp.fit import max_batch_size
from mlp.gpus import DEFAULT_MARGIN
from mlp.memory import measure_peak
from mlp.phases import build_workload
from mlp.probe import probe_max_batch

CPU = torch.device("cpu")
# Small enough that a step at the answer (about 1,700 samples) takes milliseconds.
SMALL = RunConfig(input_dim=32, width=64, output_dim=8, depth=3)
BUDGET_BYTES = 2 * 2**20


def measured_peak(config, batch_size, device=CPU):
    """A step's peak measured on its own, as mlp.measure does: build, warm up, measure."""
    workload = build_workload(config.replace(batch_size=batch_size), device)
    workload.run_round()
    return measure_peak(workload).peak_bytes


def check_largest(config, budget_bytes, batch_size):
    """The probe invariant, checked by fresh measurements: b fits and b + 1 does not."""
    assert batch_size >= 1
    assert measured_peak(config, batch_size) <= budget_bytes < measured_peak(config, batch_size + 1)


@pytest.fixture(scope="module")
def answer():
    """The largest batch of SMALL within BUDGET_BYTES, found from a deliberately low start."""
    result = probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=100)
    check_largest(SMALL, BUDGET_BYTES, result.max_batch_size)
    return result.max_batch_size


def test_a_right_start_is_confirmed_in_two_runs(answer):
    result = probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=answer)

    assert result.max_batch_size == answer and result.runs == 2
    assert [(t["batch_size"], t["fits"]) for t in result.trials] == [
        (answer, True), (answer + 1, False)]
    assert result.peak_bytes == result.trials[0]["peak_bytes"] <= BUDGET_BYTES


@pytest.mark.parametrize("start_of", [
    lambda answer: 1,
    lambda answer: answer // 3,
    lambda answer: answer + 1,
    lambda answer: 10 * answer,
], ids=["start-1", "start-third", "start-one-over", "start-10x"])
def test_a_wrong_start_still_finds_the_largest_batch(answer, start_of):
    start = start_of(answer)

    result = probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=start)

    assert result.max_batch_size == answer and result.start_batch_size == start
    assert result.runs == len(result.trials)
    fits = {t["batch_size"]: t["fits"] for t in result.trials}
    assert fits[answer] and not fits[answer + 1]


def test_runs_stay_few_for_an_estimate_a_third_too_high(answer):
    result = probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=answer * 4 // 3)

    # Doubling and bisection, as Lightning's finder does, would take about 2 * log2(1,700),
    # 21 runs; the measured peaks put the second guess on the answer.
    assert result.runs <= 5


def test_limit_caps_the_search(answer):
    result = probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=10, limit=answer // 2)

    assert result.max_batch_size == answer // 2
    assert all(t["batch_size"] <= answer // 2 for t in result.trials)


def test_nothing_fits_gives_zero():
    need_bytes = measured_peak(SMALL, 1)

    result = probe_max_batch(SMALL, CPU, need_bytes - 1, start=5)

    assert result.max_batch_size == 0 and result.peak_bytes is None
    assert not any(t["fits"] for t in result.trials)


CONFIGS = [
    SMALL,
    SMALL.replace(phase="forward"),
    SMALL.replace(phase="backward", activation="gelu"),
    SMALL.replace(phase="forward-backward", activation="tanh", output_activation="identity"),
    SMALL.replace(optimizer="momentum", depth=5),
    SMALL.replace(optimizer="adamw", dtype="bfloat16", depth=1),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.phase}-{c.optimizer}-{c.dtype}")
@pytest.mark.parametrize("budget_bytes", [2 * 2**20, 5 * 2**20 + 12_345])
def test_fit_and_probe_agree_on_the_cpu_under_a_budget(config, budget_bytes):
    predicted = max_batch_size(config, budget_bytes, device_type="cpu")

    result = probe_max_batch(config, CPU, budget_bytes)

    assert result.start_batch_size == max(predicted.max_batch_size, 1)
    assert abs(result.max_batch_size - predicted.max_batch_size) <= 1
    check_largest(config, budget_bytes, result.max_batch_size)
    if result.max_batch_size == predicted.max_batch_size:
        assert result.runs <= 2


class OutOfMemoryAbove:
    """Builds real workloads whose step raises torch's out-of-memory error past a batch size.

    The error comes midway through the step, with the forward's tensors alive in the frames
    of the traceback, as an allocation failure in backward would leave them. Nothing is
    measured here: the probe's own measurements on the batches that fit are compared with
    fresh ones.
    """

    def __init__(self, threshold):
        self.threshold = threshold
        self.failed_models = []  # weak references to the models of failed trials

    def __call__(self, config, device):
        workload = build_workload(config, device)
        if config.batch_size > self.threshold:
            self.failed_models.append(weakref.ref(workload.model))

            def step():
                output = workload.model(workload.inputs)  # (batch_size, output_dim), kept
                raise torch.OutOfMemoryError(
                    f"out of memory (test: batch {config.batch_size} > {self.threshold}, "
                    f"output of {output.numel()} elements alive)")

            workload.step = step
        return workload


def test_an_out_of_memory_error_is_a_result_and_the_search_goes_on(answer):
    threshold = answer * 2 // 3
    before_bytes = measured_peak(SMALL, threshold)
    build = OutOfMemoryAbove(threshold)

    result = probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=answer, build=build)

    assert result.max_batch_size == threshold
    failed = [t for t in result.trials if t["oom"]]
    assert failed and all(not t["fits"] and t["peak_bytes"] is None for t in failed)
    assert all(t["batch_size"] > threshold for t in failed)
    # Every failed trial's workload was freed, and the measurement after the failures
    # matches one made before them.
    assert all(ref() is None for ref in build.failed_models)
    assert result.peak_bytes == before_bytes == measured_peak(SMALL, threshold)


def test_errors_other_than_out_of_memory_propagate():
    def broken(config, device):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        probe_max_batch(SMALL, CPU, BUDGET_BYTES, start=10, build=broken)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "budget_bytes .--memory. is required on the cpu"),
    ({"budget_bytes": 0}, "budget_bytes"),
    ({"budget_bytes": BUDGET_BYTES, "start": 0}, "start"),
    ({"budget_bytes": BUDGET_BYTES, "limit": 0}, "limit"),
    ({"budget_bytes": BUDGET_BYTES, "device": torch.device("meta")}, "device"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    kwargs = {"device": CPU, **kwargs}

    with pytest.raises(ValueError, match=message):
        probe_max_batch(SMALL, **kwargs)


# --- the command line ------------------------------------------------------------------

ARGS = ["probe", "--device", "cpu", "--depth", "3", "--width", "64", "--input-dim", "32",
        "--output-dim", "8"]


def test_probe_json_reports_the_answer_runs_and_start(answer, capsys):
    status, out, _ = run_cli(ARGS + ["--memory", "2MiB", "--start", "100", "--json"], capsys)

    result = json.loads(out)
    assert status == 0
    assert result["max_batch_size"] == answer and result["start_batch_size"] == 100
    assert result["runs"] == len(result["trials"]) > 2
    assert result["budget_bytes"] == BUDGET_BYTES and result["peak_bytes"] <= BUDGET_BYTES


def test_probe_summary_labels_units_and_counts_runs(capsys):
    status, out, _ = run_cli(ARGS + ["--memory", "2MiB", "--start", "1500"], capsys)

    assert status == 0
    assert "runs" in out and "MiB" in out and "peak (GiB)" in out


@pytest.mark.parametrize("argv, named", [
    ([], "--memory is required on the cpu"),
    (["--memory", "lots"], "--memory"),
    (["--memory", "2MiB", "--start", "0"], "--start"),
    (["--memory", "2MiB", "--limit", "-3"], "--limit"),
    (["--memory", "2MiB", "--batch-size", "8"], "--batch-size"),
])
def test_probe_bad_input_is_one_line_and_exit_status_2(argv, named, capsys):
    status, out, err = run_cli(ARGS + argv, capsys)

    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert named in err


# --- on a real GPU ---------------------------------------------------------------------

GPU_MODEL = RunConfig(input_dim=1024, width=4096, output_dim=1000, depth=6)


@pytest.mark.cuda
def test_probe_and_fit_agree_on_a_gpu_under_a_budget():
    device = torch.device("cuda")
    budget_bytes = 4 * 2**30
    predicted = max_batch_size(GPU_MODEL, budget_bytes, device_type="cuda")

    result = probe_max_batch(GPU_MODEL, device, budget_bytes)

    print(f"fit {predicted.max_batch_size}, probe {result.max_batch_size} in {result.runs} "
          f"runs: {result.trials}")
    assert abs(result.max_batch_size - predicted.max_batch_size) <= max(
        1, result.max_batch_size // 100)
    fits = {t["batch_size"]: t["fits"] for t in result.trials}
    assert fits[result.max_batch_size] and not fits[result.max_batch_size + 1]


@pytest.mark.cuda
def test_probe_on_a_gpu_survives_running_out_and_the_margin_is_safe():
    device = torch.device("cuda")
    total_bytes = torch.cuda.get_device_properties(device).total_memory
    cap_bytes = 3 * 2**30
    # Cap the caching allocator, so that running out comes at 3 GiB on any GPU.
    torch.cuda.set_per_process_memory_fraction(cap_bytes / total_bytes, device)
    try:
        first = measured_peak(GPU_MODEL, 64, device)
        result = probe_max_batch(GPU_MODEL, device)
        after = measured_peak(GPU_MODEL, 64, device)
        with pytest.raises(torch.OutOfMemoryError):
            measured_peak(GPU_MODEL, result.max_batch_size + 1, device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()

    print(f"probe {result.max_batch_size} in {result.runs} runs: {result.trials}")
    oom = {t["batch_size"]: t["oom"] for t in result.trials}
    assert oom[result.max_batch_size + 1] and not oom[result.max_batch_size]
    assert after == first  # running out of memory left no trace on later measurements
    predicted = max_batch_size(GPU_MODEL, int(cap_bytes * (1 - DEFAULT_MARGIN)), "cuda")
    assert 0 < predicted.max_batch_size <= result.max_batch_size
