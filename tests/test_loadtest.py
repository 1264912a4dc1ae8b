"""The load tester: levels against a real local server process, error counting, the loopback rule, the
Poisson schedule, percentiles, client-bound marking, the wrk script and its output parser. No speed is
asserted anywhere: the numbers depend on the machine and on what else runs on it."""

from __future__ import annotations

import csv
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fincompress.common import cli
from fincompress.evaluation import loadtest

STATUS_CYCLE = [200, 429, 200, 500]  # the no-op server answers /predict with these in rotation
TEXTS = ["Operating profit rose to EUR 13.1 mn.", 'Sales "fell" sharply.', "Net loss widened in Q3 – ünïcode."]

# wrk 4.x with --latency and our script's done() lines, captured against the no-op server (STATUS_CYCLE).
WRK_SAMPLE = """Running 1s test @ http://127.0.0.1:52303
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.81ms    2.39ms  12.04ms   55.63%
    Req/Sec   537.30     62.36   620.00     60.00%
  Latency Distribution
     50%    3.91ms
     75%    5.03ms
     90%    7.28ms
     99%    9.89ms
  536 requests in 1.00s, 111.75KB read
  Non-2xx or 3xx responses: 268
Requests/sec:    534.49
Transfer/sec:    111.44KB
fincompress_latency_us 50 3915
fincompress_latency_us 95 8196
fincompress_latency_us 99 9886
fincompress_status 429 134
fincompress_status 200 268
fincompress_status 500 134
"""
# wrk's own report only (no script): non-2xx answers and socket errors as wrk totals them.
WRK_PLAIN = """Running 2s test @ http://127.0.0.1:8080/predict
  2 threads and 8 connections
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    2.50ms
     99%    1.10s
  1200 requests in 2.00s, 200.00KB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 40
Requests/sec:    600.00
"""


@pytest.fixture
def texts_file(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def noop_url():
    process, url = loadtest.start_noop_server()
    yield url
    loadtest.stop_process(process)


@pytest.fixture
def failing_url():
    process, url = loadtest.start_noop_server(STATUS_CYCLE)
    yield url
    loadtest.stop_process(process)


def read_rows(root: Path) -> list[dict]:
    with (root / "results" / loadtest.SERVING_CSV).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run(url: str, root: Path, texts: Path, *extra: str) -> list[dict]:
    loadtest.main(["--url", url, "--root", str(root), "--texts", str(texts), "--warmup", "0", "--seconds", "10",
                   *extra])
    return read_rows(root)


# ----------------------------------------------------------------------------- against a real server

def test_closed_and_open_levels_write_rows_and_plot(noop_url, tmp_path, texts_file):
    rows = run(noop_url, tmp_path, texts_file, "--concurrency", "1,3", "--rates", "40", "--requests", "12")
    assert [(r["mode"], r["concurrency"], r["rate"]) for r in rows] == [("closed", "1", ""), ("closed", "3", ""),
                                                                       ("open", "", "40.0")]
    assert set(loadtest.COLUMNS) <= set(rows[0])
    for row in rows:
        assert row["variant"] == "noop" and row["client"] == "python" and row["cpu"]
        assert int(row["ok"]) == int(row["requests"]) and float(row["throughput"]) > 0
        assert float(row["p50_ms"]) <= float(row["p95_ms"]) <= float(row["p99_ms"])
        assert float(row["mean_batch_texts"]) == 1.0  # the no-op server runs one text per call
    assert [int(r["requests"]) for r in rows[:2]] == [12, 12]
    assert int(rows[2]["requests"]) == len(loadtest.poisson_schedule(40.0, 12, 10.0, seed=0))
    assert 0 <= int(rows[2]["late_sends"]) <= int(rows[2]["requests"]) and rows[0]["late_sends"] == ""
    assert (tmp_path / "results" / "plots" / loadtest.PLOT_NAME).stat().st_size > 0
    run(noop_url, tmp_path, texts_file, "--concurrency", "2", "--requests", "4")
    assert len(read_rows(tmp_path)) == 4  # appended, earlier rows kept


def test_errors_are_counted_by_status(failing_url, tmp_path, texts_file):
    row = run(failing_url, tmp_path, texts_file, "--concurrency", "1", "--requests", "40")[0]
    share = {kind: STATUS_CYCLE.count(code) / len(STATUS_CYCLE) for kind, code in (("429", 429), ("5xx", 500))}
    assert int(row["errors_429"]) == 40 * share["429"] and int(row["errors_5xx"]) == 40 * share["5xx"]
    assert int(row["ok"]) == 40 * STATUS_CYCLE.count(200) / len(STATUS_CYCLE)
    assert int(row["errors_connection"]) == 0 and int(row["errors_4xx"]) == 0



def test_the_noop_server_refuses_bodies_without_a_sentence():
    from fincompress.evaluation.noop_server import valid_body

    assert all(valid_body(body) for body in loadtest.request_bodies(TEXTS))
    assert not any(valid_body(body) for body in (b"", b"{}", b'{"inputs": ""}', b"[1]", b"not json"))


def test_processes_are_merged(failing_url, tmp_path, texts_file):
    row = run(failing_url, tmp_path, texts_file, "--concurrency", "2", "--requests", "16", "--processes", "2")[0]
    errors = sum(int(row[f"errors_{kind}"]) for kind in loadtest.ERROR_KINDS)
    assert int(row["requests"]) == 16 and int(row["ok"]) + errors == 16
    assert int(row["errors_429"]) > 0 and int(row["errors_5xx"]) > 0


def test_connection_errors_are_counted(tmp_path, texts_file):
    spec = loadtest.LevelSpec(f"http://127.0.0.1:{loadtest.free_port()}", loadtest.request_bodies(TEXTS),
                              "closed", 2, 6, 5.0, 2.0)
    tally = loadtest.run_python_level(spec)
    assert tally.errors["connection"] == 6 and not tally.latencies_ms


def test_client_ceiling_is_recorded_and_marks_rows(noop_url, tmp_path, texts_file):
    rows = run(noop_url, tmp_path, texts_file, "--concurrency", "2", "--requests", "10", "--client-ceiling")
    ceiling, level = rows
    assert ceiling["variant"] == loadtest.CEILING_VARIANT and float(ceiling["throughput"]) > 0
    assert level["client_ceiling"] == ceiling["throughput"]
    assert level["client_bound"] == str(float(level["throughput"]) >= 0.8 * float(ceiling["throughput"]))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="the wrk binary is not installed")
def test_real_wrk_run(failing_url, tmp_path, texts_file):
    row = run(failing_url, tmp_path, texts_file, "--client", "wrk", "--concurrency", "2", "--seconds", "1",
               "--processes", "2")[0]  # two wrk threads, each with its own rotation
    assert row["client"] == "wrk" and row["processes"] == "2" and int(row["requests"]) > 0
    assert int(row["errors_429"]) > 0 and int(row["errors_5xx"]) > 0
    assert int(row["ok"]) + int(row["errors_429"]) + int(row["errors_5xx"]) == int(row["requests"])
    assert int(row["errors_4xx"]) == 0  # the no-op server answers 422 to a body without a sentence
    assert float(row["p50_ms"]) <= float(row["p99_ms"])


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "http://example.com", "http://192.168.1.5", "ftp://127.0.0.1"])
def test_only_loopback_is_load_tested(url, tmp_path, texts_file, capsys):
    assert cli.run(loadtest.main, ["--url", url, "--root", str(tmp_path), "--texts", str(texts_file)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "\n" not in message
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "http://localhost:9000", "http://[::1]:8080"])
def test_loopback_addresses_are_accepted(url):
    assert loadtest.check_loopback(url) == url.rstrip("/")


def test_wrk_missing_is_one_line_for_closed_and_paced_levels(monkeypatch, tmp_path, texts_file, capsys):
    monkeypatch.setattr(loadtest.shutil, "which", lambda name: None)
    argv = ["--url", "http://127.0.0.1:1", "--root", str(tmp_path), "--texts", str(texts_file), "--client", "wrk"]
    assert cli.run(loadtest.main, argv) == 2
    assert "apt-get install wrk" in capsys.readouterr().err
    assert cli.run(loadtest.main, [*argv, "--rates", "10"]) == 2
    assert "apt-get install wrk" in capsys.readouterr().err


def test_no_server_is_one_line(tmp_path, texts_file, capsys):
    argv = ["--url", f"http://127.0.0.1:{loadtest.free_port()}", "--root", str(tmp_path), "--texts", str(texts_file)]
    assert cli.run(loadtest.main, argv) == 2
    assert "/info" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pure parts

def test_poisson_schedule_mean_gap_and_bounds():
    rate = 50.0
    times = loadtest.poisson_schedule(rate, 20_000, 1e9, seed=3)
    gaps = np.diff(times)
    assert len(times) == 20_000 and times[0] == 0 and np.all(gaps >= 0)
    assert abs(gaps.mean() - 1 / rate) < 0.05 / rate  # mean inter-arrival ~ 1/rate
    assert abs(gaps.std() - 1 / rate) < 0.05 / rate  # exponential gaps: std = mean
    np.testing.assert_array_equal(times, loadtest.poisson_schedule(rate, 20_000, 1e9, seed=3))
    assert not np.array_equal(times, loadtest.poisson_schedule(rate, 20_000, 1e9, seed=4))
    bounded = loadtest.poisson_schedule(rate, 20_000, 2.0, seed=3)
    assert bounded.max() < 2.0 and len(bounded) < 20_000


def test_percentiles_are_order_statistics():
    values = list(np.random.default_rng(0).permutation(101).astype(float))  # 0..100 shuffled
    stats = loadtest.percentiles(values)
    assert (stats["p50_ms"], stats["p95_ms"], stats["p99_ms"]) == (50.0, 95.0, 99.0)
    assert all(np.isnan(v) for v in loadtest.percentiles([]).values())


def test_mark_client_bound():
    rows = [{"variant": "v", "mode": "closed", "concurrency": 1, "rate": "", "throughput": 79.0},
            {"variant": "v", "mode": "closed", "concurrency": 8, "rate": "", "throughput": 81.0},
            {"variant": "v", "mode": "open", "concurrency": "", "rate": 90.0, "throughput": 10.0}]
    marked = loadtest.mark_client_bound(rows, 100.0, share=0.8)
    assert [r["client_bound"] for r in marked] == [False, True, True]  # open loop: the offered rate counts
    assert all(r["client_ceiling"] == 100.0 for r in marked)
    assert all(r["client_bound"] == "" for r in loadtest.mark_client_bound(rows, None))


def test_mean_batch_is_the_histogram_difference():
    assert loadtest.mean_batch((10.0, 5.0), (40.0, 15.0)) == 3.0
    assert loadtest.mean_batch(None, (1.0, 1.0)) == "" and loadtest.mean_batch((1.0, 1.0), (1.0, 1.0)) == ""


def test_split_spec_shares_the_load():
    spec = loadtest.LevelSpec("u", [b"x"] * 10, "closed", 5, 11, 1.0, 1.0)
    shares = loadtest.split_spec(spec, 2)
    assert sum(s.value for s in shares) == 5 and sum(s.requests for s in shares) == 11
    open_shares = loadtest.split_spec(loadtest.LevelSpec("u", [b"x"], "open", 30.0, 9, 1.0, 1.0), 3)
    assert sum(s.value for s in open_shares) == pytest.approx(30.0) and len({s.seed for s in open_shares}) == 3


def test_wrk_output_parser_with_script_lines():
    result = loadtest.parse_wrk_output(WRK_SAMPLE)
    assert result["requests"] == 536 and result["seconds"] == 1.0
    assert result["p50_ms"] == 3.915 and result["p95_ms"] == 8.196 and result["p99_ms"] == 9.886
    assert result["errors"]["429"] == 134 and result["errors"]["5xx"] == 134
    assert result["ok"] == 268 and result["errors"]["connection"] == 0


def test_wrk_output_parser_plain():
    result = loadtest.parse_wrk_output(WRK_PLAIN)
    assert result["requests"] == 1200 and result["seconds"] == 2.0
    assert result["p50_ms"] == pytest.approx(0.85) and result["p99_ms"] == pytest.approx(1100.0)
    assert result["errors"]["connection"] == 6 and result["errors"]["5xx"] == 40
    assert result["ok"] == 1160


def test_wrk_output_without_summary_is_an_error():
    with pytest.raises(loadtest.FinCompressError, match="summary"):
        loadtest.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused")


def test_wrk_script_rotates_the_bodies_file(tmp_path):
    bodies = tmp_path / "bodies.jsonl"
    script = loadtest.wrk_script(bodies, "/api/predict")
    assert f'io.lines("{bodies}")' in script and '"/api/predict"' in script
    assert "function request()" in script and "function response(status" in script
    assert "%" not in script.replace("%d", "").replace("counter % #bodies", "")  # every format marker filled in


# ----------------------------------------------------------------------------- against fincompress.serve

@pytest.mark.slow
def test_against_the_real_server(work_root, tmp_path):
    port = loadtest.free_port()
    server = subprocess.Popen([sys.executable, "-m", "fincompress.serve", "--variant", "teacher", "--root",
                               str(work_root), "--port", str(port), "--threads", "1", "--max-queue", "7"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        loadtest.wait_healthy(url, seconds=60, process=server)
        loadtest.main(["--url", url, "--root", str(work_root), "--concurrency", "2", "--requests", "10",
                       "--warmup", "1"])
    finally:
        loadtest.stop_process(server)
    row = read_rows(work_root)[0]
    assert row["variant"] == "teacher" and row["threads"] == "1" and row["workers"] == "1"
    assert row["max_queue"] == "7" and float(row["max_wait_ms"]) == 0.0  # the server's admission settings
    assert int(row["ok"]) == 10 and float(row["mean_batch_texts"]) >= 1
    assert float(row["rss_start_mb"]) > 10 and float(row["rss_end_mb"]) > 10  # the server's memory, read from /metrics


def test_free_port_is_bindable():
    port = loadtest.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_paced_wrk_levels_wait_an_exponential_time_per_connection(tmp_path):
    closed = loadtest.wrk_script(tmp_path / "b.jsonl", "/predict")
    paced = loadtest.wrk_script(tmp_path / "b.jsonl", "/predict", mean_delay_ms=2000.0, seed=3)
    assert "function delay()" not in closed and "function delay()" in paced and "2000.000" in paced
    assert "math.randomseed(3 + id)" in paced
    assert loadtest.paced_connections(300) == (600, 2000.0)  # each connection's mean wait: 2 s
    assert loadtest.paced_connections(10) == (64, 6400.0)


def test_the_server_quantiles_are_read_from_the_histogram_difference():
    before = {0.01: 10.0, 0.02: 10.0, math.inf: 10.0}
    after = {0.01: 60.0, 0.02: 110.0, math.inf: 110.0}  # this level: 50 under 10 ms, 50 in (10, 20] ms
    assert loadtest.server_quantile_ms(before, after, 0.5) == pytest.approx(10.0)
    assert loadtest.server_quantile_ms(before, after, 0.99) == pytest.approx(19.8)
    assert loadtest.server_quantile_ms(after, after) == ""  # nothing answered during the level
    beyond = {0.01: 0.0, math.inf: 5.0}
    assert loadtest.server_quantile_ms({}, beyond) == pytest.approx(10.0)  # past the last bound: its floor
    samples = [("fincompress_request_seconds_bucket", {"route": "/predict", "status": "200", "le": "0.01"}, 4.0),
               ("fincompress_request_seconds_bucket", {"route": "/predict", "status": "429", "le": "0.01"}, 9.0),
               ("fincompress_request_seconds_bucket", {"route": "/predict", "status": "200", "le": "0.01"}, 1.0)]
    assert loadtest.status_buckets(samples) == {0.01: 5.0}  # answered requests only, summed over workers
    assert loadtest.status_buckets(samples, "429") == {0.01: 9.0}  # refused ones, for how fast a 429 comes
