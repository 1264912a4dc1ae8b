"""Timing: batch-1 latency and throughput of loaded variants, interleaved so machine drift favours none.

Reads and writes nothing: the benchmark passes loaded predictors and real test sentences and writes
the results. The model call alone is timed (tokenization is the same for every variant). Within a
runtime, variants are interleaved and their order rotated every repetition; runtimes are timed one
after the other so one runtime's threads never steal the cores from another's.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from fincompress.common.loader import Predictor, load_variant
from fincompress.common.metrics import paired_bootstrap_speedup
from fincompress.evaluation.settings import THROUGHPUT_WARMUP_MAX, BenchmarkSettings

SPEED_COLUMNS = ("cpu_latency_ms_median", "cpu_latency_ms_p95", "cpu_throughput_sps", "speedup_vs_teacher",
                 "speedup_vs_teacher_same_runtime", "speedup_ci_low", "speedup_ci_high")


def time_call(predictor: Predictor, encoded: dict) -> float:
    start = time.perf_counter()
    predictor.logits(encoded)
    return (time.perf_counter() - start) * 1000.0


def interleaved_timings(predictors: list[Predictor], inputs: list[list[dict]], warmup: int, runs: int,
                        desc: str) -> list[list[float]]:
    """ms per call for each predictor; repetition r uses inputs[p][r] and a rotated order."""
    timings: list[list[float]] = [[] for _ in predictors]
    order = list(range(len(predictors)))
    for rep in tqdm(range(warmup + runs), desc=desc, leave=False):
        shift = rep % len(order)
        for p in order[shift:] + order[:shift]:
            elapsed = time_call(predictors[p], inputs[p][rep % len(inputs[p])])
            if rep >= warmup:
                timings[p].append(elapsed)
    return timings


def text_batches(texts: list[str], size: int, count: int) -> list[list[str]]:
    """`count` batches of `size` real test sentences, cycling through the test set so every batch is full."""
    return [[texts[(start + offset) % len(texts)] for offset in range(size)]
            for start in range(0, size * count, size)]


def with_threads(predictors: list[Predictor], threads: int, main_threads: int) -> list[Predictor]:
    """The predictors for a thread count: an ORT session's thread pool is fixed when it is created,
    so ONNX Runtime rows get new sessions; PyTorch rows follow torch.set_num_threads."""
    if threads == main_threads:
        return predictors
    return [load_variant(p.folder, runtime="onnxruntime", threads=threads, ort_spinning=False)
            if p.runtime == "onnxruntime" else p for p in predictors]


def measure_speed(predictors: list[Predictor], texts: list[str], settings: BenchmarkSettings
                  ) -> tuple[list[list[float]], list[dict]]:
    """Batch-1 latencies (ms) at --threads for each predictor, and throughput rows for every cell."""
    latency: list[list[float]] = [[] for _ in predictors]
    cells: list[dict] = []
    singles = text_batches(texts, 1, settings.num_runs)
    batched = {size: text_batches(texts, size, settings.throughput_runs) for size in settings.batch_sizes}
    throughput_warmup = min(THROUGHPUT_WARMUP_MAX, settings.warmup)
    for threads in settings.measured_thread_counts():
        current = with_threads(predictors, threads, settings.threads)
        # One runtime after the other: PyTorch's OpenMP workers and ORT's thread pool never share the
        # cores while either is being timed.
        for runtime in dict.fromkeys(p.runtime for p in current):
            torch.set_num_threads(threads)
            group = [i for i, p in enumerate(current) if p.runtime == runtime]
            members = [current[i] for i in group]
            if threads == settings.threads:
                timings = interleaved_timings(members, [[p.encode(t) for t in singles] for p in members],
                                              settings.warmup, settings.num_runs, f"batch-1 latency ({runtime})")
                for i, timing in zip(group, timings):
                    latency[i] = timing
            for size in settings.batch_sizes:
                if size == 1 and threads == settings.threads:
                    timings, calls = [latency[i] for i in group], settings.num_runs
                else:
                    timings = interleaved_timings(members, [[p.encode(b) for b in batched[size]] for p in members],
                                                  throughput_warmup, settings.throughput_runs,
                                                  f"batch {size}, {threads} threads ({runtime})")
                    calls = settings.throughput_runs
                reference = next((t for p, t in zip(members, timings) if p.name == settings.teacher), None)
                for predictor, timing in zip(members, timings):
                    median = float(np.median(timing))
                    sps = size * 1000.0 / median
                    cells.append({"model_name": predictor.name, "runtime": predictor.runtime, "batch_size": size,
                                  "threads": threads, "throughput_sps": sps, "throughput_sps_per_thread": sps / threads,
                                  "latency_ms_median": median, "timed_calls": calls,
                                  **speedup_columns(reference, timing, settings)})
    return latency, cells


def speedup_columns(reference: list[float] | None, timing: list[float], settings: BenchmarkSettings) -> dict:
    """Speed-up over the reference timed in the same repetitions, with its paired interval (NaN without one)."""
    ratio = low = high = math.nan
    if reference is not None:
        ratio, low, high = paired_bootstrap_speedup(reference, timing, settings.bootstrap_resamples,
                                                    settings.bootstrap_seed)
    return {"speedup_vs_teacher_same_runtime": ratio, "speedup_ci_low": low, "speedup_ci_high": high}


def add_ratios(rows: list[dict], latency: list[list[float]], settings: BenchmarkSettings) -> None:
    """Speed and size ratios to the teacher; the same-runtime speed-up is paired (same repetitions)."""
    by_key = {(r["model_name"], r["runtime"]): i for i, r in enumerate(rows)}
    reference = by_key.get((settings.teacher, "torch"))
    for row, timing in zip(rows, latency):
        same = by_key.get((settings.teacher, row["runtime"]))
        row["speedup_vs_teacher"] = (rows[reference]["cpu_latency_ms_median"] / row["cpu_latency_ms_median"]
                                     if reference is not None else float("nan"))
        row.update(speedup_columns(latency[same] if same is not None else None, timing, settings))
        teacher_row = rows[reference] if reference is not None else rows[same] if same is not None else None
        row["size_ratio_vs_teacher"] = row["size_mb"] / teacher_row["size_mb"] if teacher_row else float("nan")



def add_speed_columns(rows: list[dict], predictors: list[Predictor], latency: list[list[float]],
                      throughput: list[dict], settings: BenchmarkSettings) -> None:
    """Latency median/p95, throughput at the largest batch, and the ratios to the teacher, into each row."""
    largest = max(settings.batch_sizes)
    for row, predictor, timing in zip(rows, predictors, latency):
        row["cpu_latency_ms_median"] = float(np.median(timing))
        row["cpu_latency_ms_p95"] = float(np.percentile(timing, 95))
        row["cpu_throughput_sps"] = next(
            cell["throughput_sps"] for cell in throughput
            if (cell["model_name"], cell["runtime"], cell["batch_size"], cell["threads"])
            == (predictor.name, predictor.runtime, largest, settings.threads))
    add_ratios(rows, latency, settings)


def add_size_ratio_only(rows: list[dict], teacher: str) -> None:
    """Without timing: speed columns empty, the size ratio still filled."""
    sizes = {r["runtime"]: r["size_mb"] for r in rows if r["model_name"] == teacher}
    reference = sizes.get("torch", sizes.get("onnxruntime"))
    for row in rows:
        row.update(dict.fromkeys(SPEED_COLUMNS, math.nan))
        row["size_ratio_vs_teacher"] = row["size_mb"] / reference if reference else math.nan
