"""Reporting: what the benchmark writes, and what a results file says about where it came from.

Writes <root>/results/<stem>.csv, <stem>.json and the throughput table (throughput.csv for the default
stem, else <stem>_throughput.csv), and the run's reliability diagrams (results/plots/reliability_*.png),
as one set: each file is written into a private staging folder (`ResultsSet`); only when all are
complete are they renamed into place, then <root>/results/<stem>.generation.json is written last,
naming the sha256 of every file of the set. A failure before that leaves the previous set as it was;
readers (`check_results_set`: the plots, the server's /info) compare the files with the record and
warn of, or refuse, a set whose files disagree. While the run goes on, every finished accuracy row is
kept in <root>/results/<stem>.partial.csv, removed once the set is published, so a late failure keeps
what was measured.
"""

from __future__ import annotations

import json
import logging
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fincompress.common import io
from fincompress.common.io import append_csv_rows, atomic_write_text
from fincompress.common.metrics import CONFIDENCE
from fincompress.common.paths import FinCompressError, checkpoints_dir, results_dir
from fincompress.common.variants import read_info
from fincompress.evaluation.guard import failure_reason
from fincompress.evaluation.scoring import CALIBRATION_COLUMNS, set_columns
from fincompress.evaluation.settings import DEFAULT_OUTPUT, BenchmarkSettings

log = logging.getLogger("fincompress.benchmark")

COLUMNS = ["model_name", "technique", "runtime", "num_parameters", "size_mb", "macro_f1", "macro_f1_ci_low",
           "macro_f1_ci_high", "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high", "accuracy",
           "f1_negative", "f1_neutral", "f1_positive", "cpu_latency_ms_median", "cpu_latency_ms_p95",
           "cpu_throughput_sps", "speedup_vs_teacher", "speedup_vs_teacher_same_runtime", "speedup_ci_low",
           "speedup_ci_high", "size_ratio_vs_teacher", "source_checkpoint", "test_samples",
           *CALIBRATION_COLUMNS, "calibration_temperature"]
THROUGHPUT_COLUMNS = ["model_name", "runtime", "batch_size", "threads", "throughput_sps", "throughput_sps_per_thread",
                      "latency_ms_median", "timed_calls", "speedup_vs_teacher_same_runtime", "speedup_ci_low",
                      "speedup_ci_high"]
REPRODUCIBILITY_NOTE = ("What can differ on another machine: the CPU model and ISA flags (which kernels run), the "
                        "library versions and the thread count. They change floating-point results slightly (and "
                        "through training, the trained variants) and latencies a lot: compare latencies only as "
                        "ratios within one results file.")


def library_versions() -> dict:
    import onnxruntime
    import scipy
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__}


def check_writable(folder: Path) -> None:
    """Refuse, before any measuring, a results folder that cannot be created or written (one line)."""
    io.check_writable(folder)


def variant_provenance(root: Path, names: list[str], fingerprint: str) -> dict:
    """Each variant's data fingerprint and creation date (what a row was made from, and when), as its
    folder holds it now; warns of a variant made from other data."""
    provenance = {}
    for name in names:
        try:
            info = read_info(checkpoints_dir(root) / name)
        except FinCompressError as exc:
            provenance[name] = {"error": failure_reason(exc)}
            continue
        provenance[name] = info_provenance(info, fingerprint)
        if not provenance[name]["matches_data"]:
            log.warning("variant %s was made from data %s, but data/ is now %s: its test F1 may be measured on "
                        "sentences it was trained on; re-create it", name, info.get("data_fingerprint"), fingerprint)
    return provenance


def info_provenance(info: dict, fingerprint: str) -> dict:
    made_from = info.get("data_fingerprint")
    return {"data_fingerprint": made_from, "created_at": info.get("created_at"),
            "matches_data": made_from == fingerprint, "calibration": info.get("calibration")}


def loaded_provenance(loaded: list[tuple[str, dict]], fingerprint: str) -> dict:
    """The provenance of the versions the rows were scored with: (variant, checkpoint_info it was loaded
    with) per loaded runtime. A variant re-saved between two of its runtimes' loads is recorded with
    every version it was scored in, so the results say their rows do not share one version."""
    versions: dict[str, list[dict]] = {}
    for name, info in loaded:
        record = info_provenance(info, fingerprint)
        if record not in versions.setdefault(name, []):
            versions[name].append(record)
    provenance = {}
    for name, records in versions.items():
        if len(records) > 1:
            log.warning("variant %s was re-saved during the run: its rows come from %d versions", name, len(records))
            provenance[name] = {**records[-1], "versions": records}
        else:
            provenance[name] = records[0]
    return provenance


def output_paths(root: Path, stem: str) -> tuple[Path, Path, Path]:
    """results/<stem>.csv, .json and the throughput table (throughput.csv for the default stem)."""
    out = results_dir(root)
    throughput = "throughput" if stem == DEFAULT_OUTPUT else f"{stem}_throughput"
    return out / f"{stem}.csv", out / f"{stem}.json", out / f"{throughput}.csv"


def partial_path(root: Path, stem: str) -> Path:
    return results_dir(root) / f"{stem}.partial.csv"


class PartialRows:
    """Finished accuracy rows appended to <stem>.partial.csv as they come (each append atomic)."""

    def __init__(self, root: Path, stem: str):
        self.path = partial_path(root, stem)
        self.path.unlink(missing_ok=True)  # a previous run's leftovers are not this run's rows

    def add(self, row: dict) -> None:
        append_csv_rows(self.path, [row], columns=[c for c in COLUMNS if c in row])

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")  # NaN -> null: valid JSON


def result_columns(set_names: list[str]) -> list[str]:
    return COLUMNS + [column for name in set_names for column in set_columns(name)]


GENERATION_SUFFIX = ".generation.json"
PUBLISH_WAIT_SECONDS = 120  # another run publishing the same set holds its lock for a few renames only


def generation_path(root: Path, stem: str = DEFAULT_OUTPUT) -> Path:
    return results_dir(root) / f"{stem}{GENERATION_SUFFIX}"


class ResultsSet:
    """The files of one run of one --output name, staged in a private folder and published together."""

    def __init__(self, root: Path, stem: str):
        self.root, self.stem = Path(root), stem
        anchor = results_dir(root) / stem  # staging folders are `.STEM.tmp-HOST-PID-RANDOM` beside it
        io.recover(anchor)  # what killed runs left staged
        self.staging = io.private_temporary(anchor)
        self.plots = self.staging / "plots"  # the run's plots go here, then to results/plots/

    def publish(self, files: list[Path]) -> dict:
        """Rename the staged `files` and the staged plots into results/, then write the generation record."""
        out = results_dir(self.root)
        staged = {self.staging / path.name: path for path in files}
        if self.plots.is_dir():
            staged.update({plot: out / "plots" / plot.name for plot in sorted(self.plots.iterdir())})
        lock = self.root / ".cache" / "locks" / f"results-{self.stem}.lock"
        with io.locked(lock, f"results/{self.stem}", wait=PUBLISH_WAIT_SECONDS):
            return io.publish_file_set(staged, generation_path(self.root, self.stem), {"output": self.stem})

    def discard(self) -> None:
        io.remove_path(self.staging)


def write_results(root: Path, rows: list[dict], throughput: list[dict], metadata: dict, stem: str,
                  set_names: list[str], results: ResultsSet | None = None) -> tuple[Path, Path, Path]:
    """The three results files (and the run's staged plots) published as one set (module docstring)."""
    frame = pd.DataFrame(rows).reindex(columns=result_columns(set_names))
    table = pd.DataFrame(throughput, columns=THROUGHPUT_COLUMNS)
    paths = output_paths(root, stem)
    results = results or ResultsSet(root, stem)
    kept = (f"the previous results set is as it was, and the rows measured are kept in "
            f"{partial_path(root, stem)}")
    try:
        with io.file_system_errors(f"cannot write the results to {paths[0].parent}", unchanged=kept):
            results.staging.mkdir(parents=True, exist_ok=True)
            atomic_write_text(results.staging / paths[0].name, frame.to_csv(index=False))
            atomic_write_text(results.staging / paths[2].name, table.to_csv(index=False))
            report = {"metadata": metadata, "rows": _records(frame), "throughput": _records(table)}
            atomic_write_text(results.staging / paths[1].name, json.dumps(report, indent=2, allow_nan=False) + "\n")
            results.publish(list(paths))
    finally:
        results.discard()
    return paths


# ----------------------------------------------------------------------------- readers of a results set

def check_results_set(root: Path, stem: str = DEFAULT_OUTPUT) -> io.SetCheck:
    """Whether results/<stem>.* on disk are the files of one run (call before reading any of them).

    `.ok` is True only for "consistent"; `.message` is one line saying what is wrong and what to do.
    """
    return io.check_file_set(generation_path(root, stem), output_paths(root, stem)[0],
                             "python -m fincompress.evaluation.benchmark")


def require_results_set(root: Path, stem: str = DEFAULT_OUTPUT) -> io.SetCheck:
    """`check_results_set`, refusing a mixed set in one line and warning of an unrecorded one."""
    return io.require_file_set(check_results_set(root, stem))


def run_metadata(machine: dict, settings: BenchmarkSettings, result, fingerprint: str, provenance: dict,
                 config_values: dict) -> dict:
    """What a results file depends on: machine, libraries, settings, data and variants, intervals."""
    return {**machine, "threads": settings.threads, "thread_counts": settings.measured_thread_counts(),
            "batch_sizes": list(settings.batch_sizes), "throughput_batch": max(settings.batch_sizes),
            "num_runs": settings.num_runs, "warmup": settings.warmup, "throughput_runs": settings.throughput_runs,
            "timing": not settings.no_timing, "test_samples": result.test_samples, "libraries": library_versions(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bootstrap": {"resamples": settings.bootstrap_resamples, "seed": settings.bootstrap_seed,
                          "confidence": CONFIDENCE, "method": "percentile, test sentences resampled; deltas "
                          "paired (same resampled sentences for the row and the teacher)",
                          "delta_reference": result.delta_reference},
            "calibration": {"ece_bins": 15, "binning": "equal mass, top-class confidence",
                            "probabilities": "each variant's own calibration temperature applied (1 if none)"},
            "eval_sets": result.eval_sets, "bf16": result.bf16, "skipped": result.skipped,
            "data_fingerprint": fingerprint, "variants": provenance, "reproducibility": REPRODUCIBILITY_NOTE,
            "config": config_values}


def print_summary(frame: pd.DataFrame, result, paths: tuple[Path, Path, Path]) -> None:
    shown = ["model_name", "runtime", "size_mb", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high",
             "delta_f1_vs_teacher", "delta_f1_ci_low", "delta_f1_ci_high", "ece", "cpu_latency_ms_median",
             "cpu_throughput_sps", "speedup_vs_teacher", "speedup_vs_teacher_same_runtime", "speedup_ci_low",
             "speedup_ci_high"]
    shown += [c for name in result.eval_sets for c in (f"{name}_macro_f1", f"{name}_delta_f1_vs_teacher",
                                                       f"{name}_delta_gap", f"{name}_ece")]
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{result.bf16['note']}")
    for entry in result.skipped:
        print(f"skipped {entry['variant']} ({entry['runtime']}): {entry['reason']}")
    print(f"wrote {paths[0]}, {paths[1]} and {paths[2]}")
