"""The cost model on small hand-made serving CSVs: which level counts, cores per daily volume, prices, errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fincompress.common import cli
from fincompress.evaluation import cost
from fincompress.evaluation.serving_results import CEILING_VARIANT, COLUMNS, SERVING_CSV


def level(variant: str, throughput: float, p99: float, threads: int = 2, workers: int = 1, **extra) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row.update({"variant": variant, "runtime": "onnxruntime", "threads": threads, "workers": workers,
                "mode": "closed", "concurrency": 4, "throughput": throughput, "p99_ms": p99,
                "errors_429": 0, "errors_5xx": 0, "errors_4xx": 0, "errors_connection": 0, "client_bound": False})
    row.update(extra)
    return row


def write(root, rows: list[dict]) -> None:
    (root / "results").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "results" / SERVING_CSV, index=False)


@pytest.fixture
def root(tmp_path):
    write(tmp_path, [
        level("int8", 300.0, 40.0),
        level("int8", 500.0, 90.0),  # the best level within 100 ms
        level("int8", 900.0, 400.0),  # too slow at p99
        level("int8", 950.0, 50.0, errors_429=3),  # shed load: not a sustained level
        level("int8", 990.0, 20.0, client_bound=True),  # measured the client
        level("teacher", 60.0, 80.0, threads=1, workers=2),  # 30/s per core: the teacher's best
        level("teacher", 100.0, 70.0, threads=4, workers=1),  # more throughput, but 25/s per core
        level(CEILING_VARIANT, 5000.0, 5.0),
    ])
    return tmp_path


def test_best_level_cores_and_prices(root):
    daily = [1e5, 1e7]
    table = cost.main(["--root", str(root), "--p99-ms", "100", "--core-hour-usd", "0.04",
                       "--daily-calls", ",".join(map(str, daily)), "--peak-factor", "3"])
    assert set(table["variant"]) == {"int8", "teacher"}  # the client's ceiling is no variant
    for variant, throughput, cores in (("int8", 500.0, 2), ("teacher", 60.0, 2)):
        rows = table[table["variant"] == variant]
        assert list(rows["throughput"]) == [throughput] * 2 and list(rows["server_cores"]) == [cores] * 2
        per_core = throughput / cores
        expected = [math.ceil(d * 3 / 86400 / per_core) for d in daily]
        assert list(rows["cores_needed"]) == expected
        assert rows["usd_per_million_at_capacity"].iloc[0] == pytest.approx(0.04 / (per_core * 3600) * 1e6, abs=1e-4)
        assert list(rows["usd_per_day"]) == pytest.approx([n * 24 * 0.04 for n in expected])
        assert list(rows["usd_per_million_provisioned"]) == pytest.approx(
            [n * 24 * 0.04 / d * 1e6 for n, d in zip(expected, daily)], abs=1e-4)
    written = pd.read_csv(root / "results" / cost.COST_CSV)
    assert len(written) == len(table) == 4


def test_without_price_only_cores(root, capsys):
    table = cost.main(["--root", str(root), "--p99-ms", "100", "--daily-calls", "1e9", "--cores", "4"])
    assert not any("usd" in column for column in table.columns)
    int8 = table[table["variant"] == "int8"].iloc[0]
    assert int8["server_cores"] == 4 and int8["cores_needed"] == math.ceil(1e9 * 3 / 86400 / (500.0 / 4))
    assert "cores_needed" in capsys.readouterr().out


def test_tighter_target_picks_a_lower_level(root):
    table = cost.main(["--root", str(root), "--p99-ms", "45", "--daily-calls", "1e6"])
    assert list(table["variant"]) == ["int8"] and list(table["throughput"]) == [300.0]


def test_arithmetic_helpers():
    assert cost.cores_needed(86_400, 1.0, 1.0) == 1 and cost.cores_needed(86_401, 1.0, 1.0) == 2
    assert cost.usd_per_million(1e6 / 3600, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("no level", "no measured level"),
    ("columns", "missing column"),
    ("numbers", "no numbers"),
])
def test_errors_are_one_line(tmp_path, capsys, case, message):
    if case == "no level":
        write(tmp_path, [level("int8", 100.0, 500.0)])
    elif case == "columns":
        write(tmp_path, [{"variant": "int8", "throughput": 1}])
    elif case == "numbers":
        write(tmp_path, [level("int8", "fast", "low")])
    assert cli.run(cost.main, ["--root", str(tmp_path), "--p99-ms", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "results" / cost.COST_CSV).exists()


def test_unknown_cores_needs_the_flag(tmp_path, capsys):
    write(tmp_path, [level("int8", 100.0, 50.0, threads="", workers="")])
    assert cli.run(cost.main, ["--root", str(tmp_path), "--p99-ms", "100"]) == 2
    assert "--cores" in capsys.readouterr().err
    assert cli.run(cost.main, ["--root", str(tmp_path), "--p99-ms", "100", "--cores", "2"]) == 0
