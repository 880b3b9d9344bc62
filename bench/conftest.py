"""The benchmark grid's options, parametrization and fixtures come from the mlp.benchsuite
plugin, which pyproject.toml loads for every pytest run in this repository (`-p
mlp.benchsuite`); outside it, load it yourself: `pytest -p mlp.benchsuite ...`."""
