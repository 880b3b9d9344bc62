import random

import pytest
import torch

from mlp.config import RunConfig
from mlp.model import MLP, build_model, count_params, layer_dims


def test_classic_example_has_1217_parameters():
    model = MLP(3, 32, 1)

    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1217
    assert count_params(3, 32, 1) == 1217


def test_classic_example_maps_a_batch_of_three_into_the_unit_interval():
    model = MLP(3, 32, 1)

    output = model(torch.randn(3, 3))

    assert output.shape == (3, 1)
    assert torch.all((output > 0) & (output < 1))


def test_classic_example_prints_and_names_its_layers():
    model = MLP(3, 32, 1)

    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}

    assert "Linear(in_features=3, out_features=32, bias=True)" in str(model)
    assert "Sigmoid()" in str(model) and "ReLU()" in str(model)
    assert shapes == {
        "layer_in.weight": (32, 3),
        "layer_in.bias": (32,),
        "layer_hidden.0.weight": (32, 32),
        "layer_hidden.0.bias": (32,),
        "layer_out.weight": (1, 32),
        "layer_out.bias": (1,),
    }


def test_depth_one_maps_input_to_output():
    model = MLP(5, 99, 2, depth=1)

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    assert [(m.in_features, m.out_features) for m in linears] == [(5, 2)]
    assert model(torch.randn(4, 5)).shape == (4, 2)


@pytest.mark.parametrize("depth", [1, 2, 3, 7])
def test_depth_counts_every_linear_layer(depth):
    model = MLP(4, 8, 3, depth=depth)

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    assert len(linears) == depth
    assert len(layer_dims(4, 8, 3, depth)) == depth


def test_closed_form_count_matches_built_models():
    rng = random.Random(0)
    for _ in range(50):
        dims = (rng.randint(1, 300), rng.randint(1, 300), rng.randint(1, 50), rng.randint(1, 9))
        model = MLP(*dims[:3], depth=dims[3], device="meta")

        assert count_params(*dims) == sum(p.numel() for p in model.parameters()), dims


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_identity_output_leaves_values_unbounded(activation):
    model = MLP(3, 16, 2, activation=activation, output_activation="identity")

    assert isinstance(model.act_out, torch.nn.Identity)
    assert model(torch.randn(2, 3)).shape == (2, 2)


def test_build_model_uses_the_configured_dtype_and_device():
    config = RunConfig(input_dim=3, width=8, output_dim=1, depth=3, dtype="bfloat16")

    model = build_model(config, "meta")

    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize(
    "args, field",
    [
        ((0, 32, 1), "input_dim"),
        ((3, -3, 1), "hidden_dim"),
        ((3, 32, 1.5), "output_dim"),
        ((3, 32, 1, 0), "depth"),
        ((3, "32", 1), "hidden_dim"),
    ],
)
def test_bad_sizes_name_the_argument(args, field):
    with pytest.raises(ValueError, match=field):
        MLP(*args)


def test_unknown_activation_lists_the_choices():
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, tanh"):
        MLP(3, 32, 1, activation="swish")
