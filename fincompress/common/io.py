"""Files written whole or not at all, CSV rows appended, content hashes.

Every stage writes through these: an interrupted run never leaves a truncated file behind.
"""

from __future__ import annotations

import csv
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside `path` (same filesystem, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to write a temporary file, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def append_csv_rows(path: Path, rows: Iterable[dict], columns: list[str] | None = None) -> Path:
    """Append rows to a CSV (header written when the file is new); the file is rewritten atomically.

    Columns are the existing header, then `columns`, then any new keys in row order.
    """
    path = Path(path)
    rows = list(rows)
    existing: list[dict] = []
    header: list[str] = []
    if path.is_file() and path.stat().st_size:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            existing = list(reader)
    for name in [*(columns or []), *(k for row in rows for k in row)]:
        if name not in header:
            header.append(name)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, restval="")
            writer.writeheader()
            writer.writerows(existing + rows)

    return atomic_write(path, write)


def sha256_file(path: Path) -> str:
    """Full sha256 hex digest of a file (read in chunks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(paths: Iterable[Path], length: int = 16) -> str:
    """A short digest of several files' names and bytes, in order (cache keys, fingerprints)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]


def text_digest(texts: Iterable[str], length: int = 16) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:length]
