import json
import math

import pytest
import torch

import mlp.gpus
from mlp.cli import main
from mlp.device import GpuFacts, nvml_gpu_facts
from mlp.gpus import DEFAULT_MARGIN, GPUS, Budget, resolve_budget

# Data-sheet capacities in GB (10**9 bytes), to check each catalogue figure against a second
# source: a driver reports within -5% and +8% of the round number (binary units and ECC).
DATA_SHEET_GB = {
    "t4": 16, "l4": 24, "a10": 24, "rtx3090": 24, "rtx4090": 24, "rtx5090": 32,
    "v100-16gb": 16, "v100-32gb": 32, "a6000": 48, "l40s": 48, "a100-40gb": 40,
    "a100-80gb": 80, "h100-80gb": 80, "h200": 141, "mi250x": 64, "mi300x": 192,
}


def test_catalogue_holds_the_common_gpus_named_in_lower_case():
    for name in ("t4", "l4", "a10", "rtx4090", "a100-40gb", "a100-80gb", "h100-80gb", "h200",
                 "mi300x", "v100-16gb", "v100-32gb", "rtx3090", "a6000", "l40s", "mi250x"):
        assert name in GPUS
    for name, spec in GPUS.items():
        assert spec.name == name == name.lower()
        assert spec.vendor in ("nvidia", "amd")
        assert isinstance(spec.memory_bytes, int)


@pytest.mark.parametrize("name", sorted(DATA_SHEET_GB))
def test_catalogue_memory_agrees_with_the_data_sheet(name):
    ratio = GPUS[name].memory_bytes / (DATA_SHEET_GB[name] * 10**9)

    assert 0.95 <= ratio <= 1.08


def test_every_gpu_is_checked_against_a_data_sheet():
    assert set(GPUS) == set(DATA_SHEET_GB)


def test_a_named_gpu_holds_back_the_default_margin():
    budget = resolve_budget(gpu="h100-80gb")

    assert budget.total_bytes == GPUS["h100-80gb"].memory_bytes == 81_559 * 2**20
    assert budget.margin == DEFAULT_MARGIN
    assert budget.budget_bytes == math.floor(budget.total_bytes * (1 - DEFAULT_MARGIN))
    assert budget.source == "h100-80gb" and budget.free_bytes is None


def test_gpu_names_are_case_insensitive():
    assert resolve_budget(gpu="H100-80GB") == resolve_budget(gpu="h100-80gb")


def test_margin_zero_uses_the_whole_memory():
    budget = resolve_budget(gpu="t4", margin=0)

    assert budget.budget_bytes == budget.total_bytes == 15 * 2**30


@pytest.mark.parametrize("memory, total_bytes", [
    ("24GiB", 24 * 2**30),
    ("80GB", 80 * 10**9),
    ("512MiB", 512 * 2**20),
    ("1048576", 2**20),
    (2**30, 2**30),
])
def test_memory_sizes_are_read_in_the_unit_given(memory, total_bytes):
    budget = resolve_budget(memory=memory, margin=0.25)

    assert budget.total_bytes == total_bytes
    assert budget.budget_bytes == math.floor(total_bytes * 0.75)
    assert str(memory) in budget.source


def test_describe_labels_gib_and_the_margin():
    text = resolve_budget(memory="10GiB", margin=0.1).describe()

    assert "9.00 GiB of 10.00 GiB" in text and "10% margin" in text


def test_auto_reads_total_and_free_memory_from_nvml(monkeypatch):
    facts = GpuFacts(name="NVIDIA H200", total_bytes=143_771 * 2**20,
                     free_bytes=140_000 * 2**20, driver_version="570.00")
    monkeypatch.setattr(mlp.gpus, "nvml_gpu_facts", lambda: facts)

    budget = resolve_budget(gpu="auto", margin=0)

    assert budget == Budget(total_bytes=facts.total_bytes, budget_bytes=facts.total_bytes,
                            margin=0.0, source="auto: NVIDIA H200",
                            free_bytes=facts.free_bytes)


def test_auto_without_an_nvidia_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(mlp.gpus, "nvml_gpu_facts", lambda: None)

    with pytest.raises(ValueError, match="gpu auto needs an NVIDIA GPU.*--memory"):
        resolve_budget(gpu="auto")


@pytest.mark.skipif(nvml_gpu_facts() is not None, reason="this machine has an NVIDIA GPU")
def test_auto_on_this_machine_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="gpu auto"):
        resolve_budget(gpu="auto")


@pytest.mark.cuda
def test_auto_on_a_gpu_matches_what_torch_reports():
    budget = resolve_budget(gpu="auto", margin=0)

    # NVML counts memory the driver reserves for itself, which CUDA leaves out: a few
    # hundred MiB on an 80 GiB board.
    free_bytes, total_bytes = torch.cuda.mem_get_info()
    assert budget.total_bytes == pytest.approx(total_bytes, rel=0.02)
    assert budget.free_bytes <= budget.total_bytes
    assert torch.cuda.get_device_name() in budget.source


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of gpu"),
    ({"gpu": "t4", "memory": "16GB"}, "exactly one of gpu"),
    ({"gpu": "h100"}, "gpu must be one of t4, l4"),
    ({"gpu": "t4", "margin": -0.1}, "margin must be a fraction"),
    ({"gpu": "t4", "margin": 1.0}, "margin must be a fraction"),
    ({"gpu": "t4", "margin": float("nan")}, "margin must be a fraction"),
    ({"gpu": "t4", "margin": "0.1"}, "margin must be a fraction"),
    ({"memory": "lots"}, "memory must be a byte count"),
    ({"memory": "0GiB"}, "memory must be more than 0"),
    ({"memory": -1}, "memory must be more than 0"),
])
def test_bad_budgets_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_budget(**kwargs)


def test_gpus_command_lists_the_catalogue_in_gib(capsys):
    assert main(["gpus"]) == 0

    out = capsys.readouterr().out
    assert "memory (GiB)" in out and "79.65" in out  # h100-80gb: 81,559 MiB
    assert all(name in out for name in GPUS)
    assert f"{DEFAULT_MARGIN:.0%}" in out


def test_gpus_command_json_gives_bytes(capsys):
    assert main(["gpus", "--json"]) == 0

    listed = json.loads(capsys.readouterr().out)
    assert {row["name"]: row["memory_bytes"] for row in listed} == {
        name: spec.memory_bytes for name, spec in GPUS.items()}
