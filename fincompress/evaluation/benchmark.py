"""CPU benchmark: every variant, every runtime it exists in, one process, identical inputs.

Reads  <root>/checkpoints/*/ (or `--variants a,b`) through the one loader, and the real test
       sentences <root>/data/test.csv.
Writes <root>/results/benchmark_results.csv (one row per variant and runtime) and
       <root>/results/benchmark_results.json (the same rows plus run metadata: CPU, threads,
       library versions, date).

Latency is the model call alone on pre-tokenized inputs (tokenization is the same for every
variant). Batch-1 latency: `--num-runs` timed calls after `--warmup`, each on a real test
sentence; within a runtime, variants are interleaved and their order rotated every repetition so
machine drift does not favour one; runtimes are timed one after the other, with ONNX Runtime's
idle-thread spinning off, so one runtime's thread pool never steals the cores from another's.
Throughput: batch-32 calls, interleaved the same way.
`speedup_vs_teacher` compares with the FP32 teacher in PyTorch eager (what a user starts from);
`speedup_vs_teacher_same_runtime` with the teacher in the row's runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.loader import Predictor, load_variant, variant_runtimes
from fincompress.common.metrics import metrics_from_probabilities
from fincompress.common.paths import FinCompressError, add_root_argument, checkpoints_dir, project_root, results_dir
from fincompress.common.variants import read_info, select_variants

log = logging.getLogger("fincompress.benchmark")

CONFIG = {"threads": 2, "num_runs": 100, "warmup": 10, "throughput_batch": 32, "throughput_runs": 10,
          "teacher": "teacher", "runtimes": ("torch", "onnxruntime")}
COLUMNS = ["model_name", "technique", "runtime", "num_parameters", "size_mb", "macro_f1", "accuracy",
           "f1_negative", "f1_neutral", "f1_positive", "cpu_latency_ms_median", "cpu_latency_ms_p95",
           "cpu_throughput_sps", "speedup_vs_teacher", "speedup_vs_teacher_same_runtime",
           "size_ratio_vs_teacher", "source_checkpoint", "test_samples"]


def cpu_metadata() -> dict:
    model, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"cpu": model, "machine": platform.machine(), "isa": [f for f in wanted if f in flags]}


def library_versions() -> dict:
    import onnxruntime
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__}


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


def load_predictors(root: Path, names: list[str], runtimes: list[str], threads: int) -> list[Predictor]:
    predictors = []
    for name in tqdm(names, desc="loading variants", leave=False):
        folder = checkpoints_dir(root) / name
        for runtime in variant_runtimes(folder):
            if runtime in runtimes:
                predictors.append(load_variant(folder, runtime=runtime, threads=threads, ort_spinning=False))
    return predictors


def add_ratios(rows: list[dict], teacher: str) -> None:
    by_key = {(r["model_name"], r["runtime"]): r for r in rows}
    reference = by_key.get((teacher, "torch"))
    for row in rows:
        same = by_key.get((teacher, row["runtime"]))
        row["speedup_vs_teacher"] = (reference["cpu_latency_ms_median"] / row["cpu_latency_ms_median"]
                                     if reference else float("nan"))
        row["speedup_vs_teacher_same_runtime"] = (same["cpu_latency_ms_median"] / row["cpu_latency_ms_median"]
                                                  if same else float("nan"))
        teacher_row = reference or same
        row["size_ratio_vs_teacher"] = row["size_mb"] / teacher_row["size_mb"] if teacher_row else float("nan")


def benchmark(root: Path, names: list[str], runtimes: list[str], threads: int, num_runs: int, warmup: int,
              throughput_runs: int, teacher: str, max_test_samples: int | None = None) -> list[dict]:
    torch.set_num_threads(threads)
    test = read_split(root, "test")
    if max_test_samples:
        test = test.iloc[:max_test_samples]
    texts, labels = test["text"].tolist(), test["label"].to_numpy()
    predictors = load_predictors(root, names, runtimes, threads)
    rows = []
    for predictor in tqdm(predictors, desc="accuracy", leave=False):
        info = predictor.info
        metrics = metrics_from_probabilities(labels, predictor.predict_proba(texts))
        rows.append({"model_name": predictor.name, "technique": info.get("technique", ""),
                     "runtime": predictor.runtime, "num_parameters": info.get("num_parameters"),
                     "size_mb": info.get("size_mb"), "source_checkpoint": info.get("source_checkpoint"),
                     "test_samples": len(texts), **{k: v for k, v in metrics.items() if k != "confusion_matrix"}})
    singles = [[p.encode([t]) for t in texts[:num_runs]] for p in predictors]
    batch = CONFIG["throughput_batch"]
    batches = [[p.encode(texts[i:i + batch]) for i in range(0, max(1, len(texts) - batch + 1), batch)][:throughput_runs]
               for p in predictors]
    # Interleave within a runtime, one runtime after the other: PyTorch's OpenMP workers and ORT's
    # thread pool never share the cores while either is being timed.
    latency: list[list[float]] = [[] for _ in predictors]
    throughput: list[list[float]] = [[] for _ in predictors]
    for runtime in dict.fromkeys(p.runtime for p in predictors):
        group = [i for i, p in enumerate(predictors) if p.runtime == runtime]
        members = [predictors[i] for i in group]
        for i, lat in zip(group, interleaved_timings(members, [singles[i] for i in group], warmup, num_runs,
                                                     f"batch-1 latency ({runtime})")):
            latency[i] = lat
        for i, thr in zip(group, interleaved_timings(members, [batches[i] for i in group], min(2, warmup),
                                                     throughput_runs, f"batch-32 throughput ({runtime})")):
            throughput[i] = thr
    for row, lat, thr, enc in zip(rows, latency, throughput, batches):
        row["cpu_latency_ms_median"] = float(np.median(lat))
        row["cpu_latency_ms_p95"] = float(np.percentile(lat, 95))
        row["cpu_throughput_sps"] = float(enc[0]["input_ids"].shape[0] * 1000.0 / np.median(thr))
    add_ratios(rows, teacher)
    return rows


def write_results(root: Path, rows: list[dict], metadata: dict, stem: str) -> Path:
    out = results_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)[COLUMNS]
    csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
    for path, text in ((csv_path, frame.to_csv(index=False)),
                       (json_path, json.dumps({"metadata": metadata, "rows": frame.to_dict("records")}, indent=2))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return csv_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--variants", help="comma-separated variant names (default: every folder in checkpoints/)")
    parser.add_argument("--runtimes", default=",".join(CONFIG["runtimes"]),
                        help="comma-separated runtimes among torch,onnxruntime (default: both)")
    parser.add_argument("--threads", type=int, default=CONFIG["threads"], help="CPU threads for every runtime")
    parser.add_argument("--num-runs", type=int, default=CONFIG["num_runs"], help="timed batch-1 calls per row")
    parser.add_argument("--warmup", type=int, default=CONFIG["warmup"], help="untimed calls before timing")
    parser.add_argument("--throughput-runs", type=int, default=CONFIG["throughput_runs"],
                        help="timed batch-32 calls per row")
    parser.add_argument("--teacher", default=CONFIG["teacher"], help="variant the ratio columns compare with")
    parser.add_argument("--max-test-samples", type=int, help="evaluate accuracy on the first N test sentences only")
    parser.add_argument("--output", default="benchmark_results",
                        help="file stem under results/ (default benchmark_results)")
    return parser


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = set(runtimes) - set(CONFIG["runtimes"])
    if unknown:
        raise FinCompressError(f"unknown runtime(s) {sorted(unknown)}; choose from {list(CONFIG['runtimes'])}")
    names = select_variants(root, args.variants)
    rows = benchmark(root, names, runtimes, args.threads, args.num_runs, args.warmup, args.throughput_runs,
                     args.teacher, args.max_test_samples)
    metadata = {**cpu_metadata(), "threads": args.threads, "num_runs": args.num_runs, "warmup": args.warmup,
                "throughput_batch": CONFIG["throughput_batch"], "libraries": library_versions(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "data_fingerprints": {n: read_info(checkpoints_dir(root) / n).get("data_fingerprint") for n in names}}
    path = write_results(root, rows, metadata, args.output)
    shown = ["model_name", "runtime", "size_mb", "macro_f1", "cpu_latency_ms_median", "cpu_throughput_sps",
             "speedup_vs_teacher", "speedup_vs_teacher_same_runtime"]
    frame = pd.read_csv(path)
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return frame


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
