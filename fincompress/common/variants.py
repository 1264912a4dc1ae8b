"""Variant folders: atomic saving, `checkpoint_info.json`, listing.

A variant folder `checkpoints/<name>/` holds either
- an FP32 model in the transformers `save_pretrained` layout (`format: "pytorch"`); a pruned
  model has smaller Linear layers than its config implies (see `loader.load_fp32_model`); or
- an ONNX deployment artifact `model.onnx` (`format: "onnx"`, e.g. INT8), with `config.json`
  for the label names,
plus the tokenizer files and `checkpoint_info.json`. Loading is in `fincompress.common.loader`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fincompress.common.hub_models import set_project_labels
from fincompress.common.paths import FinCompressError

INFO_FILE = "checkpoint_info.json"
ONNX_FILE = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".data", ".pt")
INFO_FIELDS = ("model_name", "technique", "source_checkpoint", "val_macro_f1", "num_parameters",
               "size_mb", "hyperparameters", "data_fingerprint", "created_at")


# ----------------------------------------------------------------------------- saving

def weights_size_mb(folder: Path) -> float:
    """Size on disk of the model weights (not the tokenizer, metadata or the onnx/ export cache), in MB."""
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return round(total / 1e6, 3)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_variant(dest: Path, write: Callable[[Path], None], info: dict) -> Path:
    """Write a variant folder atomically: into a temporary sibling, then rename.

    `write(tmp_folder)` writes the model and tokenizer files. `size_mb` and `created_at` are
    filled in here. If anything fails (or the process is interrupted) no folder named `dest`
    is created and an existing one is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        info = {**info, "size_mb": weights_size_mb(tmp),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        missing = [f for f in INFO_FIELDS if f not in info]
        if missing:
            raise ValueError(f"checkpoint_info is missing {missing}")
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def save_fp32_variant(dest: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: dict) -> Path:
    """Save an FP32 transformers model as a variant (our label names in its config)."""
    set_project_labels(model.config)
    info = {"format": "pytorch", "num_parameters": count_parameters(model), **info}

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return save_variant(dest, write, info)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_info(folder: Path) -> dict:
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise FinCompressError(f"{folder} is not a FinCompress variant: {INFO_FILE} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FinCompressError(f"{path} is corrupt ({exc}); re-create the variant") from exc


def list_variants(checkpoints: Path) -> list[str]:
    """Names of complete variant folders (temporary folders start with a dot)."""
    if not checkpoints.is_dir():
        return []
    return sorted(p.name for p in checkpoints.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / INFO_FILE).is_file())


def select_variants(root: Path, names: str | None) -> list[str]:
    """`names` (comma-separated) checked against the variants under root, or all of them."""
    available = list_variants(Path(root) / "checkpoints")
    if not names:
        if not available:
            raise FinCompressError(f"no variant folders in {Path(root) / 'checkpoints'}: train the teacher first")
        return available
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    missing = [n for n in chosen if n not in available]
    if missing:
        raise FinCompressError(f"unknown variant(s) {missing}; available: {available}")
    return chosen


def fp32_variant_dir(root: Path, name: str, role: str = "source") -> Path:
    """The folder of FP32 (PyTorch) variant `name` under root, or a clear error saying what to do.

    `role` names what the stage uses it for ("source", "teacher") in the message.
    """
    folder = Path(root) / "checkpoints" / name
    if not folder.is_dir():
        hint = ("train it first: python -m fincompress.teacher.train_teacher" if name == "teacher"
                else "create it first, or pass the name of an existing FP32 variant")
        raise FinCompressError(f"{role} variant {name!r} not found at {folder}: {hint} (--root {root})")
    info = read_info(folder)
    if info.get("format", "pytorch") != "pytorch" or not (folder / "model.safetensors").is_file():
        raise FinCompressError(f"{role} variant {name!r} is {info.get('format')!r}, not an FP32 PyTorch "
                               "checkpoint: use the FP32 model it was made from instead")
    return folder
