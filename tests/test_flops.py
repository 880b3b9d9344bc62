import pytest

from mlp.config import RunConfig
from mlp.flops import count_flops
from mlp.model import layer_dims
from mlp.phases import build_workload

CONFIG = dict(input_dim=20, width=48, output_dim=3, depth=4, batch_size=8)


def _matmul_flops(config):
    # A (batch, in) x (in, out) matrix product is batch * in * out multiply-adds: 2x FLOPs.
    dims = layer_dims(config.input_dim, config.width, config.output_dim, config.depth)
    return [2 * config.batch_size * fan_in * fan_out for fan_in, fan_out in dims]


def _counted(config):
    workload = build_workload(config, "cpu")
    workload.run_round()
    return count_flops(workload)


def test_forward_counts_one_matmul_per_layer():
    config = RunConfig(phase="forward", **CONFIG)

    assert _counted(config) == sum(_matmul_flops(config))


@pytest.mark.parametrize("phase, optimizer", [("forward-backward", "none"),
                                              ("train-step", "adam")])
def test_training_counts_forward_and_two_backward_matmuls_but_not_the_input_gradient(
    phase, optimizer
):
    # Backward needs the weight gradient of every layer and the input gradient of every
    # layer but the first (the batch needs no gradient): 3x the forward less one matmul.
    config = RunConfig(phase=phase, optimizer=optimizer, **CONFIG)
    per_layer = _matmul_flops(config)

    assert _counted(config) == 3 * sum(per_layer) - per_layer[0]


def test_backward_alone_leaves_the_forward_out():
    config = RunConfig(phase="backward", **CONFIG)
    per_layer = _matmul_flops(config)

    assert _counted(config) == 2 * sum(per_layer) - per_layer[0]
