import pytest

from mlp.config import RunConfig


def test_optimizer_is_dropped_outside_train_step():
    assert RunConfig(phase="forward", optimizer="adam").optimizer == "none"


def test_integral_floats_are_accepted_as_sizes():
    assert RunConfig(batch_size=64.0).batch_size == 64


@pytest.mark.parametrize(
    "field, value",
    [
        ("depth", 0),
        ("width", -1),
        ("batch_size", 2.5),
        ("input_dim", "784"),
        ("output_dim", True),
        ("width", 2**40),
        ("batch_size", float("nan")),
    ],
)
def test_bad_sizes_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        RunConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [("phase", "fwd"), ("dtype", "float64"), ("optimizer", "lamb"), ("activation", "swish")],
)
def test_unknown_names_raise_value_error_listing_choices(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be one of"):
        RunConfig(**{field: value})


def test_train_step_needs_an_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        RunConfig(phase="train-step", optimizer="none")
