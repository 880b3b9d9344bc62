"""The mlpbench grid options and parametrization (the hooks live in mlp.benchsuite)."""

from mlp.benchsuite import (  # noqa: F401  (pytest finds hooks and fixtures by name)
    mlp_device,
    pytest_addoption,
    pytest_benchmark_update_json,
    pytest_benchmark_update_machine_info,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
)
