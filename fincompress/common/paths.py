"""Project root and the folders every stage reads and writes under it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_ENV_VAR = "FINCOMPRESS_ROOT"

# The label contract of the whole project (docs/DESIGN.md): every CSV, every saved config.
LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
LABEL2ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))


class FinCompressError(RuntimeError):
    """An error with a message meant for the user (bad input, missing file, no Hub)."""


def project_root(root: str | os.PathLike | None = None) -> Path:
    """`--root` if given, else `$FINCOMPRESS_ROOT`, else the repository."""
    chosen = root or os.environ.get(ROOT_ENV_VAR) or REPO_ROOT
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        source = "--root" if root else ROOT_ENV_VAR if os.environ.get(ROOT_ENV_VAR) else "the repository"
        raise FinCompressError(f"project root {path} (from {source}) is a file, not a folder: pass a folder")
    return path


def data_dir(root: Path) -> Path:
    return root / "data"


def checkpoints_dir(root: Path) -> Path:
    return root / "checkpoints"


def results_dir(root: Path) -> Path:
    return root / "results"


def logs_dir(root: Path) -> Path:
    return root / "logs"


def variant_dir(root: Path, name: str) -> Path:
    return checkpoints_dir(root) / name


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=None,
        help=f"project root holding data/, checkpoints/, results/, logs/ "
        f"(default: ${ROOT_ENV_VAR}, else the repository)",
    )
