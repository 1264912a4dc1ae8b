"""Running a stage's `main()`: user errors become one clear line, not a stack trace."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from fincompress.common.paths import FinCompressError


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    # Our loggers (fincompress.*) speak at INFO; libraries (onnx_ir, httpx, ...) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fincompress").setLevel(logging.INFO)
    try:
        main(argv)
    except FinCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    return 0
