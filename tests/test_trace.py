import random
import time

import pytest
import torch
from test_estimate import (
    CUDA_CONFIGS,
    PHASE_OPTIMIZERS,
    measured_peak_bytes,
    random_configs,
)

from mlp.config import RunConfig
from mlp.estimate import CATEGORIES, estimate
from mlp.memory import measure_peak
from mlp.phases import build_workload
from mlp.trace import RuleTracker, meta_workload, trace_estimate


def test_meta_loss_storage_is_one_element_so_the_tracker_adds_the_rest():
    # What the meta device cannot see: on the CPU the loss holds 4 x 3 values (see
    # test_estimate.test_cpu_loss_keeps_its_batch_sized_buffer), on meta only one.
    output = torch.rand(4, 3, device="meta")
    target = torch.rand(4, 3, device="meta")
    config = RunConfig(input_dim=2, width=2, output_dim=3, depth=1, batch_size=4,
                       phase="forward-backward")
    tracker = RuleTracker(config, "cpu")

    with tracker:
        loss = torch.nn.functional.binary_cross_entropy(output, target)
        assert loss.untyped_storage().nbytes() == 4
        assert tracker.current_bytes == 4 * 3 * 4
    del loss
    assert tracker.current_bytes == 0


def test_cuda_rules_round_each_storage_to_512_bytes():
    config = RunConfig(phase="forward")
    tracker = RuleTracker(config, "cuda")

    with tracker:
        a = torch.empty(3, device="meta")  # 12 bytes, one block
        b = torch.empty(129, device="meta")  # 516 bytes, two blocks
        assert tracker.current_bytes == 512 + 1024
        del a, b


def test_cuda_target_uses_the_foreach_optimizer():
    config = RunConfig(phase="train-step", optimizer="adam")

    assert meta_workload(config, "cuda").optimizer.param_groups[0]["foreach"] is True
    assert not meta_workload(config, "cpu").optimizer.param_groups[0]["foreach"]


def test_trace_matches_the_worked_forward_case():
    # MLP(3, 32, 1) forward at batch 3: 6,068 bytes (worked in test_estimate).
    config = RunConfig(input_dim=3, width=32, output_dim=1, depth=3, batch_size=3,
                       phase="forward")

    result = estimate(config, method="trace")

    assert result.method == "trace" and result.peak_bytes == 6068
    assert result.breakdown["transient"] == 1152 and result.peak_moment == "forward"


def test_randomized_grid_within_a_hundredth_of_measured():
    configs = random_configs(seed=424242, per_cell=2)
    misses = []
    for config in configs:
        measured = measured_peak_bytes(config)
        traced = trace_estimate(config).peak_bytes
        if abs(traced - measured) > 0.01 * measured:
            misses.append((config, measured, traced))

    assert misses == []


@pytest.mark.parametrize("device_type", ["cpu", "cuda"], ids=["cpu_rules", "gpu_rules"])
def test_trace_and_analytic_agree_on_peak_breakdown_and_moment(device_type):
    # Two derivations that share only the device rules: the real step's operators on meta,
    # and the closed form. Run for CUDA's rules too (foreach Adam, 512-byte blocks).
    rng = random.Random(3)
    configs = random_configs(seed=99, per_cell=1) + [
        RunConfig(input_dim=rng.randint(1, 9), width=rng.randint(1, 9),
                  output_dim=rng.randint(1, 9), depth=depth, batch_size=rng.randint(1, 9),
                  phase=phase, optimizer=optimizer)
        for depth in (1, 2, 3, 23) for phase, optimizer in PHASE_OPTIMIZERS
    ] + [
        # Deep, with each hidden layer's backward adding bytes (new gradients outweigh the
        # activations it frees) and taking them away: the folded layers peak at either end.
        RunConfig(input_dim=5, width=64, output_dim=3, depth=30, batch_size=1,
                  phase="train-step", optimizer="adam"),
        RunConfig(input_dim=5, width=3, output_dim=3, depth=30, batch_size=500,
                  phase="train-step", optimizer="momentum", activation="gelu"),
    ]
    for config in configs:
        traced = trace_estimate(config, device_type, capability=(8, 0))
        analytic = estimate(config, device_type, capability=(8, 0))

        assert traced.peak_bytes == analytic.peak_bytes, config
        assert traced.breakdown == analytic.breakdown, config
        assert traced.peak_moment == analytic.peak_moment, config


def test_breakdown_sums_to_peak_bytes():
    for config in random_configs(seed=5, per_cell=1):
        result = trace_estimate(config, "cuda")

        assert tuple(result.breakdown) == CATEGORIES
        assert sum(result.breakdown.values()) == result.peak_bytes


def test_a_model_too_big_for_any_machine_is_traced_in_moments():
    # 4 layers of 65,536 units at batch 2**20: terabytes, which meta never allocates.
    config = RunConfig(input_dim=65536, width=65536, output_dim=65536, depth=4,
                       batch_size=2**20, phase="train-step", optimizer="adam")

    start = time.perf_counter()
    result = trace_estimate(config, "cuda")

    assert time.perf_counter() - start < 5
    assert result.peak_bytes > 2**40
    assert result.peak_bytes == estimate(config, "cuda").peak_bytes


def test_bad_device_type_is_refused():
    with pytest.raises(ValueError, match="device_type"):
        trace_estimate(RunConfig(), "mps")


@pytest.mark.cuda
@pytest.mark.parametrize("config", CUDA_CONFIGS, ids=lambda c: f"{c.phase}-{c.optimizer}-{c.dtype}")
def test_cuda_trace_within_a_hundredth_of_max_memory_allocated(config):
    workload = build_workload(config, "cuda")
    workload.run_round()
    measured = measure_peak(workload).peak_bytes

    traced = trace_estimate(config, "cuda").peak_bytes

    assert traced == pytest.approx(measured, rel=0.01), (measured, traced)
