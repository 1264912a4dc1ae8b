"""Variant folders: atomic saving, `checkpoint_info.json`, listing.

A variant folder `checkpoints/<name>/` holds either
- an FP32 model in the transformers `save_pretrained` layout (`format: "pytorch"`); a pruned
  model has smaller Linear layers than its config implies (see `loader.load_fp32_model`); or
- an ONNX deployment artifact `model.onnx` (`format: "onnx"`, e.g. INT8), with `config.json`
  for the label names,
plus the tokenizer files and `checkpoint_info.json`. Loading is in `fincompress.common.loader`.

Guards every stage shares (so no stage loses a variant or writes outside `checkpoints/`):
- `add_output_arguments(parser, default_name)` adds `--output-name` (a plain variant name, see
  `validate_variant_name`) and `--overwrite`.
- `prepare_output(root, name, technique=..., inputs=(...))`, called at the start of a stage, before any
  training: refuses an output that is one of the stage's own inputs, or an existing variant made by
  another technique (unless `--overwrite`); removes what killed saves of that name left behind.
- `save_variant` writes into a hidden temporary sibling `.NAME.tmp-HOST-PID-RANDOM` and renames it;
  it refuses to save (nothing written) when the prepared data changed while the stage ran.
A temporary folder is removed by the next `prepare_output`/`save_variant` of that name once its owning
process is gone (or it is older than `STALE_TEMPORARY_HOURS`); a previous variant a killed save had
already moved aside (`.NAME.old-*`) is put back if no new variant replaced it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fincompress.common import io
from fincompress.common.data import SPLITS, data_fingerprint, read_split
from fincompress.common.hub_models import set_project_labels
from fincompress.common.io import STALE_TEMPORARY_HOURS, is_stale_temporary, stale_temporaries  # noqa: F401
from fincompress.common.paths import LABELS, FinCompressError, checkpoints_dir

log = logging.getLogger("fincompress.variants")

CHECKPOINTS = "checkpoints"
INFO_FILE = "checkpoint_info.json"
ONNX_FILE = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".data", ".pt")
INFO_FIELDS = ("model_name", "technique", "source_checkpoint", "val_macro_f1", "num_parameters",
               "size_mb", "hyperparameters", "data_fingerprint", "created_at")
FILLED_BY_SAVE = ("size_mb", "created_at")
# Provenance every stage has always recorded with a value (null is a gap, not a pass). source_checkpoint
# and val_macro_f1 may be null (a model made from nothing; a metric a stage could not measure).
PROVENANCE_FIELDS = ("model_name", "technique", "data_fingerprint", "created_at", "num_parameters", "size_mb")
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt")  # a fast or a slow tokenizer's vocabulary

# A variant name: letters, digits and _ - . @ (e.g. `student_intermediate_kd_dynamic_int8`, `pruned_30pct`,
# `teacher@lr2e-5`); no path separators, no leading dot (hidden and temporary folders), no `..`.
VARIANT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_.@-]*")
MAX_VARIANT_NAME_LENGTH = 100  # leaves room for the temporary suffix within the usual 255-byte file-name limit


# ----------------------------------------------------------------------------- output names

def variant_name_problem(name: object) -> str | None:
    """Why `name` is not a plain variant name (one folder under checkpoints/), or None."""
    if not isinstance(name, str) or not name:
        return "a variant name must not be empty"
    if "/" in name or "\\" in name:
        return "a variant name is one folder under checkpoints/, not a path (no / or \\)"
    if name.startswith("."):
        return "a variant name must not start with '.' (hidden and temporary folders do)"
    if ".." in name:
        return "a variant name must not contain '..'"
    if len(name) > MAX_VARIANT_NAME_LENGTH:
        return f"a variant name has at most {MAX_VARIANT_NAME_LENGTH} characters, got {len(name)}"
    if not VARIANT_NAME_PATTERN.fullmatch(name):
        return "use only letters, digits, '_', '-', '.' and '@', starting with a letter, a digit, '_' or '@'"
    return None


def _shown(name: object) -> str:
    return repr(name if not isinstance(name, str) or len(name) <= 60 else name[:57] + "...")


def validate_variant_name(name: str, flag: str = "--output-name") -> str:
    """`name` if it is a plain variant name, else a one-line FinCompressError naming `flag`.

    Allowed: letters, digits, `_`, `-`, `.`, `@`; at most MAX_VARIANT_NAME_LENGTH characters; not starting
    with `.` (hidden and temporary folders) or `-` (read as a flag); no `..`, no path separators.
    """
    problem = variant_name_problem(name)
    if problem:
        raise FinCompressError(f"{flag} {_shown(name)}: {problem}")
    return name


def variant_name(text: str) -> str:
    """argparse type of a variant-name flag (a bad name is argparse's one-line usage error, exit 2)."""
    problem = variant_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{_shown(text)}: {problem}")
    return text


def add_output_arguments(parser: argparse.ArgumentParser, default_name: str | None) -> None:
    """`--output-name` (a plain variant name; default `default_name`, None: the stage derives one) and
    `--overwrite` (allow replacing an existing variant made by another technique)."""
    shown = f"default {default_name}" if default_name else "default: derived from the other flags"
    parser.add_argument("--output-name", type=variant_name, default=default_name,
                        help=f"variant folder name under checkpoints/ ({shown}); letters, digits, _ - . @")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing an existing variant of that name made by another technique "
                        "(a stage never overwrites its own inputs)")


def same_technique(recorded: object, technique: str) -> bool:
    """Whether a variant's recorded `technique` is `technique`, or `technique` plus a detail after a colon
    (`"structured pruning: 30% of attention heads removed"` is `"structured pruning"`)."""
    return isinstance(recorded, str) and (recorded == technique or recorded.startswith(technique + ":"))


def prepare_output(root: Path, name: str, *, technique: str, inputs: Sequence[str] = (),
                   overwrite: bool = False) -> Path:
    """The folder `<root resolved>/checkpoints/name` a stage will save to, checked before it does any work.

    Refuses (one-line FinCompressError) a name that is not a plain variant name, an output that is one
    of the stage's own `inputs` (variant names, e.g. its source and teacher), and an existing variant
    made by another technique (or unreadable) unless `overwrite`. Re-running a stage onto its own
    earlier output is allowed. Removes stale temporaries of killed saves of that name.
    """
    validate_variant_name(name)
    folder = checkpoints_dir(Path(root).resolve()) / name  # what is returned (checkpoints/ itself may be a link)
    if folder.parent.exists() and not folder.parent.is_dir():
        raise FinCompressError(f"{folder.parent} is a file, not the folder of the variants: move it away "
                               "(or choose another --root)")
    checkpoints = folder.parent.resolve()
    dest = folder.resolve()
    if dest.parent != checkpoints:
        raise FinCompressError(f"--output-name {name!r}: {folder} is a link to {dest}, outside "
                               f"{checkpoints}; remove the link or choose another name")
    for given in inputs:
        if not given:
            continue
        candidates = {(checkpoints / str(given)).resolve()}
        if "/" in str(given) or os.sep in str(given):  # an input given as a folder path
            candidates.add(Path(given).expanduser().resolve())
        if dest in candidates:
            raise FinCompressError(f"--output-name {name!r} is an input of this stage ({given}): saving would "
                                   "replace the variant it reads; choose another --output-name")
    # Held until the save (or the process) ends: a second writer of this name refuses, naming this run.
    io.acquire_lock(variant_lock(folder), f"checkpoints/{name}")
    remove_stale_temporaries(folder)  # first: a variant a killed save had moved aside is back before the checks
    if dest.exists() and not overwrite:
        if not dest.is_dir():
            raise FinCompressError(f"--output-name {name!r}: {dest} exists and is not a variant folder; remove "
                                   "it, choose another name, or pass --overwrite")
        try:
            recorded = read_info(dest).get("technique")
        except FinCompressError as exc:
            raise FinCompressError(f"--output-name {name!r}: {dest} exists but is not a readable variant ({exc}); "
                                   "pass --overwrite to replace it, or choose another name") from None
        if not same_technique(recorded, technique):
            raise FinCompressError(f"--output-name {name!r}: checkpoints/{name} holds a variant made by "
                                   f"{recorded!r}, not {technique!r}; pass --overwrite to replace it, "
                                   "or choose another --output-name")
    return folder


# ----------------------------------------------------------------------------- temporaries of saves

def temporary_folder(dest: Path, kind: str) -> Path:
    """A hidden sibling `.NAME.<kind>-HOST-PID-RANDOM` (kind: tmp = being written, old = being replaced)."""
    return io.private_temporary(dest, kind)


def variant_lock(dest: Path) -> Path:
    """The lock file of variant folder `dest` (`<root>/.cache/locks/`, outside checkpoints/: never listed)."""
    dest = Path(dest)
    return dest.parent.parent / ".cache" / "locks" / f"{dest.name}.lock"


def is_complete_variant(folder: Path) -> bool:
    return (Path(folder) / INFO_FILE).is_file()


def remove_stale_temporaries(dest: Path) -> list[Path]:
    """Remove what killed saves of `dest` left behind; returns the folders removed (or put back).

    A killed save may have moved the previous variant aside (`.NAME.old-*`) and died before renaming
    the new one in: if `dest` is missing, the newest complete such folder becomes `dest` again.
    """
    return io.recover(Path(dest), is_complete_variant)


# ----------------------------------------------------------------------------- saving

def weights_size_mb(folder: Path) -> float:
    """Size on disk of the model weights (not the tokenizer, metadata or the onnx/ export cache), in MB."""
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return round(total / 1e6, 3)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_data_unchanged(root: Path, recorded: object, dest: Path) -> None:
    """Refuse to save when the prepared data under `root` is not the data the stage started with."""
    try:
        current = data_fingerprint(root)
    except (FinCompressError, OSError, ValueError, KeyError, TypeError) as exc:
        raise FinCompressError(f"not saving {dest}: the prepared data under {Path(root) / 'data'} is missing or "
                               f"unreadable now ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                               "it changed while the stage ran: prepare the data, then re-run the stage") from None
    if recorded != current:
        raise FinCompressError(f"not saving {dest}: the prepared data under {Path(root) / 'data'} changed while "
                               f"the stage ran (fingerprint {recorded} at the start, {current} now); re-run the "
                               "stage on the new data")


def save_variant(dest: Path, write: Callable[[Path], None], info: dict) -> Path:
    """Write a variant folder atomically: into a temporary sibling, then rename.

    `dest` is `<root>/checkpoints/<name>`. `write(tmp_folder)` writes the model and tokenizer files.
    `size_mb` and `created_at` are filled in here. `info["data_fingerprint"]` must be the fingerprint
    of the data the stage read (taken when it started): if the data under `<root>/data` differs now,
    nothing is saved. If anything fails (or the process is interrupted) no folder named `dest` is
    created and an existing one is left as it was; what a killed save leaves is removed by the next
    save of that name.
    """
    dest = Path(dest)
    validate_variant_name(dest.name, flag="variant name")
    if dest.parent.name != CHECKPOINTS:
        raise FinCompressError(f"not saving {dest}: variants are saved as <root>/{CHECKPOINTS}/<name>")
    missing = [f for f in INFO_FIELDS if f not in info and f not in FILLED_BY_SAVE]
    if missing:
        raise ValueError(f"checkpoint_info is missing {missing}")
    root = dest.parent.parent
    check_data_unchanged(root, info["data_fingerprint"], dest)
    io.acquire_lock(variant_lock(dest), f"checkpoints/{dest.name}")  # taken by prepare_output already, usually
    try:
        return _save_locked(dest, write, info, root)
    finally:
        io.release_lock(variant_lock(dest))


def _save_locked(dest: Path, write: Callable[[Path], None], info: dict, root: Path) -> Path:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest)
        tmp = temporary_folder(dest, "tmp")
        tmp.mkdir()
    except OSError as exc:
        raise FinCompressError(f"cannot save {dest}: cannot create a folder in {dest.parent} "
                               f"({exc.strerror or exc})") from None
    try:
        write(tmp)
        info = {**info, "size_mb": weights_size_mb(tmp),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
        check_data_unchanged(root, info["data_fingerprint"], dest)  # again: writing may have taken a while
        _swap_in(tmp, dest)
    except OSError as exc:  # disk full, permissions: the old variant is kept, say so in one line
        shutil.rmtree(tmp, ignore_errors=True)
        where = f": {exc.filename}" if exc.filename else ""
        raise FinCompressError(f"cannot save {dest} ({exc.strerror or exc}{where}); nothing was changed") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _swap_in(tmp: Path, dest: Path) -> None:
    """Rename the complete `tmp` onto `dest` (`io.publish_folder`: the previous variant is kept on failure)."""
    try:
        io.publish_folder(tmp, dest)
    except OSError as exc:
        raise FinCompressError(f"cannot save {dest} ({exc.strerror or exc}): another run may be saving a variant "
                               "of that name at the same time; re-run when it is done") from None


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
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FinCompressError(f"{path} is corrupt ({exc}); re-create the variant") from exc
    except OSError as exc:
        raise FinCompressError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if not isinstance(info, dict):
        raise FinCompressError(f"{path} is corrupt (a JSON {type(info).__name__}, not an object); "
                               "re-create the variant")
    return info


def list_variants(checkpoints: Path) -> list[str]:
    """Names of variant folders: those with a checkpoint_info.json (temporary folders start with a dot and
    are never listed; a variant a killed save had moved aside is put back by the next save of it: this only
    reads). A listed variant may still be broken: see `variant_problems`."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    return sorted(p.name for p in checkpoints.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / INFO_FILE).is_file())


def variant_problems(root: Path) -> dict[str, str]:
    """Folders under `root/checkpoints` that cannot be used as variants, and why (cheap checks, no model
    loaded): no or corrupt checkpoint_info.json, fields missing, weights missing, empty or truncated."""
    checkpoints = checkpoints_dir(Path(root))
    if not checkpoints.is_dir():
        return {}
    problems = {}
    for folder in sorted(p for p in checkpoints.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problem = folder_problem(folder)
        if problem:
            problems[folder.name] = problem
    return problems


def folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a usable variant, or None (see `variant_problems`)."""
    if not (folder / INFO_FILE).is_file():
        return (f"no {INFO_FILE}: not a complete variant (re-create it, or move the folder out of "
                f"{folder.parent})")
    try:
        info = read_info(folder)
    except FinCompressError as exc:
        return str(exc)
    missing = [f for f in INFO_FIELDS if f not in info]
    if missing:
        return f"{folder / INFO_FILE} lacks {', '.join(missing)}: re-create the variant"
    empty = [f for f in PROVENANCE_FIELDS if info.get(f) is None]
    if empty:
        return f"{folder / INFO_FILE} records {', '.join(empty)} as null: re-create the variant"
    onnx = info.get("format") == "onnx"
    weights = folder / (ONNX_FILE if onnx else "model.safetensors")
    if not weights.is_file():
        return f"{weights.name} is missing from {folder}: re-create the variant"
    if weights.stat().st_size == 0:
        return f"{weights} is empty: re-create the variant"
    # Without its own tokenizer files transformers may silently take the tokenizer named in config.json.
    if not (folder / "tokenizer_config.json").is_file() or not any((folder / f).is_file() for f in VOCABULARY_FILES):
        return (f"the tokenizer files are missing from {folder} (tokenizer_config.json and "
                f"{' or '.join(VOCABULARY_FILES)}): re-create the variant")
    config_problem = _config_problem(folder / "config.json", required=not onnx)
    if config_problem:
        return config_problem
    if weights.suffix == ".safetensors":
        return _safetensors_problem(weights)
    return None


def _config_problem(path: Path, required: bool) -> str | None:
    if not path.is_file():
        return f"{path} is missing: re-create the variant" if required else None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        return f"{path} is corrupt ({exc}): re-create the variant"
    if not isinstance(config, dict):
        return f"{path} is corrupt (not a JSON object): re-create the variant"
    names = config.get("id2label")
    # Every variant is saved with the project's three class names: outputs are mapped by name, never by position.
    if names is not None and (not isinstance(names, dict) or len(names) != len(LABELS)
                              or sorted(str(n).lower() for n in names.values()) != sorted(LABELS)):
        shown = list(names.values()) if isinstance(names, dict) else names
        return (f"{path}: id2label names {shown}, not the classes {list(LABELS)}: its outputs cannot be mapped; "
                "re-create the variant")
    return None


def _safetensors_problem(path: Path) -> str | None:
    # safe_open reads the header and checks it against the file size: a truncated copy fails here.
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            handle.keys()
    except Exception as exc:  # the library raises its own error types for each kind of damage
        return f"{path} is damaged ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): " \
            "re-create the variant"
    return None


def select_variants(root: Path, names: str | None) -> list[str]:
    """`names` (comma-separated) checked against the variants under root, or all of them."""
    available = list_variants(Path(root) / "checkpoints")
    if not names:
        if not available:
            raise FinCompressError(f"no variant folders in {Path(root) / 'checkpoints'}: train the teacher first")
        return available
    chosen = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))  # each name once
    missing = [n for n in chosen if n not in available]
    if missing:
        checkpoints = Path(root) / "checkpoints"
        # a folder that is there but is no variant says why, not just "unknown"
        reasons = [f"{n}: {folder_problem(checkpoints / n)}" for n in missing
                   if variant_name_problem(n) is None and (checkpoints / n).is_dir()]
        raise FinCompressError(f"unknown variant(s) {missing}; available: {available}"
                               + ("; " + "; ".join(reasons) if reasons else ""))
    return chosen


def fp32_variant_dir(root: Path, name: str, role: str = "source", data: str | None = None) -> Path:
    """The folder of FP32 (PyTorch) variant `name` under root, or a clear error saying what to do.

    `role` names what the stage uses it for ("source", "teacher") in the message. `data` is the
    fingerprint of the data the stage reads: a source made from other data is refused, because what the
    stage derives from it would be stamped with data it never saw.
    """
    folder = Path(root) / "checkpoints" / name
    if not folder.is_dir():
        if folder.parent.is_dir() and any(folder.parent.glob(f".{name}.old-*")):
            raise FinCompressError(f"{role} variant {name!r} is missing from {folder.parent}: a save of it was "
                                   f"interrupted and the previous copy is still in .{name}.old-*; re-run the stage "
                                   "that makes it (its next save puts the previous copy back first)")
        hint = ("train it first: python -m fincompress.teacher.train_teacher" if name == "teacher"
                else "create it first, or pass the name of an existing FP32 variant")
        raise FinCompressError(f"{role} variant {name!r} not found at {folder}: {hint} (--root {root})")
    info = read_info(folder)
    if info.get("format", "pytorch") != "pytorch":
        raise FinCompressError(f"{role} variant {name!r} is {info.get('format')!r}, not an FP32 PyTorch "
                               "checkpoint: use the FP32 model it was made from instead")
    problem = folder_problem(folder)
    if problem:
        raise FinCompressError(f"{role} variant {name!r}: {problem}")
    made_from = info.get("data_fingerprint")
    if data is not None and made_from is not None and made_from != data:
        for split in SPLITS:  # broken data is the first thing to fix: its own error comes first
            read_split(root, split)
        raise FinCompressError(
            f"{role} variant {name!r} was made from data {made_from}, but data/ under {root} is now {data}: "
            f"what this stage makes from it would mix the two. Re-create {name!r} on the current data, or "
            "prepare the data it was made from again")
    return folder
