"""The pytest-benchmark suite in bench/, run as a user runs it: a child pytest process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlp.benchsuite import NotFitting, prepare_measured
from mlp.config import RunConfig
from mlp.model import count_params

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--benchmark-max-time", "0.005", "--benchmark-min-rounds", "3", "-p", "no:cacheprovider"]
FIELDS = ("depth", "width", "input_dim", "output_dim", "batch_size", "phase", "dtype",
          "optimizer", "device", "device_name", "params", "flops", "peak_bytes",
          "reserved_bytes", "status", "timing_flags")


def _pytest(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _grid(depths="2", widths="16", batches="1", phases="forward"):
    return ["--mlp-depths", depths, "--mlp-widths", widths, "--mlp-batch-sizes", batches,
            "--mlp-phases", phases, "--mlp-device", "cpu"]


def test_done_means_grid_writes_every_field_for_every_benchmark(tmp_path):
    out = tmp_path / "out.json"

    proc = _pytest("bench", "--benchmark-only", "--mlp-depths", "2,3", "--mlp-widths", "16,64",
                   "--mlp-batch-sizes", "1,32", "--mlp-device", "cpu",
                   "--benchmark-json", str(out), *FAST)

    assert proc.returncode == 0, proc.stdout[-2000:]
    data = json.loads(out.read_text())
    benchmarks = data["benchmarks"]
    assert len(benchmarks) == 2 * 2 * 2 * 2  # depths x widths x batch sizes x 2 default phases
    for bench in benchmarks:
        info = bench["extra_info"]
        assert all(field in info for field in FIELDS), sorted(info)
        assert info["params"] == count_params(784, info["width"], 10, info["depth"])
        assert info["peak_bytes"] > info["start_bytes"] > 0
        assert info["flops"] > 0 and bench["stats"]["rounds"] >= 3
    assert data["machine_info"]["mlpbench"]["torch_version"] == torch.__version__


def test_runs_from_the_repo_root_with_the_tests_skipped(tmp_path):
    out = tmp_path / "out.json"

    proc = _pytest("--benchmark-only", *_grid(), "--benchmark-json", str(out), *FAST)

    assert proc.returncode == 0, proc.stdout[-2000:]
    assert len(json.loads(out.read_text())["benchmarks"]) == 1


def test_autosave_compare_and_group_by_work_as_usual(tmp_path):
    storage = f"file://{tmp_path / 'storage'}"

    first = _pytest("bench", "--benchmark-only", *_grid(batches="1,4"), *FAST,
                    "--benchmark-autosave", "--benchmark-storage", storage)
    second = _pytest("bench", "--benchmark-only", *_grid(batches="1,4"), *FAST,
                     "--benchmark-storage", storage, "--benchmark-compare",
                     "--benchmark-group-by", "param:mlp_config")

    assert first.returncode == 0 and second.returncode == 0, second.stdout[-2000:]
    assert "0001_" in second.stdout  # the saved run shown beside the new one
    assert len(list((tmp_path / "storage").rglob("0001_*.json"))) == 1


@pytest.mark.parametrize("bad", [
    ["--mlp-depths", "2,0"],
    ["--mlp-widths", "sixteen"],
    ["--mlp-phases", "forward,fwd"],
    ["--mlp-dtypes", "float64"],
    ["--mlp-optimizers", "lamb"],
    ["--mlp-device", "tpu"],
    ["--mlp-host-memory", "lots"],
])
def test_bad_options_exit_2_with_one_line(bad):
    proc = _pytest("bench", "--benchmark-only", *_grid(), *bad)

    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and bad[0] in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_a_clear_error_not_a_cpu_run():
    proc = _pytest("bench", "--benchmark-only", "--mlp-device", "cuda")

    assert proc.returncode == 2 and "no CUDA GPU" in proc.stdout + proc.stderr


def test_resume_runs_only_what_the_records_lack(tmp_path):
    records = tmp_path / "records"
    first = _pytest("bench", "--benchmark-only", *_grid(batches="1,2"), *FAST,
                    "--mlp-records", str(records))
    before = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}

    second = _pytest("bench", "--benchmark-only", *_grid(batches="1,2,3"), *FAST,
                     "--mlp-records", str(records), "--mlp-resume")

    assert first.returncode == 0 and second.returncode == 0, second.stdout[-2000:]
    assert "1 passed, 2 deselected" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")
            if p.name in before} == before
    assert len(list(records.glob("*.json"))) == 3


def test_out_of_memory_is_recorded_as_not_fitting_and_the_grid_goes_on(tmp_path):
    # Batch 2e9 of 784 float32 inputs asks the CPU allocator for 6.3 TB: a real allocation
    # failure, at once. --mlp-host-memory lifts the host check that would otherwise skip it.
    out = tmp_path / "out.json"

    proc = _pytest("bench", "--benchmark-only", *_grid(batches="1,2000000000"), *FAST,
                   "--mlp-host-memory", str(10**16), "--benchmark-json", str(out))

    assert proc.returncode == 0, proc.stdout[-2000:]
    data = json.loads(out.read_text())
    assert len(data["benchmarks"]) == 1
    (not_run,) = data["mlpbench"]["not_run"]
    assert not_run["status"] == "oom" and not_run["batch_size"] == 2_000_000_000
    assert not_run["requested_bytes"] == 2_000_000_000 * 784 * 4


def test_a_configuration_over_host_memory_is_skipped_and_recorded(tmp_path):
    out = tmp_path / "out.json"

    proc = _pytest("bench", "--benchmark-only", *_grid(widths="16,4096", batches="4096"),
                   *FAST, "--mlp-host-memory", "40MiB", "--benchmark-json", str(out))

    assert proc.returncode == 0, proc.stdout[-2000:]
    data = json.loads(out.read_text())
    assert [b["extra_info"]["width"] for b in data["benchmarks"]] == [16]
    (skipped,) = data["mlpbench"]["not_run"]
    assert skipped["status"] == "skipped-host-memory" and skipped["width"] == 4096
    assert skipped["estimated_peak_bytes"] > 0.8 * 40 * 2**20


def test_few_rounds_are_flagged_in_the_json(tmp_path):
    out = tmp_path / "out.json"

    proc = _pytest("bench", "--benchmark-only", *_grid(), "--benchmark-min-rounds", "1",
                   "--benchmark-max-time", "0.000001", "--benchmark-json", str(out),
                   "-p", "no:cacheprovider")

    assert proc.returncode == 0
    (bench,) = json.loads(out.read_text())["benchmarks"]
    assert "few-rounds" in bench["extra_info"]["timing_flags"]


def test_measure_fail_measure_gives_the_same_peak():
    small = RunConfig(input_dim=30, width=64, output_dim=10, depth=3, batch_size=16,
                      phase="train-step")
    huge = small.replace(batch_size=2_000_000_000)

    first = prepare_measured(small, torch.device("cpu"))
    failed = prepare_measured(huge, torch.device("cpu"))
    again = prepare_measured(small, torch.device("cpu"))

    assert isinstance(failed, NotFitting) and failed.requested_bytes == 2_000_000_000 * 30 * 4
    assert first[1].peak_bytes == again[1].peak_bytes


def test_errors_other_than_out_of_memory_propagate(monkeypatch):
    import mlp.benchsuite

    def broken(config, device):
        raise RuntimeError("a bug, not a lack of memory")

    monkeypatch.setattr(mlp.benchsuite, "build_workload", broken)

    with pytest.raises(RuntimeError, match="a bug"):
        prepare_measured(RunConfig(), torch.device("cpu"))


def test_an_existing_json_file_is_kept_without_mlp_force(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("earlier results")

    refused = _pytest("bench", "--benchmark-only", *_grid(), *FAST, "--benchmark-json", str(out))
    assert refused.returncode == 2 and "--mlp-force" in refused.stdout + refused.stderr
    assert out.read_text() == "earlier results"

    forced = _pytest("bench", "--benchmark-only", *_grid(), *FAST, "--benchmark-json", str(out),
                     "--mlp-force")
    assert forced.returncode == 0 and json.loads(out.read_text())["benchmarks"]


def test_a_crash_in_one_configuration_keeps_the_others(tmp_path):
    # The plugin outside this repository (-p mlp.benchsuite), with a conftest that breaks
    # the width-32 models with an error that is not out-of-memory.
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_mlp.py").write_text((ROOT / "bench" / "test_mlp.py").read_text())
    (suite / "conftest.py").write_text(
        "import mlp.benchsuite\n"
        "real_build = mlp.benchsuite.build_workload\n"
        "def build(config, device):\n"
        "    if config.width == 32:\n"
        "        raise RuntimeError('injected crash')\n"
        "    return real_build(config, device)\n"
        "mlp.benchsuite.build_workload = build\n"
    )
    records = tmp_path / "records"

    proc = _pytest(str(suite), "--rootdir", str(suite), "-p", "mlp.benchsuite",
                   "--benchmark-only", *_grid(widths="16,32,64"), *FAST,
                   "--mlp-records", str(records), cwd=tmp_path)

    assert proc.returncode == 1 and "1 failed, 2 passed" in proc.stdout
    saved = {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert saved["d2-w32-b1-forward-float32"]["mlpbench_not_run"]["status"] == "error"
    assert "injected crash" in saved["d2-w32-b1-forward-float32"]["mlpbench_not_run"]["reason"]
    assert saved["d2-w16-b1-forward-float32"]["stats"]["rounds"] >= 3
    assert saved["d2-w64-b1-forward-float32"]["extra_info"]["status"] == "ok"
