"""mlp.report and `mlpbench report`: the report folder, whole or not at all."""

import copy
import json
import shutil
from pathlib import Path

import pytest

from mlp import plots
from mlp.cli import main
from mlp.fit import max_batch_size
from mlp.gpus import GPUS, resolve_budget
from mlp.report import (
    FLAG_MARK,
    OUTPUT_FILES,
    PLOT_FILES,
    REPORT_FILE,
    build_report,
    fit_table,
    render_report,
)
from mlp.results import CONFIG_FIELDS, config_of, load_results

SAMPLE = Path(__file__).parent / "data" / "sample_results.json"
CHOSEN = ["t4", "a100-80gb"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A sweep-like run folder already holding its JSON, reported on through the CLI."""
    run = tmp_path_factory.mktemp("run")
    shutil.copy(SAMPLE, run / "benchmarks.json")
    status = main(["report", str(run / "benchmarks.json"), "--out", str(run),
                   "--gpus", ",".join(CHOSEN)])
    assert status == 0
    return run


@pytest.fixture(scope="module")
def table():
    return load_results([SAMPLE])


def _everything_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_report_folder_holds_every_file_and_nothing_else(run_dir):
    assert _everything_under(run_dir) == {"benchmarks.json", *OUTPUT_FILES}
    assert (run_dir / "benchmarks.json").read_bytes() == SAMPLE.read_bytes()  # left alone


def test_report_links_every_plot(run_dir):
    text = (run_dir / REPORT_FILE).read_text()
    for name in PLOT_FILES:
        assert f"]({name})" in text
        assert (run_dir / name).stat().st_size > 10_000


def test_report_has_one_sentence_per_model_naming_where_it_stops_fitting(run_dir, table):
    text = (run_dir / REPORT_FILE).read_text()
    sentences = [line for line in text.splitlines() if line.startswith("- Depth ")]
    models = table.drop_duplicates([f for f in CONFIG_FIELDS if f != "batch_size"])
    assert len(sentences) == len(models)

    # the sentence's batch is one past the largest that fits, by mlp.fit, on each GPU
    row = models[(models["depth"] == 3) & (models["width"] == 1024)
                 & (models["phase"] == "train-step")].iloc[0]
    sentence = next(s for s in sentences if s.startswith("- Depth 3, width 1024 (train-step"))
    for name in CHOSEN:
        fit = max_batch_size(config_of(row).replace(batch_size=1),
                             resolve_budget(gpu=name).budget_bytes, device_type="cuda")
        assert f"at batch {fit.max_batch_size + 1:,} on the {GPUS[name].label}" in sentence
    assert sentence.count("stops fitting") == 1


def test_report_table_shows_the_skipped_configuration(run_dir):
    text = (run_dir / REPORT_FILE).read_text()
    assert "skipped (would not fit in host memory)" in text


def test_csv_has_a_row_per_benchmark(run_dir, table):
    lines = (run_dir / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + len(table)


def test_existing_report_is_kept_without_force(run_dir):
    before = {name: (run_dir / name).read_bytes() for name in OUTPUT_FILES}
    with pytest.raises(ValueError, match="already holds a report.*--force"):
        build_report([run_dir / "benchmarks.json"], run_dir, CHOSEN)
    assert {name: (run_dir / name).read_bytes() for name in OUTPUT_FILES} == before


def test_force_replaces_the_report(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / REPORT_FILE).write_text("an old report")
    path = build_report([SAMPLE], out, ["h100-80gb"], force=True)
    assert path == out / REPORT_FILE
    assert "NVIDIA H100" in path.read_text()
    assert _everything_under(out) == set(OUTPUT_FILES)


def test_failure_part_way_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "plot_latency_throughput", broken)
    with pytest.raises(RuntimeError):
        build_report([SAMPLE], tmp_path / "out", CHOSEN)
    assert list(tmp_path.iterdir()) == []


def test_render_marks_flagged_timings_and_out_of_memory_rows(tmp_path):
    raw = json.loads(SAMPLE.read_text())
    doc = copy.deepcopy(raw)
    clean = [b for b in doc["benchmarks"] if not b["extra_info"]["timing_flags"]]
    flagged_name = clean[0]["name"]
    clean[0]["extra_info"]["timing_flags"] = ["few-rounds"]
    gone = doc["benchmarks"].pop(doc["benchmarks"].index(clean[1]))
    doc["mlpbench"]["not_run"].append({
        **{k: gone["extra_info"][k] for k in CONFIG_FIELDS}, "device": "cpu", "status": "oom",
        "reason": "does not fit: out of memory", "requested_bytes": None,
        "estimated_peak_bytes": None,
    })
    path = tmp_path / "marked.json"
    path.write_text(json.dumps(doc))
    table = load_results([path])
    budgets = {name: resolve_budget(gpu=name) for name in CHOSEN}
    text = render_report(table, budgets, [path])

    row = table[table["name"] == flagged_name].iloc[0]
    line = next(line for line in text.splitlines()
                if line.startswith("|") and f"| {row['depth']} | {row['width']} | "
                f"{row['batch_size']:,} | ok |" in line and row["phase"] in line)
    assert f"ms {FLAG_MARK}" in line and "few-rounds" in line
    assert "flagged untrustworthy" in text
    oom = gone["extra_info"]
    assert any(f"| {oom['batch_size']:,} | does not fit (out of memory) |" in line
               for line in text.splitlines())
    # the fit table's measured column names the out-of-memory batch
    assert f"{oom['batch_size']:,} (cpu)" in text


def test_fit_table_has_a_column_per_gpu(table):
    budgets = {name: resolve_budget(gpu=name) for name in CHOSEN}
    fits = fit_table(table, budgets)
    assert set(CHOSEN) <= set(fits.columns)
    assert (fits["t4"] <= fits["a100-80gb"]).all()  # more memory never fits less


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: (d / "broken.json").write_text('{"benchmarks": [{"na'), "not valid JSON"),
        (lambda d: (d / "foreign.json").write_text('{"rows": []}'), "not pytest-benchmark JSON"),
        (lambda d: (d / "empty.json").write_text(""), "is empty"),
    ],
)
def test_cli_bad_results_file_is_one_line_status_2_and_writes_nothing(tmp_path, capsys, make,
                                                                      words):
    make(tmp_path)
    bad = next(tmp_path.iterdir())
    status = main(["report", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert words in err and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_unknown_gpu_names_the_option_and_the_choices(tmp_path, capsys):
    status = main(["report", str(SAMPLE), "--out", str(tmp_path / "out"), "--gpus", "t4,x9"])
    err = capsys.readouterr().err
    assert status == 2
    assert "--gpus must be a comma-separated list of t4," in err and "got x9" in err
    assert not (tmp_path / "out").exists()


def test_cli_out_that_cannot_be_written_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    status = main(["report", str(SAMPLE), "--out", str(blocker / "report")])
    err = capsys.readouterr().err
    assert status == 2 and "cannot be written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        build_report([SAMPLE], target, CHOSEN, force=True)
    assert target.read_text() == "keep me"


def test_model_that_fits_nowhere_is_said_not_to_fit_at_all(table):
    # 40 MiB (36 MiB after the margin) holds the small models but not depth 3, width 1024
    # with Adam, whose weights, moments and the cuBLAS workspace need more at batch 1.
    budget = resolve_budget(memory="40MiB")
    text = render_report(table, {"small": budget}, [SAMPLE])
    big = next(line for line in text.splitlines()
               if line.startswith("- Depth 3, width 1024 (train-step"))
    fit = max_batch_size(config_of(table[(table["depth"] == 3) & (table["width"] == 1024)
                                         & (table["phase"] == "train-step")].iloc[0]),
                         budget.budget_bytes)
    assert fit.max_batch_size == 0
    assert "does not fit on the --memory 40MiB at all (batch 1 needs" in big
    small = next(line for line in text.splitlines() if line.startswith("- Depth 2, width 16 ("))
    assert "stops fitting at batch" in small
