"""Results on disk: written whole or not at all, and never overwritten by accident.

A sweep writes one small JSON record per finished configuration into its run folder, so an
interrupted sweep keeps everything it finished and `--resume` knows what is left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: Path, data, overwrite: bool = False) -> None:
    """Write JSON to a temporary file beside path, then rename it into place.

    A reader never sees half a file: the rename is atomic on POSIX file systems. Without
    overwrite, an existing file is an error rather than lost.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; it is kept (pass --force to replace it)")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            json.dump(data, tmp, indent=2, default=_jsonable)
            tmp.flush()
            os.fsync(tmp.fileno())
        if overwrite:
            os.replace(tmp_name, path)
        else:
            # link() fails if path appeared meanwhile (another sweep): nothing is replaced.
            os.link(tmp_name, path)
            os.unlink(tmp_name)
    except BaseException:
        # KeyboardInterrupt included: a stopped run leaves no half-written file behind
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _jsonable(value):
    """Dataclasses (a RunConfig among pytest's params) as dicts; anything else as its str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


class RecordStore:
    """One JSON file per configuration id in a folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, config_id: str) -> Path:
        return self.folder / f"{config_id}.json"

    def done_ids(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {p.stem for p in self.folder.glob("*.json") if not p.name.startswith(".")}

    def write(self, config_id: str, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(config_id), record, overwrite=True)

    def load_all(self) -> list[dict]:
        records = []
        for config_id in sorted(self.done_ids()):
            with open(self.path(config_id), encoding="utf-8") as f:
                records.append(json.load(f))
        return records
