"""The CUDA paths of measurement, run where a GPU is visible (skipped elsewhere)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlp.benchsuite import NotFitting, prepare_measured
from mlp.config import RunConfig
from mlp.measure import measure
from mlp.phases import build_workload

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parent.parent
CONFIG = RunConfig(input_dim=784, width=1024, output_dim=10, depth=4, batch_size=256,
                   phase="train-step", optimizer="adam")


def test_a_step_returns_only_when_the_gpu_is_done():
    workload = build_workload(CONFIG, "cuda")
    workload.run_round()

    workload.step()

    assert torch.cuda.current_stream().query()  # nothing left queued


def test_measure_reports_allocated_and_reserved_peaks():
    result = measure(CONFIG, torch.device("cuda", 0), min_rounds=3, max_time_s=0.1)

    assert result.device == "cuda:0"
    assert result.peak_bytes > result.start_bytes > 0
    assert result.reserved_bytes >= result.peak_bytes
    assert result.timing.median_ms > 0


def test_out_of_memory_on_the_gpu_leaves_later_measurements_undisturbed():
    device = torch.device("cuda", 0)
    total_bytes = torch.cuda.get_device_properties(device).total_memory
    huge = CONFIG.replace(batch_size=int(2 * total_bytes / (784 * 4)))  # inputs: twice the card

    first = prepare_measured(CONFIG, device)
    failed = prepare_measured(huge, device)
    again = prepare_measured(CONFIG, device)

    assert isinstance(failed, NotFitting) and failed.requested_bytes
    assert first[1].peak_bytes == again[1].peak_bytes


def test_the_suite_labels_cuda_runs_with_the_gpu(tmp_path):
    out = tmp_path / "out.json"

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--benchmark-only", "--mlp-device", "cuda",
         "--mlp-depths", "2", "--mlp-widths", "256", "--mlp-batch-sizes", "64",
         "--mlp-phases", "forward,train-step", "--benchmark-max-time", "0.05",
         "--benchmark-json", str(out), "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stdout[-2000:]
    data = json.loads(out.read_text())
    assert data["machine_info"]["mlpbench"]["device_total_bytes"] > 0
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert info["device"] == "cuda:0"
        assert info["device_name"] == torch.cuda.get_device_name(0)
        assert info["reserved_bytes"] >= info["peak_bytes"]
