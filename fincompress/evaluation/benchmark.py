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

Extra sets (`--eval-set NAME=FILE`, repeatable, or `--eval-set tweets`; presets list them as
`eval_sets`): every row gains `<set>_macro_f1` with its interval, `<set>_delta_f1_vs_teacher` with its
paired interval, `<set>_delta_gap` (the set's delta minus the test split's, paired interval),
`<set>_ece` with its interval, `<set>_nll`, `<set>_brier`. Calibration of the test split is in `ece`,
`nll`, `brier`; probabilities include a variant's calibration temperature (`calibration_temperature`;
fit one with `python -m fincompress.evaluation.calibration`). Reliability diagrams go to
results/plots/ (`--no-reliability-plots` to skip). `--no-timing` measures accuracy only. A variant whose
outputs are not the project's 3 classes is refused (or skipped with `--skip-broken`). The results folder
is checked writable before anything is measured; finished accuracy rows are kept in
results/<stem>.partial.csv until the run completes. The CSV, the JSON, the throughput table and the
reliability diagrams are published as one set with a generation record (evaluation/reporting.py): a
failed run leaves the previous set as it was. A variant re-saved by another stage while it is being
loaded is loaded again, so every row scores one complete version of it. Settings and their flags:
evaluation/settings.py.

bf16: on a CPU with avx512_bf16 or amx_bf16, `--bf16 auto` adds a `torch_bf16` row for the teacher
(weights cast to bf16, PyTorch eager; F1 measured in bf16 too); `--bf16 on` adds one for every FP32
variant, on any CPU; elsewhere the JSON metadata says why bf16 was skipped.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, first_rows_of_every_class, read_split
from fincompress.common.eval_sets import EvalSet, read_eval_sets
from fincompress.common.hardware import BF16_ISA, cpu_metadata
from fincompress.common.loader import Predictor, TorchPredictor, load_variant, variant_runtimes
from fincompress.common.paths import FinCompressError, add_root_argument, checkpoints_dir, project_root, results_dir
from fincompress.common.variants import list_variants, select_variants, variant_problems
from fincompress.evaluation import reporting, scoring, timing
from fincompress.evaluation.guard import guarded
from fincompress.evaluation.settings import BenchmarkSettings, add_settings_arguments, settings_from_args

log = logging.getLogger("fincompress.benchmark")

BF16_RUNTIME = "torch_bf16"
RELOAD_WINDOW_SECONDS = 60  # how long a variant another stage keeps re-saving is loaded again, before giving up
RELOAD_PAUSE_SECONDS = 0.2


@dataclass
class BenchmarkResult:
    rows: list[dict]
    throughput: list[dict]
    skipped: list[dict] = field(default_factory=list)
    bf16: dict = field(default_factory=dict)
    delta_reference: str | None = None
    test_samples: int = 0
    eval_sets: dict = field(default_factory=dict)
    loaded: list[tuple[str, dict]] = field(default_factory=list)  # (variant, checkpoint_info) per scored predictor


# ----------------------------------------------------------------------------- bf16 and loading

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


def to_bf16(predictor: TorchPredictor) -> TorchPredictor:
    """The same FP32 variant with its weights cast to bf16 (PyTorch eager).

    Weights are cast once rather than run under torch.autocast: CPU autocast re-casts every weight on
    every call, which makes BERT slower than FP32 (pytorch/pytorch#86270).
    """
    predictor.model.to(torch.bfloat16)
    predictor.runtime = BF16_RUNTIME
    return predictor


def _load_once(folder: Path, runtime: str, threads: int) -> Predictor:
    if runtime == BF16_RUNTIME:
        return to_bf16(load_variant(folder, runtime="torch", threads=threads))
    return load_variant(folder, runtime=runtime, threads=threads, ort_spinning=False)


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """The folder's (device, inode): a stage re-saving a variant swaps in a new folder (`io.publish_folder`)."""
    try:
        stat = Path(folder).stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def load_runtime(folder: Path, runtime: str, threads: int) -> Predictor:
    """The variant loaded whole from one version of its folder: if another stage swapped a new version in
    while it was read (the folder is another one afterwards), it is loaded again."""
    deadline = time.monotonic() + RELOAD_WINDOW_SECONDS
    while time.monotonic() < deadline:
        before = folder_identity(folder)
        try:
            predictor = _load_once(folder, runtime, threads)
        except Exception:  # noqa: BLE001 -- any read error of a half-swapped folder means: load again
            if before is not None and folder_identity(folder) == before:
                raise  # the folder did not change: the variant itself is broken
        else:
            if before is not None and folder_identity(folder) == before:
                return predictor  # in memory now: a later re-save cannot reach it
        log.warning("checkpoints/%s was re-saved while it was being loaded: loading it again", Path(folder).name)
        time.sleep(RELOAD_PAUSE_SECONDS)
    raise FinCompressError(f"{folder} was re-saved again and again for {RELOAD_WINDOW_SECONDS} s while the benchmark "
                           f"loaded it (another stage is writing it); run the benchmark again when that stage is done")


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


# ----------------------------------------------------------------------------- the run


def runtime_plan(available: dict[str, list[str]], settings: BenchmarkSettings, isa: list[str] | None,
                 skipped: list[dict]) -> tuple[dict[str, list[str]], dict]:
    """{variant: runtimes to measure} and the bf16 record; variants with no requested runtime are skipped."""
    fp32 = [name for name, runtimes in available.items() if "torch" in runtimes]
    bf16_names, bf16_note = bf16_plan(settings.bf16, cpu_metadata()["isa"] if isa is None else isa, fp32,
                                      settings.teacher)
    plan = {name: [r for r in runtimes if r in settings.runtimes] + ([BF16_RUNTIME] if name in bf16_names else [])
            for name, runtimes in available.items()}
    for name in [n for n, runtimes in plan.items() if not runtimes]:
        reason = f"runs in {', '.join(available[name])} only, not in --runtimes {','.join(settings.runtimes)}"
        log.warning("skipping variant %r: %s", name, reason)
        skipped.append({"variant": name, "runtime": "all", "reason": reason})
    return plan, {"variants": bf16_names, "note": bf16_note}


def score_and_time(plots: Path, predictors: list[Predictor], test: tuple[list[str], np.ndarray],
                   eval_sets: list[EvalSet], settings: BenchmarkSettings, skipped: list[dict],
                   partial: reporting.PartialRows | None) -> BenchmarkResult:
    """Accuracy and calibration on every set, then (unless --no-timing) latency and throughput."""
    texts, labels = test
    predictors, rows, probabilities = scoring.accuracy_rows(predictors, texts, labels, settings, skipped,
                                                            on_row=partial.add if partial else None)
    if not rows:
        raise FinCompressError("no variant could be measured, every one was skipped: " + "; ".join(
            f"{s['variant']} ({s['runtime']}): {s['reason']}" for s in skipped))
    reference = scoring.add_intervals(rows, [p.argmax(-1) for p in probabilities], labels, settings.teacher,
                                      settings.bootstrap_resamples, settings.bootstrap_seed)
    if settings.reliability_plots:
        scoring.reliability_plots(plots, rows, labels, probabilities, scoring.TEST_SET)
    for eval_set in eval_sets:
        scores = scoring.score_eval_set(rows, predictors, eval_set, (labels, probabilities), settings, skipped)
        if settings.reliability_plots:
            scoring.reliability_plots(plots, rows, eval_set.labels, scores, eval_set.name)
    throughput: list[dict] = []
    if settings.no_timing:
        timing.add_size_ratio_only(rows, settings.teacher)
    else:
        latency, throughput = timing.measure_speed(predictors, texts, settings)
        timing.add_speed_columns(rows, predictors, latency, throughput, settings)
    return BenchmarkResult(rows=rows, throughput=throughput, skipped=skipped, delta_reference=reference,
                           test_samples=len(texts), eval_sets={s.name: s.metadata() for s in eval_sets},
                           loaded=[(p.name, p.info) for p in predictors])


def benchmark(root: Path, names: list[str], settings: BenchmarkSettings, isa: list[str] | None = None,
              eval_sets: list[EvalSet] | None = None, partial: reporting.PartialRows | None = None,
              plots: Path | None = None) -> BenchmarkResult:
    """Accuracy with intervals, calibration, latency and throughput of every variant x runtime (module doc).

    Reliability diagrams go to `plots` (default results/plots; the command line stages them with its set)."""
    test = first_rows_of_every_class(read_split(root, "test"), settings.max_test_samples)
    skipped: list[dict] = []
    available = available_runtimes(root, names, settings, skipped)
    plan, bf16 = runtime_plan(available, settings, isa, skipped)
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(settings.threads)
        predictors = load_predictors(root, plan, settings, skipped)
        result = score_and_time(plots or results_dir(root) / "plots", predictors,
                                (test["text"].tolist(), test["label"].to_numpy()),
                                eval_sets or [], settings, skipped, partial)
    finally:
        torch.set_num_threads(previous_threads)  # the benchmark is also called in-process (notebooks, tests)
    result.bf16 = bf16
    return result


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    add_settings_arguments(parser)
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


def checked_inputs(root: Path, settings: BenchmarkSettings) -> tuple[list[str], list[EvalSet]]:
    """Variants, data, extra sets and the results folder, checked before any model is loaded."""
    names = select_variants(root, settings.variants)
    check_teacher(root, names, settings.teacher)
    if not settings.variants:  # folders that are no variant are left out: say so before the long run
        for folder, problem in variant_problems(root).items():
            if folder not in names:
                log.warning("leaving out checkpoints/%s: %s", folder, problem)
    read_split(root, "test")  # a clear error before any model is loaded
    eval_sets = read_eval_sets(list(settings.eval_sets))
    reporting.check_writable(results_dir(root))
    return names, eval_sets


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    settings = settings_from_args(args)
    names, eval_sets = checked_inputs(root, settings)
    fingerprint = data_fingerprint(root)
    provenance = reporting.variant_provenance(root, names, fingerprint)  # warns of stale variants before the run
    machine = cpu_metadata()
    partial = reporting.PartialRows(root, settings.output)
    results = reporting.ResultsSet(root, settings.output)
    try:
        result = benchmark(root, names, settings, isa=machine["isa"], eval_sets=eval_sets, partial=partial,
                           plots=results.plots)
    except BaseException:
        results.discard()
        if partial.path.is_file():
            log.warning("the rows measured so far are in %s", partial.path)
        raise
    # What the rows were scored with, not what the folders held before the run (a stage may re-save one).
    provenance.update(reporting.loaded_provenance(result.loaded, fingerprint))
    metadata = reporting.run_metadata(machine, settings, result, fingerprint, provenance, args.config_values)
    paths = reporting.write_results(root, result.rows, result.throughput, metadata, settings.output,
                                    list(result.eval_sets), results)
    partial.done()
    frame = pd.read_csv(paths[0])
    reporting.print_summary(frame, result, paths)
    return frame


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
