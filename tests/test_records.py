import json

import pytest

import mlp.records
from mlp.config import RunConfig
from mlp.records import RecordStore, write_json_atomic


def test_an_existing_file_is_never_replaced_without_overwrite(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("earlier")

    with pytest.raises(FileExistsError, match="--force"):
        write_json_atomic(path, {"new": 1})

    assert path.read_text() == "earlier"
    assert list(tmp_path.iterdir()) == [path]


def test_a_write_stopped_half_way_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlp.records.os, "fsync", interrupted)

    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(tmp_path / "record.json", {"a": 1})

    assert list(tmp_path.iterdir()) == []


def test_records_round_trip_with_a_configuration_inside(tmp_path):
    store = RecordStore(tmp_path / "records")
    config = RunConfig(depth=2, width=8)

    store.write("d2-w8", {"params": {"mlp_config": config}})

    assert store.done_ids() == {"d2-w8"}
    (record,) = store.load_all()
    assert record["params"]["mlp_config"]["width"] == 8
    assert json.loads(store.path("d2-w8").read_text()) == record
