import json
import random
import time

import pytest
import torch
import torch.nn.functional as F

from mlp.cli import main
from mlp.config import RunConfig
from mlp.estimate import (
    CATEGORIES,
    CUBLAS_WORKSPACE_BYTES_DEFAULT,
    CUBLAS_WORKSPACE_BYTES_SM90,
    CUBLASLT_WORKSPACE_BYTES_DEFAULT,
    Estimate,
    allocation_bytes,
    cublas_workspace_bytes,
    estimate,
)
from mlp.memory import measure_peak
from mlp.model import count_params
from mlp.phases import build_workload

# Every phase, and the train step with each optimizer.
PHASE_OPTIMIZERS = [("forward", "none"), ("backward", "none"), ("forward-backward", "none"),
                    ("train-step", "sgd"), ("train-step", "momentum"), ("train-step", "adam"),
                    ("train-step", "adamw")]
DTYPES = ("float32", "bfloat16")
# Measuring costs a real step on this machine's two cores; configurations whose step needs
# more than this many FLOPs (about 6 per parameter per sample: 2 forward, 4 backward) are
# drawn again, which keeps the randomized grid of this file to ~15 s.
MAX_STEP_FLOPS = 2e8


def measured_peak_bytes(config: RunConfig) -> int:
    """What `measure` reports: one warm-up round, then the peak of one step on the CPU."""
    workload = build_workload(config, "cpu")
    workload.run_round()
    return measure_peak(workload).peak_bytes


def random_configs(seed: int, per_cell: int) -> list[RunConfig]:
    """per_cell random models for each phase/optimizer and dtype: depth 1-12, width, batch
    1-4096 (half of them drawn below 64, so that odd small sizes are common)."""
    rng = random.Random(seed)
    configs = []
    for phase, optimizer in PHASE_OPTIMIZERS:
        for dtype in DTYPES:
            drawn = 0
            while drawn < per_cell:
                width = rng.choice([rng.randint(1, 64), rng.randint(1, 4096)])
                batch_size = rng.choice([rng.randint(1, 64), rng.randint(1, 4096)])
                config = RunConfig(
                    input_dim=rng.randint(1, 1000), width=width, output_dim=rng.randint(1, 50),
                    depth=rng.randint(1, 12), batch_size=batch_size, phase=phase,
                    optimizer=optimizer, dtype=dtype,
                    activation=rng.choice(["relu", "gelu", "tanh"]),
                    output_activation=rng.choice(["sigmoid", "identity"]),
                )
                params = count_params(config.input_dim, width, config.output_dim, config.depth)
                if 6 * batch_size * params <= MAX_STEP_FLOPS:
                    configs.append(config)
                    drawn += 1
    return configs


# Hand-worked cases ---------------------------------------------------------------------------


def test_classic_mlp_forward_worked_by_hand():
    # MLP(3, 32, 1), depth 3, batch 3, float32, forward under inference mode.
    # Held: 1,217 parameters x 4 = 4,868 bytes; batch 3 x 3 x 4 = 36; targets 3 x 1 x 4 = 12.
    # The peak comes as the hidden layer's relu output is made: the input layer's output h1
    # (still bound to `h`), the hidden linear's output z2 and its relu h2, each 3 x 32 x 4 =
    # 384 bytes: 4,916 + 1,152 = 6,068 bytes. Nothing is saved for backward.
    config = RunConfig(input_dim=3, width=32, output_dim=1, depth=3, batch_size=3,
                       phase="forward")

    result = estimate(config)

    assert result.peak_bytes == 6068
    assert result.breakdown == {"parameters": 4868, "gradients": 0, "optimizer_state": 0,
                                "activations": 48, "transient": 1152, "device_overhead": 0}
    assert result.peak_moment == "forward"
    assert result.peak_bytes == measured_peak_bytes(config)


def test_one_layer_sgd_train_step_worked_by_hand():
    # One linear layer 3 -> 1, batch 3, float32, SGD (no optimizer state).
    # Held: weight 3 + bias 1 values = 16 bytes; batch 36 bytes, targets 12 bytes.
    # Forward: z (3 values) then y = sigmoid(z) (saved by sigmoid and BCE), z freed: +12.
    # Loss: a 0-dim tensor on a 3-value storage (the CPU rule): 4 bytes of loss, 8 more.
    # Backward: seed gradient 4, dL/dy 12, dL/dz 12: the peak, 64 + 12 + 12 + 4 + 12 + 12 =
    # 116 bytes. Then dL/dy and y go before the weight and bias gradients (16 bytes) come.
    config = RunConfig(input_dim=3, width=8, output_dim=1, depth=1, batch_size=3,
                       phase="train-step", optimizer="sgd")

    result = estimate(config)

    assert result.breakdown == {"parameters": 16, "gradients": 0, "optimizer_state": 0,
                                "activations": 36 + 12 + 12, "transient": 4 + 4 + 12 + 12,
                                "device_overhead": 8}
    assert result.peak_bytes == 116 == measured_peak_bytes(config)
    assert result.peak_moment == "backward"


def test_cuda_rules_worked_by_hand(monkeypatch):
    # The first case under CUDA's rules on an A100 (compute capability 8.0): every tensor
    # takes whole 512-byte blocks. Parameters: 384 -> 512, 128 -> 512, 4,096, 128 -> 512,
    # 128 -> 512, 4 -> 512 = 6,656 bytes; batch and targets 512 each; the three (3, 32)
    # tensors 512 each. The device keeps the cuBLAS workspace (2 x 4 MiB + 8 x 16 KiB) and
    # the cuBLASLt one (1 MiB: the input layer's 3 x 32 weight takes the Lt path).
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("CUBLASLT_WORKSPACE_SIZE", raising=False)
    config = RunConfig(input_dim=3, width=32, output_dim=1, depth=3, batch_size=3,
                       phase="forward")

    result = estimate(config, "cuda", capability=(8, 0))

    workspaces = 4096 * 1024 * 2 + 16 * 1024 * 8 + 1024 * 1024
    assert result.breakdown["device_overhead"] == workspaces
    assert result.peak_bytes == 6656 + 1024 + 3 * 512 + workspaces


# Device rules, each with the measurement behind it ------------------------------------------


@pytest.mark.parametrize("loss", [F.binary_cross_entropy, F.mse_loss])
def test_cpu_loss_keeps_its_batch_sized_buffer(loss):
    # The rule in mlp.estimate.loss_storage_elements: the scalar loss holds 7 x 3 values.
    output, target = torch.rand(7, 3), torch.rand(7, 3)

    value = loss(output, target)

    assert value.dim() == 0
    assert value.untyped_storage().nbytes() == 7 * 3 * 4


def test_adam_step_counters_are_float32_scalars_on_the_cpu():
    config = RunConfig(input_dim=3, width=5, output_dim=2, depth=2, batch_size=4,
                       phase="train-step", optimizer="adam", dtype="bfloat16")
    workload = build_workload(config, "cpu")
    workload.run_round()

    steps = [state["step"] for state in workload.optimizer.state.values()]

    assert len(steps) == 4
    assert all(s.dtype == torch.float32 and s.dim() == 0 and s.device.type == "cpu"
               for s in steps)


def test_cuda_blocks_are_512_bytes():
    assert allocation_bytes(1, "cuda") == 512
    assert allocation_bytes(513, "cuda") == 1024
    assert allocation_bytes(513, "cpu") == 513


def test_cublas_workspace_follows_the_gpu_generation_and_the_environment(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert cublas_workspace_bytes((9, 0)) == CUBLAS_WORKSPACE_BYTES_SM90 == 32 * 2**20
    assert cublas_workspace_bytes((8, 6)) == CUBLAS_WORKSPACE_BYTES_DEFAULT

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    assert cublas_workspace_bytes((8, 6)) == 4096 * 1024 * 8


def test_width_one_models_need_no_cublaslt_workspace(monkeypatch):
    monkeypatch.delenv("CUBLASLT_WORKSPACE_SIZE", raising=False)
    narrow = RunConfig(input_dim=1, width=1, output_dim=1, depth=3, phase="forward")
    wide = narrow.replace(width=2, input_dim=2)

    overhead = estimate(wide, "cuda").breakdown["device_overhead"]

    assert overhead - estimate(narrow, "cuda").breakdown["device_overhead"] == (
        CUBLASLT_WORKSPACE_BYTES_DEFAULT)


# Agreement with measurement -------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
@pytest.mark.parametrize("output_activation", ["sigmoid", "identity"])
def test_tiny_odd_models_are_exact(depth, activation, output_activation):
    for phase, optimizer in PHASE_OPTIMIZERS:
        config = RunConfig(input_dim=3, width=5, output_dim=2, depth=depth, batch_size=7,
                           phase=phase, optimizer=optimizer, activation=activation,
                           output_activation=output_activation, dtype="bfloat16")

        assert estimate(config).peak_bytes == measured_peak_bytes(config), config


def test_randomized_grid_within_a_thousandth_of_measured():
    configs = random_configs(seed=20260314, per_cell=4)
    misses = []
    for config in configs:
        measured = measured_peak_bytes(config)
        predicted = estimate(config).peak_bytes
        if abs(predicted - measured) > 0.001 * measured:
            misses.append((config, measured, predicted))

    assert len(configs) == len(PHASE_OPTIMIZERS) * len(DTYPES) * 4
    assert misses == []


# Properties ------------------------------------------------------------------------------------


# Ids without the word "cuda": conftest skips tests carrying that keyword, and these need
# no GPU.
@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["cpu_rules", "gpu_rules"])
def test_breakdown_sums_to_peak_bytes(device_type):
    for config in random_configs(seed=7, per_cell=5):
        result = estimate(config, device_type)

        assert tuple(result.breakdown) == CATEGORIES
        assert sum(result.breakdown.values()) == result.peak_bytes
        assert min(result.breakdown.values()) >= 0


@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["cpu_rules", "gpu_rules"])
def test_peak_never_falls_as_batch_width_or_depth_grow(device_type):
    # mlp.fit searches over batch size, width and depth (from depth 2), which needs this.
    for config in random_configs(seed=11, per_cell=2):
        by_batch = [estimate(config.replace(batch_size=b), device_type).peak_bytes
                    for b in range(1, 60)]
        by_width = [estimate(config.replace(width=w), device_type).peak_bytes
                    for w in range(1, 60)]
        by_depth = [estimate(config.replace(depth=d), device_type).peak_bytes
                    for d in range(2, 30)]

        assert by_batch == sorted(by_batch), config
        assert by_width == sorted(by_width), config
        assert by_depth == sorted(by_depth), config


def test_gradients_and_optimizer_state_appear_only_where_the_phase_keeps_them():
    base = RunConfig(input_dim=20, width=30, output_dim=4, depth=3, batch_size=1)

    forward = estimate(base.replace(phase="forward", optimizer="none")).breakdown
    adam = estimate(base.replace(phase="train-step", optimizer="adam")).breakdown
    sgd = estimate(base.replace(phase="train-step", optimizer="sgd")).breakdown

    assert forward["gradients"] == forward["optimizer_state"] == 0
    param_bytes = count_params(20, 30, 4, 3) * 4
    assert adam["optimizer_state"] == 2 * param_bytes + 6 * 4  # exp_avg, exp_avg_sq, steps
    assert sgd["optimizer_state"] == 0


def test_a_thousand_configurations_take_well_under_a_second():
    configs = [RunConfig(depth=depth, width=width, batch_size=64)
               for depth in range(1, 41) for width in range(128, 3328, 128)]

    start = time.perf_counter()
    results = [estimate(c, "cuda") for c in configs]
    elapsed_s = time.perf_counter() - start

    assert len(results) == 1000
    assert elapsed_s < 0.5


def test_deep_models_cost_no_more_than_shallow_ones():
    # Identical hidden layers are folded, so depth 1,000 is one arithmetic block.
    start = time.perf_counter()
    result = estimate(RunConfig(depth=1000, width=4096, batch_size=2**20), "cuda")

    assert time.perf_counter() - start < 0.05
    assert result.peak_bytes > 1000 * 4096 * 2**20 * 4  # saved activations alone


@pytest.mark.parametrize("kwargs, name", [
    ({"device_type": "tpu"}, "device_type"),
    ({"device_type": "cuda:0"}, "device_type"),
    ({"method": "guess"}, "method"),
])
def test_bad_device_type_or_method_is_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        estimate(RunConfig(), **kwargs)


def test_as_dict_carries_the_configuration_and_the_breakdown():
    result = estimate(RunConfig(batch_size=9))

    record = result.as_dict()

    assert isinstance(result, Estimate)
    assert record["batch_size"] == 9 and record["method"] == "analytic"
    assert record["peak_bytes"] == sum(record["breakdown"].values())
    json.dumps(record)


# Command line ----------------------------------------------------------------------------------

CLI = ["estimate", "--depth", "4", "--width", "33", "--input-dim", "7", "--output-dim", "3",
       "--batch-size", "17", "--phase", "train-step", "--optimizer", "adamw"]


def test_cli_json_prints_the_estimate(capsys):
    assert main(CLI + ["--device", "cpu", "--json"]) == 0

    record = json.loads(capsys.readouterr().out)

    config = RunConfig(input_dim=7, width=33, output_dim=3, depth=4, batch_size=17,
                       phase="train-step", optimizer="adamw")
    assert record["params"] == count_params(7, 33, 3, 4)
    assert record["peak_bytes"] == measured_peak_bytes(config)
    assert set(record["breakdown"]) == set(CATEGORIES)
    assert record["peak_moment"] in ("forward", "loss", "backward", "optimizer-step")


def test_cli_predicts_for_cuda_without_a_gpu(capsys):
    assert main(CLI + ["--device", "cuda", "--method", "trace", "--json"]) == 0

    record = json.loads(capsys.readouterr().out)

    assert record["device_type"] == "cuda" and record["method"] == "trace"
    assert record["breakdown"]["device_overhead"] > 0


def test_cli_summary_is_labelled_in_gib(capsys):
    assert main(CLI + ["--device", "cpu"]) == 0

    out = capsys.readouterr().out

    assert "GiB" in out and "bytes" in out
    for category in CATEGORIES:
        assert category in out


@pytest.mark.parametrize("bad", [["--device", "tpu"], ["--method", "guess"],
                                 ["--batch-size", "0"], ["--depth", "x"]])
def test_cli_bad_option_is_one_line_and_status_2(capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        main(CLI + bad)

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and bad[0] in err


# CUDA ------------------------------------------------------------------------------------------

CUDA_CONFIGS = [
    RunConfig(input_dim=784, width=1024, output_dim=10, depth=3, batch_size=64,
              phase=phase, optimizer=optimizer, dtype=dtype)
    for phase, optimizer in PHASE_OPTIMIZERS for dtype in DTYPES
] + [
    RunConfig(input_dim=1000, width=4096, output_dim=1, depth=8, batch_size=4096,
              phase="train-step", optimizer="adam", activation="gelu"),
    RunConfig(input_dim=17, width=3001, output_dim=5, depth=12, batch_size=777,
              phase="forward-backward", output_activation="identity", dtype="bfloat16"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("config", CUDA_CONFIGS, ids=lambda c: f"{c.phase}-{c.optimizer}-{c.dtype}")
def test_cuda_estimate_within_a_hundredth_of_max_memory_allocated(config):
    workload = build_workload(config, "cuda")
    workload.run_round()
    measured = measure_peak(workload).peak_bytes

    predicted = estimate(config, "cuda").peak_bytes

    assert predicted == pytest.approx(measured, rel=0.01), (measured, predicted)
