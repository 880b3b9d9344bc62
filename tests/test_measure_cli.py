import json

import pytest
from cli_runner import run_cli
from reference_memory import profiler_peak_bytes

from mlp.cli import main
from mlp.config import RunConfig

ARGS = ["measure", "--depth", "4", "--width", "64", "--input-dim", "30", "--output-dim", "10",
        "--batch-size", "32", "--phase", "train-step", "--optimizer", "adam",
        "--dtype", "float32", "--device", "cpu", "--min-rounds", "3", "--max-time", "0.05"]


def test_json_output_carries_the_figures_and_the_configuration(capsys):
    assert main(ARGS + ["--json"]) == 0

    result = json.loads(capsys.readouterr().out)

    for key in ("params", "peak_bytes", "flops", "median_ms", "depth", "width", "batch_size",
                "phase", "optimizer", "dtype", "device"):
        assert key in result
    assert result["params"] == 31 * 64 + 2 * 65 * 64 + 65 * 10
    assert result["median_ms"] > 0 and result["rounds"] >= 3


def test_json_peak_bytes_is_confirmed_by_the_profiler(capsys):
    main(ARGS + ["--json"])
    result = json.loads(capsys.readouterr().out)
    config = RunConfig(input_dim=30, width=64, output_dim=10, depth=4, batch_size=32,
                       phase="train-step", optimizer="adam")

    assert result["peak_bytes"] == pytest.approx(profiler_peak_bytes(config), rel=1e-3)


def test_summary_is_labelled_with_units(capsys):
    assert main(ARGS) == 0

    out = capsys.readouterr().out

    assert "peak memory" in out and "bytes" in out and " ms median" in out


def _run(capsys, argv):
    """Exit status and stderr of the command, whether argparse or the command refused."""
    code, _, err = run_cli(argv, capsys)
    return code, err


@pytest.mark.parametrize(
    "bad, named",
    [
        (["--depth", "0"], "--depth"),
        (["--width", "abc"], "--width"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--phase", "fwd"], "--phase"),
        (["--dtype", "float64"], "--dtype"),
        (["--optimizer", "lamb"], "--optimizer"),
        (["--device", "tpu"], "--device"),
        (["--width", "99999999999"], "width must be at most"),  # refused by RunConfig
        (["--max-time", "-1"], "--max-time"),
    ],
)
def test_bad_options_exit_2_with_one_line_naming_the_argument(capsys, bad, named):
    code, err = _run(capsys, ARGS + bad)

    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named in err
    assert "Traceback" not in err


def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, err = _run(capsys, ARGS + ["--device", "cuda"])

    assert code == 2 and "no CUDA GPU" in err


def test_a_configuration_past_host_memory_is_refused_before_allocating(capsys):
    # Batch 2e9 of 784 inputs would need 6.3 TB before the first layer.
    code, err = _run(capsys, ARGS + ["--batch-size", "2000000000", "--input-dim", "784"])

    assert code == 2 and "host memory" in err and len(err.strip().splitlines()) == 1


def test_running_out_of_device_memory_is_one_line_not_a_traceback(capsys, monkeypatch):
    import torch

    import mlp.commands.measure

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(mlp.commands.measure, "measure", out_of_memory)

    code, err = _run(capsys, ARGS)

    assert code == 1 and "does not fit on cpu: out of memory" in err
    assert len(err.strip().splitlines()) == 1
