import pytest
import torch
from reference_memory import profiler_peak_bytes

from mlp.config import OPTIMIZERS, PHASES, RunConfig
from mlp.cpu_memory import LiveBytesTracker
from mlp.memory import measure_peak
from mlp.phases import build_workload


def test_a_new_tensor_counts_its_bytes_until_freed():
    tracker = LiveBytesTracker()
    with tracker:
        a = torch.empty(1000)  # 1000 float32: 4000 bytes
        assert tracker.current_bytes == 4000
        b = a * 2  # a second 4000-byte storage
        assert tracker.current_bytes == 8000
        del b
        assert tracker.current_bytes == 4000
        del a
    assert tracker.current_bytes == 0
    assert tracker.peak_bytes == 8000


def test_views_and_in_place_updates_add_nothing():
    tracker = LiveBytesTracker()
    with tracker:
        a = torch.zeros(10, 100)  # 4000 bytes
        v = a.view(1000)[:10]
        a.add_(1.0)
        t = a.t()
        assert tracker.current_bytes == 4000
        del v, t, a
    assert tracker.peak_bytes == 4000


def test_tensors_made_before_entering_are_counted_once_tracked():
    a = torch.empty(256, dtype=torch.bfloat16)  # 512 bytes
    tracker = LiveBytesTracker()

    tracker.track([a, a[:10]])

    assert tracker.current_bytes == 512


def test_other_devices_are_ignored():
    tracker = LiveBytesTracker("cpu")
    with tracker:
        m = torch.empty(1000, device="meta")
        assert tracker.current_bytes == 0
        del m


def test_classic_mlp_forward_peak_worked_by_hand():
    # MLP(3, 32, 1) at batch 3, float32. Held before the step: 1,217 parameters (4,868 bytes),
    # the batch (3 x 3 x 4 = 36 bytes) and the targets (3 x 1 x 4 = 12 bytes): 4,916 bytes.
    # In the forward, while the hidden layer's activation is made, three (3, 32) tensors
    # (384 bytes each) are alive: the input layer's activation (still bound to `h`), the
    # hidden linear's output and the new activation: 1,152 bytes. Peak: 6,068 bytes.
    config = RunConfig(input_dim=3, width=32, output_dim=1, depth=3, batch_size=3,
                       phase="forward")
    workload = build_workload(config, "cpu")
    workload.run_round()

    memory = measure_peak(workload)

    assert memory.start_bytes == 4868 + 36 + 12
    assert memory.peak_bytes == 4916 + 3 * 384


def test_sgd_train_step_peak_worked_by_hand():
    # One linear layer, 4 -> 2, batch 5, plain SGD, float32 (4 bytes a value).
    # Held before the step: weight 8 + bias 2 values, batch 20 and targets 10: 160 bytes.
    # Forward: logits z (10 values) and the sigmoid's output y (10, saved for backward);
    # z is freed when the forward returns. The CPU binary cross-entropy keeps its scalar loss
    # in a batch-sized buffer (10 values). Live: 160 + 40 + 40 = 240.
    # Backward: the loss's seed gradient (1 value, 4 bytes), dL/dy (10 values), then dL/dz
    # (10 values) while y, the loss buffer and dL/dy are all still alive:
    # 240 + 4 + 40 + 40 = 324 bytes, the peak. The weight and bias gradients (32 + 8 bytes)
    # come after dL/dy and the seed are freed, so they do not pass it.
    config = RunConfig(input_dim=4, width=3, output_dim=2, depth=1, batch_size=5,
                       phase="train-step", optimizer="sgd")
    workload = build_workload(config, "cpu")
    workload.run_round()

    memory = measure_peak(workload)

    assert memory.start_bytes == 160
    assert memory.peak_bytes == 324
    assert profiler_peak_bytes(config) == 324


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_probe_agrees_with_the_profiler_for_every_phase(phase, dtype):
    config = RunConfig(input_dim=37, width=129, output_dim=3, depth=4, batch_size=65,
                       phase=phase, dtype=dtype, optimizer="adam")
    workload = build_workload(config, "cpu")
    workload.run_round()

    measured = measure_peak(workload).peak_bytes

    assert measured == pytest.approx(profiler_peak_bytes(config), rel=1e-3)


@pytest.mark.parametrize("optimizer", OPTIMIZERS[1:])
def test_probe_agrees_with_the_profiler_for_every_optimizer(optimizer):
    config = RunConfig(input_dim=11, width=300, output_dim=1, depth=3, batch_size=17,
                       phase="train-step", optimizer=optimizer)
    workload = build_workload(config, "cpu")
    workload.run_round()

    measured = measure_peak(workload).peak_bytes

    assert measured == pytest.approx(profiler_peak_bytes(config), rel=1e-3)
