"""The CUDA path end to end, on a real GPU, in under 5 minutes; a short table printed last.

    python scripts/gpu_check.py --out results/gpu-check-<date>-<gpu>

Checks, each written to OUT (JSON and a Markdown table) so that the run can be committed:
1. measured peak memory (torch.cuda.max_memory_allocated) against the analytic and trace
   estimates' CUDA rules, over phases, dtypes and optimizers;
2. out-of-memory recovery: measure A, run out of memory on B, measure A again;
3. the real search (probe) against the prediction (fit) under a budget;
4. the pytest-benchmark suite on CUDA (a small grid) and the CUDA-marked unit tests.
Nothing here runs on the CPU: without a GPU the script stops with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlp.benchsuite import NotFitting, prepare_measured  # noqa: E402
from mlp.config import RunConfig  # noqa: E402
from mlp.device import device_name, nvml_gpu_facts  # noqa: E402
from mlp.estimate import estimate  # noqa: E402
from mlp.measure import measure  # noqa: E402
from mlp.units import GIB  # noqa: E402

# Configurations chosen to cover every phase, both dtypes and all optimizers, from a small
# model where the cuBLAS workspace dominates to a 4096-wide one where activations do.
MEMORY_CASES = [
    dict(depth=2, width=1024, batch_size=1, phase="forward"),
    dict(depth=4, width=1024, batch_size=64, phase="forward"),
    dict(depth=4, width=4096, batch_size=512, phase="backward"),
    dict(depth=4, width=4096, batch_size=512, phase="forward-backward"),
    dict(depth=8, width=1024, batch_size=4096, phase="train-step", optimizer="adam"),
    dict(depth=8, width=4096, batch_size=256, phase="train-step", optimizer="adamw"),
    dict(depth=4, width=4096, batch_size=1024, phase="train-step", optimizer="sgd"),
    dict(depth=4, width=4096, batch_size=1024, phase="train-step", optimizer="momentum"),
    dict(depth=4, width=4096, batch_size=1024, phase="train-step", optimizer="adam",
         dtype="bfloat16"),
    dict(depth=3, width=777, batch_size=333, phase="train-step", optimizer="adam",
         input_dim=123, output_dim=7),
]
PROBE_BUDGET_BYTES = 8 * GIB


def check_memory(device) -> list[dict]:
    rows = []
    for case in MEMORY_CASES:
        config = RunConfig(**{"optimizer": "none", **case})
        measured = measure(config, device, min_rounds=5, max_time_s=0.2)
        analytic = estimate(config, "cuda", "analytic").peak_bytes
        traced = estimate(config, "cuda", "trace").peak_bytes
        rows.append({
            **config.as_dict(),
            "measured_peak_bytes": measured.peak_bytes,
            "reserved_bytes": measured.reserved_bytes,
            "analytic_peak_bytes": analytic,
            "trace_peak_bytes": traced,
            "analytic_error": analytic / measured.peak_bytes - 1,
            "trace_error": traced / measured.peak_bytes - 1,
            "median_ms": measured.timing.median_ms,
        })
        torch.cuda.empty_cache()
    return rows


def check_oom_recovery(device) -> dict:
    small = RunConfig(depth=4, width=1024, batch_size=256, phase="train-step")
    total_bytes = torch.cuda.get_device_properties(device).total_memory
    # a batch whose inputs alone are twice the card: 784 float32 features per sample
    huge = small.replace(batch_size=int(2 * total_bytes / (784 * 4)))
    first = prepare_measured(small, device)
    failed = prepare_measured(huge, device)
    again = prepare_measured(small, device)
    return {
        "first_peak_bytes": first[1].peak_bytes,
        "oom_caught": isinstance(failed, NotFitting),
        "requested_bytes": getattr(failed, "requested_bytes", None),
        "again_peak_bytes": again[1].peak_bytes,
        "same_peak": first[1].peak_bytes == again[1].peak_bytes,
    }


def check_probe_against_fit(device) -> dict:
    from mlp.fit import max_batch_size
    from mlp.probe import probe_max_batch

    config = RunConfig(depth=6, width=4096, batch_size=1, phase="train-step", optimizer="adam")
    predicted = max_batch_size(config, PROBE_BUDGET_BYTES, device_type="cuda")
    started = time.perf_counter()
    probed = probe_max_batch(config, device, budget_bytes=PROBE_BUDGET_BYTES)
    return {
        **config.as_dict(),
        "budget_bytes": PROBE_BUDGET_BYTES,
        "fit_max_batch_size": predicted.max_batch_size,
        "probe_max_batch_size": probed.max_batch_size,
        "probe_runs": probed.runs,
        "probe_s": time.perf_counter() - started,
    }


def run_pytest(out: Path) -> dict:
    bench_json = out / "bench_cuda.json"
    bench = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--benchmark-only", "--mlp-device", "cuda",
         "--mlp-depths", "2,4", "--mlp-widths", "1024,4096", "--mlp-batch-sizes", "1,512",
         "--mlp-phases", "forward,train-step", "--mlp-dtypes", "float32,bfloat16",
         "--benchmark-max-time", "0.2", "--benchmark-json", str(bench_json), "-q",
         "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    unit = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", "cuda", "-q",
                           "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    (out / "pytest_cuda.log").write_text(bench.stdout + bench.stderr + unit.stdout + unit.stderr)
    return {"bench_returncode": bench.returncode, "bench_tail": bench.stdout[-300:],
            "unit_returncode": unit.returncode, "unit_tail": unit.stdout[-300:]}


def table(memory_rows, oom, probe) -> str:
    lines = ["| phase | dtype | opt | depth x width | batch | measured GiB | analytic err | "
             "trace err |", "|---|---|---|---|---|---|---|---|"]
    for r in memory_rows:
        lines.append(
            f"| {r['phase']} | {r['dtype']} | {r['optimizer']} | {r['depth']} x {r['width']} | "
            f"{r['batch_size']} | {r['measured_peak_bytes'] / GIB:.3f} | "
            f"{r['analytic_error']:+.2%} | {r['trace_error']:+.2%} |")
    lines.append("")
    lines.append(f"OOM recovery: caught={oom['oom_caught']}, same peak after it="
                 f"{oom['same_peak']} ({oom['first_peak_bytes']} vs {oom['again_peak_bytes']})")
    lines.append(f"probe vs fit under {probe['budget_bytes'] / GIB:.0f} GiB: probe "
                 f"{probe['probe_max_batch_size']} in {probe['probe_runs']} runs, "
                 f"fit {probe['fit_max_batch_size']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--skip-pytest", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible; this script checks the CUDA path only",
              file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"gpu_check: error: --out {args.out} exists and is not empty", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda", 0)
    facts = nvml_gpu_facts(0)

    started = time.perf_counter()
    memory_rows = check_memory(device)
    oom = check_oom_recovery(device)
    probe = check_probe_against_fit(device)
    tests = {} if args.skip_pytest else run_pytest(args.out)

    summary = {
        "device_name": device_name(device),
        "capability": list(torch.cuda.get_device_capability(device)),
        "total_bytes": torch.cuda.get_device_properties(device).total_memory,
        "nvml": facts.__dict__ if facts else None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "memory": memory_rows,
        "oom_recovery": oom,
        "probe_vs_fit": probe,
        "pytest": tests,
        "elapsed_s": time.perf_counter() - started,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    text = table(memory_rows, oom, probe)
    (args.out / "gpu_check.md").write_text(f"# GPU check on {summary['device_name']}\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
