"""Load-test a running server: `python -m fincompress.evaluation.loadtest --url http://127.0.0.1:8080`.

Reads  the server's GET /info and GET /metrics (before and after each level), real test sentences from
       <root>/data/test.csv (`text` column) or `--texts FILE` (a CSV with a `text` column, else one per line).
Writes <root>/results/serving.csv (one row per level, appended atomically) and
       <root>/results/plots/serving_p99.png (p99 latency against offered load, one line per variant).

Levels: closed loop at fixed concurrencies (`--concurrency`: that many requests always in flight) and open
loop at fixed arrival rates (`--rates`, requests/s with Poisson arrivals; latency counts from the scheduled
send time, so a slow server is not hidden by a client that waits for it). Each level stops at `--requests`
or `--seconds`, whichever comes first. One sentence per request, rotating through the texts.

The client can be the bottleneck: `--processes N` runs N Python client processes (merged), `--client wrk`
drives the `wrk` binary (closed loop only), and `--client-ceiling` first measures the same client against a
no-op server on a free loopback port and marks (`client_bound`) every level near that ceiling.
Only loopback addresses are accepted: this tool never sends load to another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import ipaddress
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from fincompress.common import cli
from fincompress.common.hardware import cpu_metadata
from fincompress.common.io import append_csv_rows, atomic_write
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir
from fincompress.evaluation.serving_results import CEILING_VARIANT, COLUMNS, ERROR_KINDS, SERVING_CSV

log = logging.getLogger("fincompress.loadtest")

DEFAULTS = {"concurrency": [1, 8, 32], "requests": 2000, "seconds": 30.0, "timeout": 30.0, "warmup": 10,
            "processes": 1, "seed": 0}
CLIENTS = ("python", "wrk")
CLIENT_BOUND_SHARE = 0.8  # a level at >= 80% of the client's own ceiling measures the client, not the server
PLOT_NAME = "serving_p99.png"
HEALTH_WAIT_SECONDS = 20.0
LATE_SEND_MS = 10.0  # open loop: a request leaving this much after its scheduled time shows a client falling behind


# ----------------------------------------------------------------------------- inputs

def check_loopback(url: str) -> str:
    """`url` without a trailing slash if it is http(s) to a loopback address; else a one-line refusal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise FinCompressError(f"--url {url!r}: expected http://127.0.0.1:PORT")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise FinCompressError(f"--url {url!r}: only loopback addresses (127.0.0.1, ::1, localhost) may be "
                               "load-tested")
    return url.rstrip("/")


def read_texts(root: Path, texts_file: Path | None) -> list[str]:
    """The sentences to send: `--texts FILE` (CSV `text` column, else one per line), else data/test.csv."""
    if texts_file is None:
        from fincompress.common.data import read_split

        texts = read_split(root, "test")["text"].tolist()
    elif not Path(texts_file).is_file():
        raise FinCompressError(f"--texts {texts_file}: file not found")
    elif Path(texts_file).suffix.lower() == ".csv":
        with Path(texts_file).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "text" not in (reader.fieldnames or []):
                raise FinCompressError(f"--texts {texts_file}: a CSV needs a 'text' column")
            texts = [row["text"] for row in reader]
    else:
        texts = Path(texts_file).read_text(encoding="utf-8").splitlines()
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise FinCompressError(f"{texts_file or 'data/test.csv'}: no sentences to send")
    return texts


def request_bodies(texts: list[str]) -> list[bytes]:
    return [json.dumps({"inputs": text}).encode("utf-8") for text in texts]


def rate_list(text: str) -> list[float]:
    """Comma-separated arrival rates > 0 (requests/s)."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates, got {text!r}")
    return list(dict.fromkeys(cli.positive_float(item) for item in items))


# ----------------------------------------------------------------------------- statistics

def poisson_schedule(rate: float, requests: int, seconds: float, seed: int) -> np.ndarray:
    """Send times (s from the start) of a Poisson process at `rate`, at most `requests`, all < `seconds`."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=requests)
    times = np.cumsum(gaps) - gaps[0]  # the first request leaves at once
    return times[times < seconds]


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 in ms (linear interpolation between order statistics); NaN when nothing succeeded."""
    if not len(latencies_ms):
        return {"p50_ms": math.nan, "p95_ms": math.nan, "p99_ms": math.nan}
    p50, p95, p99 = np.percentile(np.asarray(latencies_ms, dtype=float), [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def status_kind(status: int) -> str | None:
    """The error column of an HTTP status (None for success)."""
    if 200 <= status < 400:
        return None
    if status == 429:
        return "429"
    return "5xx" if status >= 500 else "4xx"


@dataclass
class Tally:
    """What one client process saw during a level (wall-clock times so processes can be merged)."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    started: float = math.inf
    finished: float = -math.inf
    late_sends: int = 0  # open loop: requests sent more than LATE_SEND_MS after their scheduled time

    def record(self, status: int | None, latency_ms: float) -> None:
        kind = "connection" if status is None else status_kind(status)
        if kind is None:
            self.latencies_ms.append(latency_ms)
        else:
            self.errors[kind] += 1

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())

    @property
    def elapsed(self) -> float:
        return max(self.finished - self.started, 1e-9)


def merge_tallies(tallies: list[Tally]) -> Tally:
    merged = Tally()
    for tally in tallies:
        merged.latencies_ms += tally.latencies_ms
        merged.errors.update(tally.errors)
        merged.late_sends += tally.late_sends
        merged.started, merged.finished = min(merged.started, tally.started), max(merged.finished, tally.finished)
    return merged


def mark_client_bound(rows: list[dict], ceiling: float | None, share: float = CLIENT_BOUND_SHARE) -> list[dict]:
    """Set `client_ceiling` / `client_bound` on each row; warn about levels the client itself limits.

    A level is client-bound when its throughput, or (open loop) its offered rate, is >= share x ceiling.
    """
    for row in rows:
        row["client_ceiling"] = "" if ceiling is None else round(ceiling, 3)
        if ceiling is None:
            row["client_bound"] = ""
            continue
        load = max(float(row["throughput"] or 0), float(row["rate"] or 0))
        row["client_bound"] = load >= share * ceiling
        if row["client_bound"]:
            level = f"rate {row['rate']}/s" if row["mode"] == "open" else f"concurrency {row['concurrency']}"
            log.warning("%s %s: %.1f/s is within %d%% of the client's own ceiling (%.1f/s): this figure "
                        "measures the client, not the server", row["variant"], level, load, share * 100, ceiling)
    return rows


# ----------------------------------------------------------------------------- the Python client

@dataclass
class LevelSpec:
    """One level for one client process (picklable: it crosses to `--processes` workers)."""

    url: str
    bodies: list[bytes]
    mode: str  # "closed" | "open"
    value: float  # concurrency (closed) or rate (open)
    requests: int
    seconds: float
    timeout: float
    seed: int = 0
    offset: int = 0  # where this process starts in the rotation


async def _send(client, spec: LevelSpec, index: int, tally: Tally, scheduled: float | None = None) -> None:
    import httpx

    body = spec.bodies[(spec.offset + index) % len(spec.bodies)]
    start = time.perf_counter() if scheduled is None else scheduled
    try:
        response = await client.post(spec.url + "/predict", content=body,
                                     headers={"content-type": "application/json"})
        await response.aread()
        status: int | None = response.status_code
    except httpx.HTTPError:
        status = None
    tally.record(status, (time.perf_counter() - start) * 1000)


async def _closed_loop(client, spec: LevelSpec, tally: Tally) -> None:
    deadline = time.perf_counter() + spec.seconds
    counter = iter(range(spec.requests))

    async def worker() -> None:
        for index in counter:  # the shared iterator hands each request number out once
            if time.perf_counter() >= deadline:
                return
            await _send(client, spec, index, tally)

    await asyncio.gather(*(worker() for _ in range(int(spec.value))))


async def _open_loop(client, spec: LevelSpec, tally: Tally) -> None:
    schedule = poisson_schedule(spec.value, spec.requests, spec.seconds, spec.seed)
    origin = time.perf_counter()
    tasks = []
    for index, offset in enumerate(schedule):
        delay = origin + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay * 1000 > LATE_SEND_MS:
            tally.late_sends += 1
        tasks.append(asyncio.create_task(_send(client, spec, index, tally, scheduled=origin + offset)))
    await asyncio.gather(*tasks)


async def _python_level(spec: LevelSpec) -> Tally:
    import httpx

    tally = Tally()
    in_flight = int(spec.value) if spec.mode == "closed" else None  # open loop: as many as the schedule needs
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=spec.timeout) as client:
        tally.started = time.time()
        await (_closed_loop if spec.mode == "closed" else _open_loop)(client, spec, tally)
        tally.finished = time.time()
    return tally


def run_python_level(spec: LevelSpec) -> Tally:
    """One client process's share of a level (top-level so `--processes` workers can run it)."""
    return asyncio.run(_python_level(spec))


def split_spec(spec: LevelSpec, processes: int) -> list[LevelSpec]:
    """The level's load shared by `processes` clients (concurrency, rate and requests divided)."""
    processes = max(1, min(processes, int(spec.value) if spec.mode == "closed" else processes, spec.requests))
    shares = []
    for i in range(processes):
        value = (int(spec.value) // processes + (i < int(spec.value) % processes) if spec.mode == "closed"
                 else spec.value / processes)
        requests = spec.requests // processes + (i < spec.requests % processes)
        shares.append(LevelSpec(spec.url, spec.bodies, spec.mode, value, requests, spec.seconds, spec.timeout,
                                seed=spec.seed * 1000 + i, offset=i * len(spec.bodies) // processes))
    return shares


def python_client(spec: LevelSpec, processes: int) -> Tally:
    shares = split_spec(spec, processes)
    if len(shares) == 1:
        return run_python_level(shares[0])
    with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
        return merge_tallies(list(pool.map(run_python_level, shares)))


# ----------------------------------------------------------------------------- the wrk client

WRK_SCRIPT = """-- Rotating real sentences for wrk: one JSON request body per line of the bodies file.
local bodies = {}
for line in io.lines(%(bodies)s) do bodies[#bodies + 1] = line end
local threads = {}
counts = {}
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = id * 7919  -- each thread starts at another sentence (a prime stride through the rotation)
  math.randomseed(%(seed)d + id)
end
%(delay)s
function request()
  counter = counter + 1
  return wrk.format(nil, %(path)s, nil, bodies[(counter %% #bodies) + 1])
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("fincompress_latency_us %%d %%d\\n", p, latency:percentile(p)))
  end
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      io.write(string.format("fincompress_status %%d %%d\\n", status, n))
    end
  end
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # for ASCII text (our temporary paths, URL paths) a JSON string is a Lua string


# Paced (open-loop) levels: each connection waits an exponential time between its requests, so the
# connections together send Poisson arrivals at the rate, as long as answers are fast against the mean wait.
WRK_DELAY = """
function delay()
  return -math.log(1 - math.random()) * %(mean_ms).3f
end
"""
PACED_SECONDS_PER_CONNECTION = 2.0  # mean wait of a paced connection: well above any admitted latency
PACED_MIN_CONNECTIONS = 64


def wrk_script(bodies_file: Path, path: str, mean_delay_ms: float | None = None, seed: int = 0) -> str:
    """The rotating-sentences script; with `mean_delay_ms`, each connection paces its requests."""
    delay = WRK_DELAY % {"mean_ms": mean_delay_ms} if mean_delay_ms else ""
    return WRK_SCRIPT % {"bodies": lua_string(str(bodies_file)), "path": lua_string(path), "seed": seed,
                         "delay": delay}


def paced_connections(rate: float) -> tuple[int, float]:
    """(connections, mean wait in ms) for a paced level at `rate` requests/s."""
    connections = max(PACED_MIN_CONNECTIONS, math.ceil(rate * PACED_SECONDS_PER_CONNECTION))
    return connections, connections * 1000.0 / rate


UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * UNITS_MS[unit]


def parse_wrk_output(text: str) -> dict:
    """wrk's report (with --latency and our script's lines) -> requests, seconds, percentiles, errors."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if total is None:
        raise FinCompressError(f"wrk printed no summary: {text.strip()[-300:]!r}")
    result = {"requests": int(total.group(1)), "seconds": _duration_ms(total.group(2) + total.group(3)) / 1000}
    distribution = dict(re.findall(r"^\s*(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", text, flags=re.M))
    result.update({f"p{p}_ms": _duration_ms(v) for p, v in distribution.items() if p in ("50", "75", "90", "99")})
    result.update({f"p{p}_ms": int(us) / 1000 for p, us in re.findall(r"fincompress_latency_us (\d+) (\d+)", text)})
    statuses = Counter()
    for status, n in re.findall(r"fincompress_status (\d+) (\d+)", text):
        statuses[int(status)] += int(n)
    errors = Counter()
    for status, n in statuses.items():
        if status_kind(status):
            errors[status_kind(status)] += n
    if not statuses:  # without our script's counts, wrk's own total of non-2xx answers
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        errors["5xx"] += int(non_2xx.group(1)) if non_2xx else 0
    socket_errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors["connection"] += sum(map(int, socket_errors.groups())) if socket_errors else 0
    result["errors"] = errors
    result["ok"] = max(result["requests"] - sum(v for k, v in errors.items() if k != "connection"), 0)
    return result


def wrk_client(spec: LevelSpec, threads: int) -> dict:
    """Run wrk for one level, closed loop or paced at a rate (bounded by --seconds: wrk has no request count)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise FinCompressError("--client wrk: the wrk binary is not installed (Debian/Ubuntu: "
                               "`apt-get install wrk`); or use --client python")
    connections, mean_delay_ms = (int(spec.value), None) if spec.mode == "closed" else paced_connections(spec.value)
    with tempfile.TemporaryDirectory(prefix="fincompress-wrk-") as folder:
        bodies_file = Path(folder) / "bodies.jsonl"
        bodies_file.write_bytes(b"\n".join(spec.bodies) + b"\n")
        script = Path(folder) / "rotate.lua"
        script.write_text(wrk_script(bodies_file, urlsplit(spec.url).path + "/predict", mean_delay_ms, spec.seed),
                          encoding="utf-8")
        command = [binary, "-t", str(max(1, min(threads, connections))), "-c", str(connections),
                   "-d", f"{max(1, round(spec.seconds))}s", "--timeout", f"{max(1, round(spec.timeout))}s",
                   "--latency", "-s", str(script), spec.url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=spec.seconds + spec.timeout + 30)
    if done.returncode != 0:
        raise FinCompressError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return parse_wrk_output(done.stdout)


# ----------------------------------------------------------------------------- the server's side

def server_info(url: str) -> dict:
    """GET /info (variant, runtime, threads, workers); a clear line if the server does not answer."""
    import httpx

    try:
        response = httpx.get(url + "/info", timeout=10)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise FinCompressError(f"{url}/info did not answer with JSON ({exc}); is the server running "
                               "(`python -m fincompress.serve --variant NAME`)?") from exc


def metric_samples(url: str) -> list[tuple[str, dict, float]] | None:
    """The server's /metrics samples (name, labels, value); None if unreadable."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        families = list(text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text))
    except (httpx.HTTPError, ValueError):
        return None
    return [(sample.name, sample.labels, sample.value) for family in families for sample in family.samples]


def metric_sums(samples: list[tuple[str, dict, float]] | None) -> dict[str, float] | None:
    """Each sample name summed over its series (and workers)."""
    if samples is None:
        return None
    sums: dict[str, float] = {}
    for name, _, value in samples:
        sums[name] = sums.get(name, 0.0) + value
    return sums


def status_buckets(samples: list[tuple[str, dict, float]] | None, status: str = "200") -> dict[float, float]:
    """Cumulative counts by upper bound of the server's time for POST /predict requests answered `status`."""
    buckets: dict[float, float] = {}
    for name, labels, value in samples or []:
        if (name == "fincompress_request_seconds_bucket" and labels.get("route") == "/predict"
                and labels.get("status") == status):
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def server_quantile_ms(before: dict[float, float], after: dict[float, float], quantile: float = 0.99) -> float | str:
    """The server-side latency quantile of one status's requests during a level (the histogram's
    difference, linear within a bucket as Prometheus' histogram_quantile); blank when none."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return ""
    rank, lower, below = quantile * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return round(lower * 1000, 3)  # beyond the last finite bound: its value is a floor
            share = (rank - below) / (count - below) if count > below else 1.0
            return round((lower + (bound - lower) * share) * 1000, 3)
        lower, below = bound, count
    return ""


def batch_totals(sums: dict[str, float] | None) -> tuple[float, float] | None:
    """(sum, count) of the server's `fincompress_batch_texts` histogram; None if absent."""
    if not sums or "fincompress_batch_texts_count" not in sums:
        return None
    return sums.get("fincompress_batch_texts_sum", 0.0), sums["fincompress_batch_texts_count"]


def resident_mb(sums: dict[str, float] | None) -> float | str:
    """The server's resident memory in MB (all workers); blank when it does not report it."""
    value = (sums or {}).get("fincompress_resident_memory_bytes")
    return round(value / 1e6, 1) if value else ""


def mean_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | str:
    """Mean texts per model call during a level (the histogram's difference); blank when unknown."""
    if before is None or after is None or after[1] <= before[1]:
        return ""
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def wait_healthy(url: str, seconds: float = HEALTH_WAIT_SECONDS, process: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise FinCompressError(f"the server at {url} exited (code {process.returncode}) before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise FinCompressError(f"{url}/health did not answer 200 within {seconds:.0f} s")


def free_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_noop_server(statuses: list[int] | None = None) -> tuple[subprocess.Popen, str]:
    """The no-op server as a child process on a free loopback port, once it answers /health."""
    port = free_port()
    command = [sys.executable, "-m", "fincompress.evaluation.noop_server", "--port", str(port)]
    if statuses:
        command += ["--statuses", ",".join(map(str, statuses))]
    # The child imports this package from where this process found it, installed or not.
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process=process)
    except FinCompressError:
        stop_process(process)
        raise
    return process, url


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ----------------------------------------------------------------------------- levels and rows

@dataclass
class Plan:
    """Everything a run needs besides the server (shared by the real levels and the client ceiling)."""

    bodies: list[bytes]
    client: str
    processes: int
    requests: int
    seconds: float
    timeout: float
    seed: int


def measure(url: str, plan: Plan, mode: str, value: float) -> dict:
    """One level: throughput, percentiles, errors by kind and the server's mean batch size."""
    spec = LevelSpec(url, plan.bodies, mode, value, plan.requests, plan.seconds, plan.timeout, seed=plan.seed)
    before = metric_samples(url)
    if plan.client == "wrk":
        result = wrk_client(spec, plan.processes)
        stats = {k: result.get(k, math.nan) for k in ("p50_ms", "p95_ms", "p99_ms")}
        sent, seconds, ok, errors = result["requests"], result["seconds"], result["ok"], result["errors"]
        late = ""
    else:
        tally = python_client(spec, plan.processes)
        stats, sent, seconds = percentiles(tally.latencies_ms), tally.sent, tally.elapsed
        ok, errors, late = len(tally.latencies_ms), tally.errors, tally.late_sends if mode == "open" else ""
        if late and late > 0.01 * sent:
            log.warning("rate %s/s: %d of %d requests left more than %g ms late: the client cannot keep this "
                        "rate (try --processes or a lower rate)", value, late, sent, LATE_SEND_MS)
    after = metric_samples(url)
    sums_before, sums_after = metric_sums(before), metric_sums(after)
    row = {"mode": mode, "concurrency": int(value) if mode == "closed" else "",
           "rate": value if mode == "open" else "", "requests": sent, "seconds": round(seconds, 3), "ok": ok,
           "throughput": round(ok / max(seconds, 1e-9), 3), **{k: round(v, 3) for k, v in stats.items()},
           **{f"errors_{kind}": errors.get(kind, 0) for kind in ERROR_KINDS}, "late_sends": late,
           "mean_batch_texts": mean_batch(batch_totals(sums_before), batch_totals(sums_after)),
           **{f"server_p99_ms_{name}": server_quantile_ms(status_buckets(before, status), status_buckets(after, status))
              for name, status in (("answered", "200"), ("refused", "429"))},
           "rss_start_mb": resident_mb(sums_before), "rss_end_mb": resident_mb(sums_after)}
    log.info("%s %s: %.1f sentences/s, p99 %.1f ms, errors %s", mode,
             f"concurrency {int(value)}" if mode == "closed" else f"rate {value}/s", row["throughput"],
             row["p99_ms"], {k: v for k, v in errors.items() if v} or "none")
    return row


def describe_run(url: str, info: dict, plan: Plan) -> dict:
    """The columns every row of one run shares."""
    machine = cpu_metadata()
    batching = info.get("batching") or {}
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "variant": info.get("variant", ""), "runtime": info.get("runtime", ""),
            "threads": info.get("threads", ""), "workers": info.get("workers", ""),
            "max_queue": batching.get("max_queue", ""), "max_wait_ms": batching.get("max_wait_ms", ""),
            "client": plan.client,
            "processes": plan.processes, "cpu": machine["cpu"], "isa": " ".join(machine["isa"]), "url": url}


def client_ceiling(plan: Plan, concurrency: int) -> dict:
    """The client's own ceiling: the same client, closed loop, against a no-op server it starts itself."""
    process, url = start_noop_server()
    try:
        row = measure(url, plan, "closed", concurrency)
    finally:
        stop_process(process)
    log.info("client ceiling (%s client, %d processes, concurrency %d): %.1f requests/s", plan.client,
             plan.processes, concurrency, row["throughput"])
    return {**describe_run(url, {"variant": CEILING_VARIANT, "runtime": "none"}, plan), **row}


def run_levels(url: str, plan: Plan, concurrencies: list[int], rates: list[float]) -> list[dict]:
    levels = [("closed", float(c)) for c in concurrencies] + [("open", r) for r in rates]
    return [measure(url, plan, mode, value) for mode, value in levels]


def warm_up(url: str, bodies: list[bytes], count: int, timeout: float) -> None:
    """A few sequential requests so connection set-up and lazy start-up work are not in the first level."""
    import httpx

    with httpx.Client(timeout=timeout) as client:
        for index in range(count):
            try:
                client.post(url + "/predict", content=bodies[index % len(bodies)],
                            headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                raise FinCompressError(f"{url}/predict: no answer during warm-up ({exc})") from exc


# ----------------------------------------------------------------------------- the plot

def offered_load(row: dict) -> float:
    """Requests/s offered: the arrival rate (open loop), else what the closed loop sustained."""
    return float(row["rate"]) if row.get("mode") == "open" else float(row["throughput"])


def plot_p99(csv_path: Path, plot_path: Path) -> Path | None:
    """p99 latency against offered load, one line per server (variant, runtime, workers x threads) and
    client/mode (the ceiling left out)."""
    import pandas as pd
    from matplotlib.figure import Figure

    frame = pd.read_csv(csv_path, keep_default_na=False, dtype=str)
    frame = frame[(frame["variant"] != CEILING_VARIANT) & (frame["p99_ms"] != "") & (frame["p99_ms"] != "nan")]
    if frame.empty:
        return None
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for column in ("workers", "threads"):  # rows written before these columns existed
        frame[column] = frame[column] if column in frame.columns else ""
    keys = ["variant", "runtime", "workers", "threads", "client", "mode"]
    for (variant, runtime, workers, threads, client, mode), group in frame.groupby(keys):
        points = sorted((offered_load(row), float(row["p99_ms"])) for row in group.to_dict("records"))
        axes.plot(*zip(*points), marker="o", linestyle="-" if mode == "open" else "--",
                  label=f"{variant} ({runtime}, {workers or '?'} x {threads or '?'}, {client}, {mode} loop)")
    axes.set_xlabel("offered load (requests/s; closed loop: sustained)")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    # Below the axes: inside them it hides the points of the fastest variants.
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    return atomic_write(plot_path, lambda tmp: figure.savefig(tmp, format="png", dpi=130, bbox_inches="tight"))


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.loadtest",
                                     description=__doc__.split("\n\n")[0])
    d = DEFAULTS
    parser.add_argument("--url", required=True, help="the running server, e.g. http://127.0.0.1:8080 (loopback only)")
    add_root_argument(parser)
    parser.add_argument("--texts", type=Path, default=None,
                        help="sentences to send: a CSV with a 'text' column, or one per line (default: "
                        "<root>/data/test.csv)")
    parser.add_argument("--concurrency", type=cli.positive_int_list, default=None,
                        help="closed-loop levels: requests in flight (default 1,8,32 when no --rates)")
    parser.add_argument("--rates", type=rate_list, default=None, help="open-loop levels: Poisson arrival rates, "
                        "requests/s (wrk: paced connections, each waiting an exponential time between requests)")
    parser.add_argument("--requests", type=cli.positive_int, default=d["requests"],
                        help=f"at most this many requests per level (default {d['requests']}; wrk: ignored)")
    parser.add_argument("--seconds", type=cli.positive_float, default=d["seconds"],
                        help=f"at most this long per level (default {d['seconds']:g}; wrk runs exactly this long)")
    parser.add_argument("--client", choices=CLIENTS, default="python", help="load generator (default python)")
    parser.add_argument("--processes", type=cli.positive_int, default=d["processes"],
                        help="Python client processes, results merged (wrk: its threads) (default 1)")
    parser.add_argument("--client-ceiling", action="store_true",
                        help="first measure this client against a no-op server and mark levels near its ceiling")
    parser.add_argument("--timeout", type=cli.positive_float, default=d["timeout"],
                        help=f"seconds before a request counts as a connection error (default {d['timeout']:g})")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=d["warmup"],
                        help=f"sequential requests before the first level, not recorded (default {d['warmup']})")
    parser.add_argument("--seed", type=cli.non_negative_int, default=d["seed"], help="seed of the Poisson arrivals")
    return parser


def check_args(args: argparse.Namespace) -> tuple[list[int], list[float]]:
    concurrencies = args.concurrency or ([] if args.rates else DEFAULTS["concurrency"])
    rates = args.rates or []
    return concurrencies, rates


def main(argv: list[str] | None = None) -> list[dict]:
    args = cli.parse_args(build_parser(), argv)
    url = check_loopback(args.url)
    concurrencies, rates = check_args(args)
    root = project_root(args.root)
    plan = Plan(request_bodies(read_texts(root, args.texts)), args.client, args.processes, args.requests,
                args.seconds, args.timeout, args.seed)
    if args.client == "wrk" and shutil.which("wrk") is None:
        wrk_client(LevelSpec(url, plan.bodies, "closed", 1, 1, 1, 1), 1)  # the one-line "not installed" error
    info = server_info(url)
    ceiling_rows = [client_ceiling(plan, max(concurrencies or [32]))] if args.client_ceiling else []
    warm_up(url, plan.bodies, args.warmup, args.timeout)
    shared = describe_run(url, info, plan)
    rows = [{**shared, **row} for row in run_levels(url, plan, concurrencies, rates)]
    mark_client_bound(rows, ceiling_rows[0]["throughput"] if ceiling_rows else None)
    csv_path = results_dir(root) / SERVING_CSV
    append_csv_rows(csv_path, ceiling_rows + rows, columns=COLUMNS)
    plot = plot_p99(csv_path, results_dir(root) / "plots" / PLOT_NAME)
    log.info("wrote %s%s", csv_path, f" and {plot}" if plot else "")
    return rows


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
