"""Fetch or check the study's offline assets (datasets and models) and say where each one is.

Reads  the assets folders in search order: $FINCOMPRESS_ASSETS, ../shared beside the repository (unless
       $FINCOMPRESS_NO_SHARED=1), the cache ~/.cache/fincompress ($FINCOMPRESS_CACHE).
Writes a missing asset into the cache (downloaded once from its pinned public source, sha256 verified,
       recorded in its SOURCE.json); with --check, nothing.

Prints one line per asset: where it is and how many of its files match their reference sha256. A missing
asset or a checksum mismatch is an error (exit 2) that says what to download and where to put it.
"""

from __future__ import annotations

import argparse

from fincompress.common import cli
from fincompress.common.assets import ASSETS, check_asset
from fincompress.common.paths import FinCompressError


def asset_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ASSETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown asset(s) {unknown}; known: {', '.join(ASSETS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the local copies; download nothing")
    parser.add_argument("--assets", type=asset_names, default=list(ASSETS),
                        help=f"comma-separated subset (default: all of {', '.join(ASSETS)})")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = cli.parse_args(build_parser(), argv)
    rows = []
    for name in args.assets:
        row = check_asset(name, download=not args.check)
        rows.append(row)
        print(f"{row['status']:8} {name:30} {row['where']}")
        print(f"{'':8} {'':30} {row['detail']}")
    missing = [row["asset"] for row in rows if row["status"] != "ok"]
    if missing:
        raise FinCompressError(f"{len(missing)} asset(s) missing: {', '.join(missing)} (see above for what to "
                               f"download and where; `python -m fincompress.assets` without --check fetches them)")
    return rows


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
