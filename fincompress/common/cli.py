"""Running a stage's `main()`, and what every stage's command line shares.

- `run(main)`: user errors become one clear line (exit 2), not a stack trace.
- Numeric flag types (`positive_int`, `fraction`, ...): every stage validates a flag the same way,
  so no stage accepts what another refuses.
- `parse_args(parser, argv)`: adds `--config FILE` (a JSON preset of flag values, e.g.
  `configs/offline/teacher.json`); flags given on the command line override the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from fincompress.common.paths import FinCompressError

ASSET_PREFIX = "assets:"  # a config value "assets:models/all-MiniLM-L6-v2" names a file of the assets folder
ASSET_REFERENCE = re.compile(r"(?<![\w])assets:([\w./@-]+)")


def configure_logging() -> None:
    # Our loggers (fincompress.*) speak at INFO; libraries (onnx_ir, httpx, ...) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fincompress").setLevel(logging.INFO)


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        main(argv)
    except FinCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a read-only folder outside the stages' own checks: one line
        from fincompress.common.io import as_user_error

        print(f"error: {as_user_error(exc, 'cannot complete')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


# ----------------------------------------------------------------------------- flag types

def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, batch sizes, runs, epochs)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up runs, seeds)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_int_list(text: str) -> list[int]:
    """Comma-separated integers >= 1 (batch sizes, thread counts); duplicates dropped, order kept."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return list(dict.fromkeys(positive_int(item) for item in items))


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, temperatures)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay, loss weights, gradient clipping)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1] (loss mixing weights, warm-up share)."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A share in (0, 1) (how much to prune)."""
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return value


def sample_fraction(text: str) -> float:
    """A share in (0, 1] (how much data to keep)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def file_stem(text: str) -> str:
    """A file name without extension, inside the folder the flag writes to (no path, not hidden)."""
    if not text or "/" in text or "\\" in text or text.startswith(".") or ".." in text:
        raise argparse.ArgumentTypeError(f"{text!r}: a file name stem, not a path (no / or \\, no '..', "
                                         "not starting with '.')")
    return text


# ----------------------------------------------------------------------------- config files

def config_to_argv(parser: argparse.ArgumentParser, values: dict, source: str) -> list[str]:
    """A config mapping as command-line tokens, so every value passes the flag's own validation."""
    flags = {action.dest: action for action in parser._actions if action.option_strings}
    argv: list[str] = []
    for key, value in values.items():
        action = flags.get(key.replace("-", "_"))
        if action is None or key in ("config", "help"):
            raise FinCompressError(f"{source}: unknown setting {key!r}; settings are the stage's flags "
                                   f"without '--' (see --help)")
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise FinCompressError(f"{source}: {key!r} must be true or false, got {value!r}")
            if value == isinstance(action, argparse._StoreTrueAction):
                argv.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        argv += [flag, str(value)]  # `assets:` paths are resolved after parsing: a flag may override them
    return argv


def resolve_asset_value(value: str) -> str:
    """Each `assets:RELATIVE/PATH` in a value -> that path in the assets folder (fetched once if needed).

    It may stand inside a value, e.g. `pretrained:assets:models/all-MiniLM-L6-v2`.
    """
    if ASSET_PREFIX not in value:
        return value
    from fincompress.common.assets import asset_file

    return ASSET_REFERENCE.sub(lambda match: str(asset_file(match.group(1))), value)


def read_config(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FinCompressError(f"--config {path}: file not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FinCompressError(f"--config {path}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise FinCompressError(f"--config {path}: expected a JSON object of flag values")
    return {k: v for k, v in values.items() if not k.startswith("_")}  # "_comment" keys document the file


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv` after the values of `--config FILE` (flags on the command line win).

    The config file's path and values are kept in `args.config` / `args.config_values`.
    """
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON file of flag values (e.g. configs/offline/<stage>.json); "
                        "flags given on the command line override it")
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args(argv)
    config_values: dict = {}
    if first.config is not None:
        config_values = read_config(first.config)
        argv = config_to_argv(parser, config_values, str(first.config)) + argv
    args = parser.parse_args(argv)
    for name, value in vars(args).items():  # `assets:` paths of the values in force (config or command line)
        if isinstance(value, (str, Path)) and ASSET_PREFIX in str(value):
            setattr(args, name, type(value)(resolve_asset_value(str(value))))
    args.config_values = config_values
    return args
