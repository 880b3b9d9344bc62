import pytest
import torch

from mlp.config import OPTIMIZERS, RunConfig
from mlp.phases import build_workload

SMALL = dict(input_dim=5, width=7, output_dim=2, depth=3, batch_size=4)


def test_forward_runs_without_building_a_graph():
    workload = build_workload(RunConfig(phase="forward", **SMALL), "cpu")

    workload.run_round()

    assert all(p.grad is None for p in workload.model.parameters())
    assert not workload.model.training


def test_backward_phase_prepares_the_graph_untimed_and_step_only_runs_backward():
    workload = build_workload(RunConfig(phase="backward", **SMALL), "cpu")

    workload.prepare()
    assert workload._loss is not None and workload._loss.requires_grad
    assert all(p.grad is None for p in workload.model.parameters())

    workload.step()
    assert workload._loss is None
    assert all(p.grad is not None for p in workload.model.parameters())


def test_forward_backward_accumulates_gradients_across_steps():
    workload = build_workload(RunConfig(phase="forward-backward", **SMALL), "cpu")
    workload.run_round()
    first = workload.model.layer_out.bias.grad.clone()

    workload.run_round()

    torch.testing.assert_close(workload.model.layer_out.bias.grad, 2 * first)


@pytest.mark.parametrize("optimizer", OPTIMIZERS[1:])
def test_train_step_updates_parameters_and_drops_gradients(optimizer):
    workload = build_workload(RunConfig(phase="train-step", optimizer=optimizer, **SMALL), "cpu")
    before = [p.detach().clone() for p in workload.model.parameters()]

    workload.run_round()

    after = list(workload.model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert all(p.grad is None for p in after)


@pytest.mark.parametrize("optimizer, state_keys", [
    ("sgd", set()),
    ("momentum", {"momentum_buffer"}),
    ("adam", {"step", "exp_avg", "exp_avg_sq"}),
    ("adamw", {"step", "exp_avg", "exp_avg_sq"}),
])
def test_optimizer_state_is_listed_among_state_tensors(optimizer, state_keys):
    workload = build_workload(RunConfig(phase="train-step", optimizer=optimizer, **SMALL), "cpu")
    workload.run_round()

    keys = {k for state in workload.optimizer.state.values() for k in state}
    n_state = sum(1 for s in workload.optimizer.state.values() for v in s.values()
                  if isinstance(v, torch.Tensor))

    assert keys == state_keys
    assert len(workload.state_tensors()) == 2 + 6 + n_state  # batch, targets, 3 weights, 3 biases


def test_identity_output_trains_with_mean_squared_error():
    config = RunConfig(phase="train-step", output_activation="identity", **SMALL)
    workload = build_workload(config, "cpu")

    workload.run_round()

    assert workload.model.act_out.__class__ is torch.nn.Identity


def test_bfloat16_workload_keeps_its_dtype():
    workload = build_workload(RunConfig(phase="train-step", dtype="bfloat16", **SMALL), "cpu")

    workload.run_round()

    assert {t.dtype for t in workload.state_tensors() if t.dim() > 0} == {torch.bfloat16}
