"""examples/: the classic MLP walk-through runs, and what it prints is what the library says."""

import subprocess
import sys
from pathlib import Path

import pytest

from mlp.advise import advise
from mlp.config import RunConfig
from mlp.fit import max_batch_size
from mlp.gpus import resolve_budget
from mlp.model import MLP

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "classic_mlp.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    png = tmp_path_factory.mktemp("example") / "curve.png"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--gpu", "t4", "--plot", str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done, png


def test_classic_example_runs_and_draws_its_curve(run):
    done, png = run
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_classic_example_counts_the_parameters_pytorch_counts(run):
    done, _ = run
    params = sum(p.numel() for p in MLP(3, 32, 1, depth=3).parameters())
    assert f"parameters: {params:,} by formula, {params:,} counted by PyTorch" in done.stdout


def test_classic_example_measures_then_estimates_each_batch(run):
    done, _ = run
    rows = [line.split() for line in done.stdout.splitlines()
            if line.strip() and line.split()[0].replace(",", "").isdigit()]
    assert len(rows) == 8
    for row in rows:  # batch, measured (value unit), estimated (value unit), error
        error = float(row[-1].rstrip("%"))
        assert abs(error) < 5.0, row  # the estimate against the measurement


def test_classic_example_gives_the_advice_the_library_gives(run):
    done, _ = run
    budget = resolve_budget(gpu="t4")
    config = RunConfig(input_dim=3, width=32, output_dim=1, depth=3, batch_size=1)
    fit = max_batch_size(config, budget.budget_bytes, device_type="cuda")
    advice = advise(config, budget)
    assert f"largest batch that fits: {fit.max_batch_size:,}" in done.stdout
    assert f"recommended batch size: {advice.recommended_batch_size:,}" in done.stdout
