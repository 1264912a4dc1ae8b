"""Cores and dollars from load-test results: `python -m fincompress.evaluation.cost --p99-ms 100`.

Reads  <root>/results/serving.csv (written by `python -m fincompress.evaluation.loadtest`).
Writes <root>/results/serving_cost.csv (replaced whole) and prints the same table.

For each variant (and runtime), among levels whose p99 latency meets `--p99-ms` with no errors and not
marked client-bound (those measure the load generator), the one of highest throughput per core (the
throughput divided by the cores that server used: threads x workers, or `--cores`). For each daily volume:
    peak requests/s = daily calls x peak factor / 86,400
    cores needed    = ceil(peak requests/s / throughput per core)
and, only when the user gives `--core-hour-usd` (no default price is assumed), the price per million
predictions: at capacity (a core kept busy at the measured level) and as provisioned (the cores needed,
running all day, divided by the day's calls).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from fincompress.common import cli
from fincompress.common.io import atomic_write_text
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir
from fincompress.evaluation.serving_results import CEILING_VARIANT, ERROR_KINDS, SERVING_CSV

DEFAULTS = {"daily_calls": [1e5, 1e7, 1e9], "peak_factor": 3.0}  # traffic is not flat over a day
COST_CSV = "serving_cost.csv"
SECONDS_PER_DAY = 86_400
REQUIRED = ("variant", "runtime", "threads", "workers", "throughput", "p99_ms")
NUMERIC = ("throughput", "p99_ms")


def read_serving(path: Path) -> pd.DataFrame:
    """serving.csv with its numeric columns parsed; one line naming the problem if missing or malformed."""
    if not path.is_file():
        raise FinCompressError(f"{path} not found: run `python -m fincompress.evaluation.loadtest` first")
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FinCompressError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        raise FinCompressError(f"{path}: missing column(s) {', '.join(missing)}; is it the load test's CSV?")
    frame = frame[frame["variant"] != CEILING_VARIANT].copy()
    for column in NUMERIC:
        values = pd.to_numeric(frame[column].replace("", "nan"), errors="coerce")
        if values.isna().all() and len(values):
            raise FinCompressError(f"{path}: column {column!r} holds no numbers")
        frame[column] = values
    return frame


def row_errors(frame: pd.DataFrame) -> pd.Series:
    columns = [f"errors_{kind}" for kind in ERROR_KINDS if f"errors_{kind}" in frame.columns]
    counts = [pd.to_numeric(frame[c].replace("", "0"), errors="coerce").fillna(1) for c in columns]
    return sum(counts) if counts else pd.Series(0, index=frame.index)


def best_levels(frame: pd.DataFrame, p99_ms: float, cores: int | None = None) -> pd.DataFrame:
    """Per variant and runtime, the level of highest throughput per core among those with p99 <= target,
    no errors and not client-bound (per core: servers of one variant may differ in threads and workers)."""
    client_bound = frame.get("client_bound", pd.Series("", index=frame.index)).astype(str).str.lower() == "true"
    ok = frame[(frame["p99_ms"] <= p99_ms) & (frame["throughput"] > 0) & (row_errors(frame) == 0) & ~client_bound]
    if ok.empty:
        raise FinCompressError(f"no measured level meets p99 <= {p99_ms:g} ms without errors (client-bound "
                               "levels excluded); load-test lower concurrencies or rates, or relax --p99-ms")
    ok = ok.assign(server_cores=[server_cores(row, cores) for row in ok.to_dict("records")])
    ok = ok.assign(per_core=ok["throughput"] / ok["server_cores"])
    best = ok.loc[ok.groupby(["variant", "runtime"])["per_core"].idxmax()]
    return best.sort_values("per_core", ascending=False)


def server_cores(row: dict, override: int | None) -> int:
    """Cores a server used: `--cores`, else threads x workers from its /info."""
    if override is not None:
        return override
    try:
        return int(float(row["threads"])) * int(float(row["workers"]))
    except ValueError:
        raise FinCompressError(f"variant {row['variant']}: threads/workers unknown in serving.csv; "
                               "pass --cores") from None


def cores_needed(daily_calls: float, peak_factor: float, per_core: float) -> int:
    """Cores to serve `daily_calls` at a peak of `peak_factor` x the day's mean rate."""
    return math.ceil(daily_calls * peak_factor / SECONDS_PER_DAY / per_core)


def usd_per_million(per_core: float, core_hour_usd: float) -> float:
    """Price of a million predictions on cores kept busy at `per_core` predictions/s."""
    return core_hour_usd / (per_core * 3600) * 1e6


def cost_rows(best: pd.DataFrame, args: argparse.Namespace) -> list[dict]:
    rows = []
    for level in best.to_dict("records"):
        cores, per_core = level["server_cores"], level["per_core"]
        load = (f"concurrency {level.get('concurrency')}" if level.get("mode") == "closed"
                else f"rate {level.get('rate')}/s")
        for daily in args.daily_calls:
            needed = cores_needed(daily, args.peak_factor, per_core)
            row = {"variant": level["variant"], "runtime": level["runtime"], "level": load,
                   "throughput": level["throughput"], "p99_ms": level["p99_ms"], "p99_target_ms": args.p99_ms,
                   "server_cores": cores, "per_core": round(per_core, 3), "daily_calls": f"{daily:g}",
                   "peak_factor": args.peak_factor, "cores_needed": needed}
            if args.core_hour_usd is not None:
                row.update({"core_hour_usd": args.core_hour_usd,
                            "usd_per_million_at_capacity": round(usd_per_million(per_core, args.core_hour_usd), 4),
                            "usd_per_day": round(needed * 24 * args.core_hour_usd, 2),
                            "usd_per_million_provisioned": round(needed * 24 * args.core_hour_usd / daily * 1e6, 4)})
            rows.append(row)
    return rows


def number_list(text: str) -> list[float]:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return list(dict.fromkeys(cli.positive_float(item) for item in items))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.cost", description=__doc__.split("\n\n")[0])
    add_root_argument(parser)
    parser.add_argument("--p99-ms", type=cli.positive_float, required=True, help="p99 latency target (ms)")
    parser.add_argument("--core-hour-usd", type=cli.positive_float, default=None,
                        help="your price of one CPU core for one hour; without it only cores are printed")
    parser.add_argument("--daily-calls", type=number_list, default=DEFAULTS["daily_calls"],
                        help="daily prediction volumes (default 1e5,1e7,1e9)")
    parser.add_argument("--peak-factor", type=cli.positive_float, default=DEFAULTS["peak_factor"],
                        help=f"peak rate / mean daily rate (default {DEFAULTS['peak_factor']:g})")
    parser.add_argument("--cores", type=cli.positive_int, default=None,
                        help="cores each measured server used (default: its threads x workers)")
    return parser


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    best = best_levels(read_serving(results_dir(root) / SERVING_CSV), args.p99_ms, args.cores)
    table = pd.DataFrame(cost_rows(best, args))
    out = atomic_write_text(results_dir(root) / COST_CSV, table.to_csv(index=False))
    print(table.to_string(index=False))
    print(f"written to {out}")
    return table


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
