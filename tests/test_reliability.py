"""Outputs as transactions, file-system errors as one line, content-keyed caches, concurrency, contracts on load."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import synthetic_split
from fincompress.common import io
from fincompress.common.data import SPLITS, data_fingerprint, read_split
from fincompress.common.paths import FinCompressError
from fincompress.data import prepare_dataset as prep


def labelled_csv(path: Path, size: int, offset: int = 0) -> Path:
    frame = pd.concat([synthetic_split(split, size // 3) for split in SPLITS], ignore_index=True)
    frame["text"] = frame["text"] + f" (set {offset})"
    frame[["text", "label"]].to_csv(path, index=False)
    return path


def prepared(root: Path, tmp_path: Path, offset: int) -> dict:
    return prep.main(["--root", str(root), "--source", "csv", "--data-file",
                      str(labelled_csv(tmp_path / f"set{offset}.csv", 120, offset))])


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- 1. outputs as transactions

@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupted_prepare_leaves_the_previous_complete_set(tmp_path, monkeypatch, failure):
    root = tmp_path / "root"
    first = prepared(root, tmp_path, 1)
    before = {split: read_split(root, split) for split in SPLITS}
    to_csv, calls = pd.DataFrame.to_csv, []

    def fail_after_the_first_file(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise failure
        return to_csv(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_after_the_first_file)
    with pytest.raises((KeyboardInterrupt, FinCompressError)) as caught:
        prepared(root, tmp_path, 2)
    monkeypatch.undo()
    assert len(calls) == 2  # the first new file was written before the failure
    if caught.type is FinCompressError:  # the message says what is still in place
        assert f"fingerprint {first['fingerprint']}" in str(caught.value) and "disk is full" in str(caught.value)
    # what train_teacher reads: the previous set, whole
    assert data_fingerprint(root) == first["fingerprint"]
    for split in SPLITS:
        pd.testing.assert_frame_equal(read_split(root, split), before[split])
    assert json.loads((root / "data" / "dataset_info.json").read_text())["fingerprint"] == first["fingerprint"]
    assert hidden(root) == []


def test_a_prepare_killed_between_the_renames_is_recovered_by_the_next_one(tmp_path):
    root = tmp_path / "root"
    first = prepared(root, tmp_path, 1)
    (root / "data" / "notes.txt").write_text("mine")
    moved_aside = Path(str(io.private_temporary(root / "data", "old")).replace(f"-{io.os.getpid()}-",
                                                                               f"-{dead_pid()}-"))
    (root / "data").rename(moved_aside)  # what a kill between `data -> .old` and `.tmp -> data` leaves
    with pytest.raises(FinCompressError, match="not found"):
        read_split(root, "train")  # readers never rename: they see no data, never a mix
    assert moved_aside.exists()
    second = prepared(root, tmp_path, 2)
    assert data_fingerprint(root) == second["fingerprint"] != first["fingerprint"]
    assert (root / "data" / "notes.txt").read_text() == "mine"  # a user's own file is carried over
    assert hidden(root) == []
