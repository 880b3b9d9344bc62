"""mlp.results: pytest-benchmark JSON into one tidy table, and where throughput stops growing.

tests/data/sample_results.json is a real CPU run of the bench/ suite (tests/data/make_sample.py).
"""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from mlp.results import (
    COLUMNS,
    CONFIG_FIELDS,
    ResultsError,
    config_of,
    knees,
    load_results,
    read_csv,
    settings,
    throughput_knee,
    write_csv,
)

SAMPLE = Path(__file__).parent / "data" / "sample_results.json"


@pytest.fixture(scope="module")
def raw():
    return json.loads(SAMPLE.read_text())


@pytest.fixture(scope="module")
def table():
    return load_results([SAMPLE])


def test_sample_gives_a_row_per_benchmark_and_per_configuration_not_run(raw, table):
    not_run = raw["mlpbench"]["not_run"]
    assert len(table) == len(raw["benchmarks"]) + len(not_run)
    assert list(table.columns) == list(COLUMNS)
    assert (table["status"] == "ok").sum() == len(raw["benchmarks"])
    assert not_run, "the sample is meant to hold a configuration skipped for host memory"


def test_row_figures_come_from_the_benchmark(raw, table):
    by_name = table.set_index("name")
    for bench in raw["benchmarks"]:
        row = by_name.loc[bench["name"]]
        extra, stats = bench["extra_info"], bench["stats"]
        for name in CONFIG_FIELDS:
            assert row[name] == extra[name]
        assert row["peak_bytes"] == extra["peak_bytes"]
        assert row["median_ms"] == pytest.approx(stats["median"] * 1e3)
        assert row["iqr_ms"] == pytest.approx(stats["iqr"] * 1e3)
        assert row["rounds"] == stats["rounds"]
        assert row["samples_per_s"] == pytest.approx(extra["batch_size"] / stats["median"])
        assert row["flop_per_s"] == pytest.approx(extra["flops"] / stats["median"])
        assert row["timing_ok"] == (not extra["timing_flags"])
        assert row["timing_flags"] == ";".join(extra["timing_flags"])


def test_configuration_not_run_is_a_row_without_figures(raw, table):
    entry = raw["mlpbench"]["not_run"][0]
    rows = table[table["status"] == entry["status"]]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert config_of(row).as_dict() == {k: entry[k] for k in CONFIG_FIELDS}
    assert pd.isna(row["peak_bytes"]) and pd.isna(row["median_ms"])
    assert row["estimated_peak_bytes"] == entry["estimated_peak_bytes"]
    assert pd.isna(row["fits"])  # a skip says nothing about fitting
    assert row["reason"] == entry["reason"]


def test_out_of_memory_entry_is_a_row_that_does_not_fit(tmp_path, raw):
    # An oom entry as the suite writes one, moved from a real benchmark's configuration.
    doc = copy.deepcopy(raw)
    bench = doc["benchmarks"].pop()
    doc["mlpbench"]["not_run"].append({
        **{k: bench["extra_info"][k] for k in CONFIG_FIELDS}, "device": "cuda:0",
        "status": "oom", "reason": "does not fit: out of memory", "requested_bytes": 1 << 30,
        "estimated_peak_bytes": None,
    })
    path = tmp_path / "oom.json"
    path.write_text(json.dumps(doc))
    row = load_results([path]).query("status == 'oom'").iloc[0]
    assert bool(row["fits"]) is False
    assert row["requested_bytes"] == 1 << 30


def test_byte_columns_are_integers_in_memory_and_in_the_csv(tmp_path, table):
    for column in ("peak_bytes", "start_bytes", "reserved_bytes", "params", "flops"):
        assert str(table[column].dtype) == "Int64"
    path = write_csv(table, tmp_path / "results.csv")
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    peak = header.index("peak_bytes")
    reserved = header.index("reserved_bytes")
    first = lines[1].split(",")
    assert first[peak].isdigit()  # 54240, never 54240.0
    assert first[reserved] == ""  # None on the CPU: an empty cell
    back = read_csv(path)
    assert back["peak_bytes"].equals(table["peak_bytes"])


def test_two_files_are_read_into_one_table_with_their_source(tmp_path, table):
    other = tmp_path / "again.json"
    other.write_text(SAMPLE.read_text())
    both = load_results([SAMPLE, other])
    assert len(both) == 2 * len(table)
    assert set(both["source"]) == {str(SAMPLE), str(other)}


def _plain_pytest_benchmark(raw) -> dict:
    doc = copy.deepcopy(raw)
    for bench in doc["benchmarks"]:
        bench["extra_info"] = {}
    del doc["mlpbench"]
    return doc


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("missing.json", None, "does not exist"),
        ("empty.json", "", "is empty"),
        ("truncated.json", "TRUNCATED", "not valid JSON"),
        ("foreign.json", json.dumps({"results": [1, 2, 3]}),
         "is not pytest-benchmark JSON: no 'benchmarks' list"),
        ("list.json", json.dumps([1, 2]), "no 'benchmarks' list"),
        ("binary.json", b"\xff\xfe\x00garbage", "not UTF-8"),
        ("plain.json", "PLAIN", "is not an mlpbench benchmark: extra_info lacks"),
        ("nostats.json", json.dumps({"benchmarks": [{"name": "x"}]}), "has no 'stats'"),
    ],
)
def test_bad_file_is_refused_with_its_name_and_the_fault(tmp_path, raw, name, content, words):
    path = tmp_path / name
    if content == "TRUNCATED":
        text = SAMPLE.read_text()
        content = text[: len(text) // 2]
    elif content == "PLAIN":
        content = json.dumps(_plain_pytest_benchmark(raw))
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ResultsError) as caught:
        load_results([path])
    message = str(caught.value)
    assert str(path) in message and words in message
    assert "\n" not in message


def test_folder_is_refused(tmp_path):
    with pytest.raises(ResultsError, match="is a folder"):
        load_results([tmp_path])


def test_bad_configuration_in_extra_info_names_the_benchmark_and_field(tmp_path, raw):
    doc = copy.deepcopy(raw)
    doc["benchmarks"][0]["extra_info"]["depth"] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=r"benchmark 'test_mlp\[.*depth must be a positive"):
        load_results([path])


def test_file_without_any_benchmark_is_refused(tmp_path):
    path = tmp_path / "none.json"
    path.write_text(json.dumps({"benchmarks": [], "machine_info": {}}))
    with pytest.raises(ResultsError, match="no benchmarks"):
        load_results([path])


@pytest.mark.parametrize(
    "batches, rates, knee",
    [
        ([1, 2, 4, 8], [10.0, 19.0, 30.0, 31.0], 4),  # 30 is within 10% of 31
        ([1, 2, 4, 8], [10.0, 20.0, 40.0, 80.0], 8),  # still doubling: the largest
        ([8, 1, 4, 2], [31.0, 10.0, 30.0, 19.0], 4),  # order does not matter
        ([1, 2, 4], [50.0, 40.0, 30.0], 1),  # falls from the start
    ],
)
def test_throughput_knee_is_the_smallest_batch_within_tolerance_of_the_best(batches, rates, knee):
    assert throughput_knee(batches, rates) == knee


def test_throughput_knee_without_figures_is_none():
    assert throughput_knee([1, 2], [float("nan"), 0.0]) is None


def test_knees_follow_the_definition_on_the_measured_sample(table):
    found = knees(table)
    measured = table[table["status"] == "ok"]
    assert len(found) == measured.groupby(["depth", "width", "phase"]).ngroups
    for _, row in found.iterrows():
        group = measured[(measured["depth"] == row["depth"]) & (measured["width"] == row["width"])
                         & (measured["phase"] == row["phase"])]
        best = group["samples_per_s"].max()
        within = group[group["samples_per_s"] >= 0.9 * best]
        assert row["knee_batch_size"] == within["batch_size"].min()
        assert row["best_samples_per_s"] == best
        flagged = set(group.loc[~group["timing_ok"].astype(bool), "batch_size"])
        assert set(row["flagged_batch_sizes"]) == flagged


def test_settings_put_train_step_first(table):
    found = settings(table)
    assert [s["phase"] for s in found] == ["train-step", "forward"]
