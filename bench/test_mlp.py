"""One benchmark per configuration of the grid: `pytest --benchmark-only` runs them all."""

from mlp.benchsuite import run_benchmark


def test_mlp(benchmark, request, mlp_config, mlp_device):
    run_benchmark(benchmark, request, mlp_config, mlp_device)
