"""Running one variant's step of the benchmark: a failure stops the run, or (--skip-broken) skips the variant.

Reads and writes nothing; skipped variants are collected in a list the results JSON reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from fincompress.common.paths import FinCompressError

log = logging.getLogger("fincompress.benchmark")
T = TypeVar("T")


def failure_reason(exc: BaseException) -> str:
    """One line saying what went wrong (the first line of the message, shortened)."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    text = message if isinstance(exc, FinCompressError) else f"{message} ({type(exc).__name__})"
    return text if len(text) <= 300 else text[:297] + "..."


def guarded(name: str, runtime: str | None, action: Callable[[], T], skip_broken: bool,
            skipped: list[dict]) -> T | None:
    """`action()`, or None (recorded in `skipped`) when it fails and broken variants are skipped.

    runtime: the row that failed, or None when the variant as a whole cannot be read.
    """
    try:
        return action()
    except Exception as exc:  # any failure of a variant (corrupt file, ORT/torch error) is that variant's
        reason = failure_reason(exc)
        row = f"variant {name!r}" + (f" ({runtime})" if runtime else "")
        if not skip_broken:
            raise FinCompressError(f"{row} failed: {reason}; re-create it, leave it out with --variants, "
                                   "or pass --skip-broken") from exc
        log.warning("skipping %s: %s", row, reason)
        skipped.append({"variant": name, "runtime": runtime or "all", "reason": reason})
        return None
