"""CPU benchmark: every variant, every runtime it exists in, one process, identical inputs.

Reads  <root>/checkpoints/*/ (or `--variants a,b`) through the one loader, and the real test
       sentences <root>/data/test.csv.
Writes <root>/results/benchmark_results.csv: one row per variant and runtime (size, test macro F1
       with its 95% bootstrap interval, the paired interval of its difference from the teacher,
       batch-1 latency, throughput, ratios to the teacher);
       <root>/results/throughput.csv: samples/s (and per thread) for every variant x runtime x batch
       size x thread count;
       <root>/results/benchmark_results.json: both tables plus what can differ between machines
       (CPU model and ISA flags, thread counts, library versions), the data fingerprint, each
       variant's created_at, the bootstrap settings, and which variants were skipped and why.
       `--output NAME` writes NAME.csv / NAME.json / NAME_throughput.csv instead.

Accuracy: every row's test predictions give its macro F1 and a 95% percentile bootstrap interval
(sentences resampled `--bootstrap-resamples` times, `--bootstrap-seed`); each row's difference from
the FP32 teacher (PyTorch row, else its ONNX Runtime row) gets a paired interval: both models scored
on the same resampled sentences. An interval that crosses 0 means no measurable difference.

Speed (the model call alone on pre-tokenized real test sentences; tokenization is the same for every
variant): batch-1 latency from `--num-runs` calls after `--warmup`; throughput for every batch size
of `--batch-sizes` and thread count of `--thread-counts` (`--throughput-runs` calls each; batch 1 at
`--threads` reuses the latency calls). Within a runtime, variants are interleaved and their order
rotated every repetition so machine drift favours none; runtimes are timed one after the other, with
ONNX Runtime's idle-thread spinning off, so one runtime's threads never steal the cores from another's.
`speedup_vs_teacher` compares with the FP32 teacher in PyTorch eager (what a user starts from);
`speedup_vs_teacher_same_runtime` with the teacher in the row's runtime, with a 95% paired bootstrap
interval (`speedup_ci_low`/`_high`: the teacher and the row were timed in the same repetitions, which
are resampled together); every throughput cell has the same ratio and interval. `--teacher NAME` makes
any variant the reference, e.g. the dynamic INT8 model to compare INT8 recipes with each other.

bf16: on a CPU with avx512_bf16 or amx_bf16, `--bf16 auto` adds a `torch_bf16` row for the teacher
(weights cast to bf16, PyTorch eager; F1 measured in bf16 too); `--bf16 on` adds one for every FP32
variant, on any CPU; elsewhere the JSON metadata says why bf16 was skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, first_rows_of_every_class, read_split
from fincompress.common.hardware import BF16_ISA, cpu_metadata
from fincompress.common.io import atomic_write_text
from fincompress.common.loader import Predictor, TorchPredictor, load_variant, variant_runtimes
from fincompress.common.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    add_bootstrap_arguments,
    bootstrap_macro_f1,
    metrics_from_probabilities,
    paired_bootstrap_delta_f1,
    paired_bootstrap_speedup,
)
from fincompress.common.paths import FinCompressError, add_root_argument, checkpoints_dir, project_root, results_dir
from fincompress.common.variants import list_variants, read_info, select_variants, variant_problems

log = logging.getLogger("fincompress.benchmark")

BF16_RUNTIME = "torch_bf16"
CONFIG = {"threads": 2, "num_runs": 100, "warmup": 10, "batch_sizes": (1, 32), "throughput_runs": 10,
          "throughput_warmup_max": 2, "teacher": "teacher", "runtimes": ("torch", "onnxruntime"),
          "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "bf16": "auto",
          "output": "benchmark_results"}
COLUMNS = ["model_name", "technique", "runtime", "num_parameters", "size_mb", "macro_f1", "macro_f1_ci_low",
           "macro_f1_ci_high", "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high", "accuracy",
           "f1_negative", "f1_neutral", "f1_positive", "cpu_latency_ms_median", "cpu_latency_ms_p95",
           "cpu_throughput_sps", "speedup_vs_teacher", "speedup_vs_teacher_same_runtime", "speedup_ci_low",
           "speedup_ci_high", "size_ratio_vs_teacher", "source_checkpoint", "test_samples"]
THROUGHPUT_COLUMNS = ["model_name", "runtime", "batch_size", "threads", "throughput_sps", "throughput_sps_per_thread",
                      "latency_ms_median", "timed_calls", "speedup_vs_teacher_same_runtime", "speedup_ci_low",
                      "speedup_ci_high"]
REPRODUCIBILITY_NOTE = ("What can differ on another machine: the CPU model and ISA flags (which kernels run), the "
                        "library versions and the thread count. They change floating-point results slightly (and "
                        "through training, the trained variants) and latencies a lot: compare latencies only as "
                        "ratios within one results file.")

T = TypeVar("T")


@dataclass
class BenchmarkSettings:
    """Everything a benchmark run depends on besides the variants (the command line, parsed)."""

    runtimes: tuple[str, ...] = CONFIG["runtimes"]
    threads: int = CONFIG["threads"]
    thread_counts: tuple[int, ...] = ()  # extra thread counts for throughput; --threads is always measured
    batch_sizes: tuple[int, ...] = CONFIG["batch_sizes"]
    num_runs: int = CONFIG["num_runs"]
    warmup: int = CONFIG["warmup"]
    throughput_runs: int = CONFIG["throughput_runs"]
    teacher: str = CONFIG["teacher"]
    max_test_samples: int | None = None
    bootstrap_resamples: int = CONFIG["bootstrap_resamples"]
    bootstrap_seed: int = CONFIG["bootstrap_seed"]
    bf16: str = CONFIG["bf16"]
    skip_broken: bool = False

    def measured_thread_counts(self) -> list[int]:
        return list(dict.fromkeys([self.threads, *self.thread_counts]))


@dataclass
class BenchmarkResult:
    rows: list[dict]
    throughput: list[dict]
    skipped: list[dict] = field(default_factory=list)
    bf16: dict = field(default_factory=dict)
    delta_reference: str | None = None
    test_samples: int = 0


# ----------------------------------------------------------------------------- the machine

def library_versions() -> dict:
    import onnxruntime
    import scipy
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__}


def bf16_plan(mode: str, isa: list[str], fp32_variants: list[str], teacher: str) -> tuple[list[str], str]:
    """Which FP32 variants get a `torch_bf16` row, and a note saying why (or why not)."""
    native = [flag for flag in BF16_ISA if flag in isa]
    if mode == "off":
        return [], "bf16 skipped: --bf16 off"
    if mode == "on":
        note = (f"bf16 rows for every FP32 variant (--bf16 on); CPU has {', '.join(native)}" if native else
                "bf16 rows for every FP32 variant (--bf16 on), but the CPU has neither avx512_bf16 nor amx_bf16: "
                "bf16 is emulated there, its latencies say nothing about a bf16 CPU")
        return list(fp32_variants), note
    if not native:
        return [], ("bf16 skipped: the CPU has neither avx512_bf16 nor amx_bf16 "
                    "(bf16 would be emulated, slower than FP32)")
    if teacher not in fp32_variants:
        return [], f"bf16 skipped: the teacher {teacher!r} is not among the benchmarked FP32 variants"
    return [teacher], f"bf16 row for the teacher: the CPU has {', '.join(native)}"


# ----------------------------------------------------------------------------- loading, with --skip-broken

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


def to_bf16(predictor: TorchPredictor) -> TorchPredictor:
    """The same FP32 variant with its weights cast to bf16 (PyTorch eager).

    Weights are cast once rather than run under torch.autocast: CPU autocast re-casts every weight on
    every call, which makes BERT slower than FP32 (pytorch/pytorch#86270).
    """
    predictor.model.to(torch.bfloat16)
    predictor.runtime = BF16_RUNTIME
    return predictor


def load_runtime(folder: Path, runtime: str, threads: int) -> Predictor:
    if runtime == BF16_RUNTIME:
        return to_bf16(load_variant(folder, runtime="torch", threads=threads))
    return load_variant(folder, runtime=runtime, threads=threads, ort_spinning=False)


def available_runtimes(root: Path, names: list[str], settings: BenchmarkSettings,
                       skipped: list[dict]) -> dict[str, list[str]]:
    """{variant: runtimes it can run in}; unreadable variants are skipped (with --skip-broken)."""
    found = {}
    for name in names:
        runtimes = guarded(name, None, lambda n=name: variant_runtimes(checkpoints_dir(root) / n),
                           settings.skip_broken, skipped)
        if runtimes is not None:
            found[name] = runtimes
    return found


def load_predictors(root: Path, plan: dict[str, list[str]], settings: BenchmarkSettings,
                    skipped: list[dict]) -> list[Predictor]:
    predictors = []
    for name, runtimes in tqdm(plan.items(), desc="loading variants", leave=False):
        for runtime in runtimes:
            predictor = guarded(name, runtime,
                                lambda n=name, r=runtime: load_runtime(checkpoints_dir(root) / n, r, settings.threads),
                                settings.skip_broken, skipped)
            if predictor is not None:
                predictors.append(predictor)
    return predictors


# ----------------------------------------------------------------------------- accuracy and intervals

def accuracy_rows(predictors: list[Predictor], texts: list[str], labels: np.ndarray, settings: BenchmarkSettings,
                  skipped: list[dict]) -> tuple[list[Predictor], list[dict], list[np.ndarray]]:
    """Test metrics of every predictor that runs; returns the predictors kept, their rows and predictions."""
    kept, rows, predictions = [], [], []
    for predictor in tqdm(predictors, desc="accuracy", leave=False):
        probabilities = guarded(predictor.name, predictor.runtime, lambda p=predictor: p.predict_proba(texts),
                                settings.skip_broken, skipped)
        if probabilities is None:
            continue
        info = predictor.info
        metrics = metrics_from_probabilities(labels, probabilities)
        kept.append(predictor)
        predictions.append(np.asarray(probabilities).argmax(axis=-1))
        rows.append({"model_name": predictor.name, "technique": info.get("technique", ""),
                     "runtime": predictor.runtime, "num_parameters": info.get("num_parameters"),
                     "size_mb": info.get("size_mb"), "source_checkpoint": info.get("source_checkpoint"),
                     "test_samples": len(texts), **{k: v for k, v in metrics.items() if k != "confusion_matrix"}})
    return kept, rows, predictions


def reference_index(rows: list[dict], teacher: str) -> int | None:
    """The row every delta is measured against: the FP32 teacher in PyTorch, else in ONNX Runtime."""
    for runtime in ("torch", "onnxruntime"):
        for index, row in enumerate(rows):
            if row["model_name"] == teacher and row["runtime"] == runtime:
                return index
    return None


def add_intervals(rows: list[dict], predictions: list[np.ndarray], labels: np.ndarray, teacher: str,
                  resamples: int, seed: int) -> str | None:
    """Bootstrap interval of every row's macro F1, paired interval of its difference from the teacher.

    Returns the reference row's "<name> (<runtime>)", or None (no teacher row: deltas are NaN).
    """
    reference = reference_index(rows, teacher)
    for row, predicted in zip(rows, predictions):
        row["macro_f1_ci_low"], row["macro_f1_ci_high"] = bootstrap_macro_f1(labels, predicted, resamples, seed)
        if reference is None:
            row["delta_f1_vs_teacher"] = row["delta_f1_ci_low"] = row["delta_f1_ci_high"] = math.nan
            continue
        row["delta_f1_vs_teacher"], row["delta_f1_ci_low"], row["delta_f1_ci_high"] = paired_bootstrap_delta_f1(
            labels, predicted, predictions[reference], resamples, seed)
    return None if reference is None else f"{rows[reference]['model_name']} ({rows[reference]['runtime']})"


# ----------------------------------------------------------------------------- timing

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
    throughput_warmup = min(CONFIG["throughput_warmup_max"], settings.warmup)
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


# ----------------------------------------------------------------------------- the run

def benchmark(root: Path, names: list[str], settings: BenchmarkSettings, isa: list[str] | None = None
              ) -> BenchmarkResult:
    """Accuracy with intervals, latency and throughput of every variant x runtime (see the module doc)."""
    test = read_split(root, "test")
    test = first_rows_of_every_class(test, settings.max_test_samples)
    texts, labels = test["text"].tolist(), test["label"].to_numpy()
    skipped: list[dict] = []
    available = available_runtimes(root, names, settings, skipped)
    fp32 = [name for name, runtimes in available.items() if "torch" in runtimes]
    bf16_names, bf16_note = bf16_plan(settings.bf16, cpu_metadata()["isa"] if isa is None else isa, fp32,
                                      settings.teacher)
    plan = {name: [r for r in runtimes if r in settings.runtimes] + ([BF16_RUNTIME] if name in bf16_names else [])
            for name, runtimes in available.items()}
    for name in [n for n, runtimes in plan.items() if not runtimes]:
        reason = f"runs in {', '.join(available[name])} only, not in --runtimes {','.join(settings.runtimes)}"
        log.warning("skipping variant %r: %s", name, reason)
        skipped.append({"variant": name, "runtime": "all", "reason": reason})
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(settings.threads)
        predictors = load_predictors(root, plan, settings, skipped)
        predictors, rows, predictions = accuracy_rows(predictors, texts, labels, settings, skipped)
        if not rows:
            raise FinCompressError("no variant could be measured, every one was skipped: " + "; ".join(
                f"{s['variant']} ({s['runtime']}): {s['reason']}" for s in skipped))
        reference = add_intervals(rows, predictions, labels, settings.teacher, settings.bootstrap_resamples,
                                  settings.bootstrap_seed)
        latency, throughput = measure_speed(predictors, texts, settings)
    finally:
        torch.set_num_threads(previous_threads)  # the benchmark is also called in-process (notebooks, tests)
    largest = max(settings.batch_sizes)
    for row, predictor, timing in zip(rows, predictors, latency):
        row["cpu_latency_ms_median"] = float(np.median(timing))
        row["cpu_latency_ms_p95"] = float(np.percentile(timing, 95))
        row["cpu_throughput_sps"] = next(
            cell["throughput_sps"] for cell in throughput
            if (cell["model_name"], cell["runtime"], cell["batch_size"], cell["threads"])
            == (predictor.name, predictor.runtime, largest, settings.threads))
    add_ratios(rows, latency, settings)
    return BenchmarkResult(rows=rows, throughput=throughput, skipped=skipped,
                           bf16={"variants": bf16_names, "note": bf16_note}, delta_reference=reference,
                           test_samples=len(texts))


def variant_provenance(root: Path, names: list[str], fingerprint: str) -> dict:
    """Each variant's data fingerprint and creation date (what a row was made from, and when)."""
    provenance = {}
    for name in names:
        try:
            info = read_info(checkpoints_dir(root) / name)
        except FinCompressError as exc:
            provenance[name] = {"error": failure_reason(exc)}
            continue
        made_from = info.get("data_fingerprint")
        provenance[name] = {"data_fingerprint": made_from, "created_at": info.get("created_at"),
                            "matches_data": made_from == fingerprint}
        if made_from != fingerprint:
            log.warning("variant %s was made from data %s, but data/ is now %s: its test F1 may be measured on "
                        "sentences it was trained on; re-create it", name, made_from, fingerprint)
    return provenance


def output_paths(root: Path, stem: str) -> tuple[Path, Path, Path]:
    """results/<stem>.csv, .json and the throughput table (throughput.csv for the default stem)."""
    out = results_dir(root)
    throughput = "throughput" if stem == CONFIG["output"] else f"{stem}_throughput"
    return out / f"{stem}.csv", out / f"{stem}.json", out / f"{throughput}.csv"


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")  # NaN -> null: valid JSON


def write_results(root: Path, result: BenchmarkResult, metadata: dict, stem: str) -> Path:
    """The three results files, each written whole or not at all."""
    frame = pd.DataFrame(result.rows)[COLUMNS]
    throughput = pd.DataFrame(result.throughput, columns=THROUGHPUT_COLUMNS)
    csv_path, json_path, throughput_path = output_paths(root, stem)
    atomic_write_text(csv_path, frame.to_csv(index=False))
    atomic_write_text(throughput_path, throughput.to_csv(index=False))
    report = {"metadata": metadata, "rows": _records(frame), "throughput": _records(throughput)}
    atomic_write_text(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return csv_path


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--variants", help="comma-separated variant names (default: every folder in checkpoints/)")
    parser.add_argument("--runtimes", default=",".join(CONFIG["runtimes"]),
                        help="comma-separated runtimes among torch,onnxruntime (default: both)")
    parser.add_argument("--threads", type=cli.positive_int, default=CONFIG["threads"],
                        help=f"CPU threads for accuracy and batch-1 latency (default {CONFIG['threads']})")
    parser.add_argument("--thread-counts", type=cli.positive_int_list, default=[],
                        help="comma-separated thread counts for throughput (default: just --threads, always measured)")
    parser.add_argument("--batch-sizes", type=cli.positive_int_list, default=list(CONFIG["batch_sizes"]),
                        help="comma-separated batch sizes for throughput "
                        f"(default {','.join(map(str, CONFIG['batch_sizes']))})")
    parser.add_argument("--num-runs", type=cli.positive_int, default=CONFIG["num_runs"],
                        help=f"timed batch-1 calls per row (default {CONFIG['num_runs']})")
    parser.add_argument("--warmup", type=cli.non_negative_int, default=CONFIG["warmup"],
                        help=f"untimed calls before timing (default {CONFIG['warmup']}; throughput cells use at most "
                        f"{CONFIG['throughput_warmup_max']})")
    parser.add_argument("--throughput-runs", type=cli.positive_int, default=CONFIG["throughput_runs"],
                        help=f"timed calls per row, batch size and thread count (default {CONFIG['throughput_runs']})")
    parser.add_argument("--teacher", default=CONFIG["teacher"],
                        help="variant the ratio and delta columns compare with (default teacher); any variant "
                             "works, e.g. teacher_dynamic_int8 to rank INT8 recipes by paired speed-up")
    parser.add_argument("--max-test-samples", type=cli.positive_int,
                        help="evaluate on the first N test sentences only, with at least one of every class "
                        "(intervals widen accordingly)")
    add_bootstrap_arguments(parser)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default=CONFIG["bf16"],
                        help="torch_bf16 rows: auto = the teacher, on CPUs with avx512_bf16 or amx_bf16 (default); "
                        "on = every FP32 variant, any CPU; off = none")
    parser.add_argument("--skip-broken", action="store_true",
                        help="skip (with a warning, listed in the JSON) a variant that fails to load or run, "
                        "instead of stopping")
    parser.add_argument("--output", type=cli.file_stem, default=CONFIG["output"],
                        help=f"file stem under results/ (default {CONFIG['output']}; the throughput table is "
                        "throughput.csv, or <stem>_throughput.csv for another stem)")
    return parser


def check_teacher(root: Path, names: list[str], teacher: str) -> None:
    """--teacher must name a variant; one left out of --variants leaves the ratio and delta columns empty."""
    available = list_variants(checkpoints_dir(root))
    if teacher not in available:
        raise FinCompressError(f"--teacher {teacher!r} is not a variant under {checkpoints_dir(root)}; "
                               f"available: {available}")
    if teacher not in names:
        log.warning("--teacher %r is not among the variants measured: the speed-up, size-ratio and delta columns "
                    "stay empty (add it to --variants to fill them)", teacher)


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    unknown = set(runtimes) - set(CONFIG["runtimes"])
    if unknown or not runtimes:
        raise FinCompressError(f"--runtimes: unknown runtime(s) {sorted(unknown)}; choose from "
                               f"{list(CONFIG['runtimes'])} (bf16 rows come from --bf16)")
    return BenchmarkSettings(runtimes=runtimes, threads=args.threads, thread_counts=tuple(args.thread_counts),
                             batch_sizes=tuple(args.batch_sizes), num_runs=args.num_runs, warmup=args.warmup,
                             throughput_runs=args.throughput_runs, teacher=args.teacher,
                             max_test_samples=args.max_test_samples, bootstrap_resamples=args.bootstrap_resamples,
                             bootstrap_seed=args.bootstrap_seed, bf16=args.bf16, skip_broken=args.skip_broken)


def print_summary(frame: pd.DataFrame, result: BenchmarkResult, paths: tuple[Path, Path, Path]) -> None:
    shown = ["model_name", "runtime", "size_mb", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high",
             "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high", "cpu_latency_ms_median",
             "cpu_throughput_sps", "speedup_vs_teacher", "speedup_vs_teacher_same_runtime", "speedup_ci_low",
             "speedup_ci_high"]
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{result.bf16['note']}")
    for entry in result.skipped:
        print(f"skipped {entry['variant']} ({entry['runtime']}): {entry['reason']}")
    print(f"wrote {paths[0]}, {paths[1]} and {paths[2]}")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    settings = settings_from_args(args)
    names = select_variants(root, args.variants)
    check_teacher(root, names, settings.teacher)
    if not args.variants:  # folders that are no variant are left out: say so before the long run
        for folder, problem in variant_problems(root).items():
            if folder not in names:
                log.warning("leaving out checkpoints/%s: %s", folder, problem)
    read_split(root, "test")  # a clear error before any model is loaded
    fingerprint = data_fingerprint(root)
    provenance = variant_provenance(root, names, fingerprint)  # warns of stale variants before the long run
    machine = cpu_metadata()
    result = benchmark(root, names, settings, isa=machine["isa"])
    metadata = {**machine, "threads": settings.threads, "thread_counts": settings.measured_thread_counts(),
                "batch_sizes": list(settings.batch_sizes), "throughput_batch": max(settings.batch_sizes),
                "num_runs": settings.num_runs, "warmup": settings.warmup, "throughput_runs": settings.throughput_runs,
                "test_samples": result.test_samples, "libraries": library_versions(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "bootstrap": {"resamples": settings.bootstrap_resamples, "seed": settings.bootstrap_seed,
                              "confidence": CONFIDENCE, "method": "percentile, test sentences resampled; deltas "
                              "paired (same resampled sentences for the row and the teacher)",
                              "delta_reference": result.delta_reference},
                "bf16": result.bf16, "skipped": result.skipped, "data_fingerprint": fingerprint,
                "variants": provenance, "reproducibility": REPRODUCIBILITY_NOTE,
                "config": args.config_values}
    write_results(root, result, metadata, args.output)
    paths = output_paths(root, args.output)
    frame = pd.read_csv(paths[0])
    print_summary(frame, result, paths)
    return frame


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
