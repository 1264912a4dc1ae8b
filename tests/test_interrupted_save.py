"""A save killed with SIGKILL (no cleanup code runs): the previous variant survives, nothing counts the
leftover as a variant, and the next save of that name removes it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REPO
from fincompress.common.data import data_fingerprint
from fincompress.common.variants import list_variants, prepare_output, save_variant, variant_problems

# A stage saving variant `v` under argv[1]; it stops (prints, then sleeps) at the point given in argv[2]:
# "writing" = inside write(), "swapping" = after the old variant was moved aside, before the new one is renamed in.
SAVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    from fincompress.common.data import data_fingerprint
    from fincompress.common.variants import save_variant

    root, stop_at = Path(sys.argv[1]), sys.argv[2]
    rename = Path.rename

    def pausing_rename(self, target):
        result = rename(self, target)
        if stop_at == "swapping" and ".old-" in Path(target).name:
            print("paused", flush=True)
            time.sleep(600)
        return result

    Path.rename = pausing_rename

    def write(folder):
        save_file({"w": np.ones(2, dtype=np.float32)}, str(folder / "model.safetensors"))
        (folder / "marker.bin").write_bytes(b"new")
        if stop_at == "writing":
            print("paused", flush=True)
            time.sleep(600)

    info = {"model_name": "v", "technique": "test", "source_checkpoint": None, "val_macro_f1": 0.5,
            "num_parameters": 2, "hyperparameters": {}, "data_fingerprint": data_fingerprint(root)}
    save_variant(root / "checkpoints" / "v", write, info)
""")


def write_variant(root: Path, marker: bytes) -> Path:
    def write(folder: Path) -> None:
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(folder / "model.safetensors"))
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_text("{}")
        (folder / "marker.bin").write_bytes(marker)

    info = {"model_name": "v", "technique": "test", "source_checkpoint": None, "val_macro_f1": 0.5,
            "num_parameters": 2, "hyperparameters": {}, "data_fingerprint": data_fingerprint(root)}
    return save_variant(root / "checkpoints" / "v", write, info)


@pytest.fixture
def root_with_variant(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "data" / f"{split}.csv").write_text(f"text,label\n{split} profit rose,2\n")
    write_variant(tmp_path, b"old")
    return tmp_path


def kill_saver_at(root: Path, stop_at: str) -> None:
    """Start the saver, wait until it pauses at `stop_at`, then SIGKILL it."""
    process = subprocess.Popen([sys.executable, "-c", SAVER, str(root), stop_at], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == "paused", process.stderr.read()
    finally:
        process.kill()  # SIGKILL: no finally/except block of the saver runs
        process.wait(timeout=60)
        process.stdout.close()
        process.stderr.close()


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "checkpoints").iterdir() if p.name.startswith("."))


def test_kill_while_writing_keeps_the_old_variant_and_the_next_save_cleans_up(root_with_variant):
    root = root_with_variant
    kill_saver_at(root, "writing")
    leftovers = hidden(root)
    assert len(leftovers) == 1 and leftovers[0].startswith(".v.tmp-")
    assert (root / "checkpoints" / "v" / "marker.bin").read_bytes() == b"old"
    assert list_variants(root / "checkpoints") == ["v"] and variant_problems(root) == {}

    write_variant(root, b"newer")
    assert hidden(root) == []
    assert (root / "checkpoints" / "v" / "marker.bin").read_bytes() == b"newer"
    assert json.loads((root / "checkpoints" / "v" / "checkpoint_info.json").read_text())["model_name"] == "v"


def test_kill_between_the_renames_gets_the_old_variant_back(root_with_variant):
    root = root_with_variant
    kill_saver_at(root, "swapping")
    # the worst moment: the old variant is moved aside and the new one is not in place yet
    assert not (root / "checkpoints" / "v").exists()
    assert sorted(name.split("-")[0] for name in hidden(root)) == [".v.old", ".v.tmp"]

    # readers only read (no renames while listing): nothing is listed, nothing is moved
    assert list_variants(root / "checkpoints") == []
    assert sorted(name.split("-")[0] for name in hidden(root)) == [".v.old", ".v.tmp"]
    # the next run that writes `v` puts the old variant back (and removes the dead save's folder)
    prepare_output(root, "v", technique="test")
    assert list_variants(root / "checkpoints") == ["v"]
    assert (root / "checkpoints" / "v" / "marker.bin").read_bytes() == b"old"
    assert hidden(root) == [] and list_variants(root / "checkpoints") == ["v"]
