"""The multi-layer perceptron that every benchmark runs, and its parameter count."""

from __future__ import annotations

import torch
from torch import nn

from mlp.config import (
    ACTIVATIONS,
    MAX_DEPTH,
    MAX_DIM,
    OUTPUT_ACTIVATIONS,
    RunConfig,
    check_choice,
    check_positive_int,
)

_ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
_OUTPUT_MODULES = {"sigmoid": nn.Sigmoid, "identity": nn.Identity}


def layer_dims(input_dim: int, hidden_dim: int, output_dim: int, depth: int) -> list[tuple]:
    """(in_features, out_features) of each linear layer, input layer first."""
    if depth == 1:
        return [(input_dim, output_dim)]
    return [(input_dim, hidden_dim)] + [(hidden_dim, hidden_dim)] * (depth - 2) + [
        (hidden_dim, output_dim)
    ]


def count_params(input_dim: int, hidden_dim: int, output_dim: int, depth: int = 3) -> int:
    """Trainable parameters of MLP(input_dim, hidden_dim, output_dim, depth), without building it.

    Each linear layer holds in * out weights and out biases, so for depth >= 2 the total is
    (input_dim + 1) * hidden_dim + (depth - 2) * (hidden_dim + 1) * hidden_dim
    + (hidden_dim + 1) * output_dim. MLP(3, 32, 1) gives 128 + 1056 + 33 = 1,217.
    """
    _check_dims(input_dim, hidden_dim, output_dim, depth)
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in layer_dims(
        input_dim, hidden_dim, output_dim, depth))


def _check_dims(input_dim, hidden_dim, output_dim, depth):
    check_positive_int("input_dim", input_dim, MAX_DIM)
    check_positive_int("hidden_dim", hidden_dim, MAX_DIM)
    check_positive_int("output_dim", output_dim, MAX_DIM)
    check_positive_int("depth", depth, MAX_DEPTH)


class MLP(nn.Module):
    """`depth` linear layers: input layer, depth - 2 hidden layers, output layer.

    The activation follows every layer but the last; output_activation follows the last.
    With depth=1 the model is one linear layer from input_dim to output_dim.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        depth: int = 3,
        activation: str = "relu",
        output_activation: str = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        _check_dims(input_dim, hidden_dim, output_dim, depth)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        dims = layer_dims(input_dim, hidden_dim, output_dim, depth)
        factory = {"device": device, "dtype": dtype}

        # Named as in the classic three-layer example: layer_in, layer_hidden..., layer_out.
        self.layer_in = nn.Linear(*dims[0], **factory) if depth > 1 else None
        self.layer_hidden = nn.ModuleList(nn.Linear(*d, **factory) for d in dims[1:-1])
        self.layer_out = nn.Linear(*dims[-1], **factory)
        self.act = _ACTIVATION_MODULES[activation]()
        self.act_out = _OUTPUT_MODULES[output_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (batch_size, input_dim)
        if self.layer_in is not None:
            h = self.act(self.layer_in(h))  # (batch_size, hidden_dim)
        for layer in self.layer_hidden:
            h = self.act(layer(h))  # (batch_size, hidden_dim)
        return self.act_out(self.layer_out(h))  # (batch_size, output_dim)


def build_model(config: RunConfig, device: torch.device | str = "cpu") -> MLP:
    """The model a configuration describes, created directly on device in its dtype."""
    return MLP(
        config.input_dim,
        config.width,
        config.output_dim,
        depth=config.depth,
        activation=config.activation,
        output_activation=config.output_activation,
        device=device,
        dtype=config.torch_dtype,
    )
