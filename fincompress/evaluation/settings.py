"""The benchmark's settings: one dataclass, each field its default, flag type and help; the parser is derived.

Reads and writes nothing. `python -m fincompress.evaluation.benchmark --help` lists these fields as flags
(`batch_sizes` -> `--batch-sizes`); a preset (`configs/<preset>/benchmark.json`) names them the same way.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from fincompress.common import cli
from fincompress.common.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, add_bootstrap_arguments
from fincompress.common.paths import FinCompressError

RUNTIMES = ("torch", "onnxruntime")
DEFAULT_OUTPUT = "benchmark_results"
THROUGHPUT_WARMUP_MAX = 2  # untimed calls before each throughput cell (at most; --warmup if smaller)


def runtime_list(text: str | tuple[str, ...]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else text
    runtimes = tuple(dict.fromkeys(r.strip() for r in items if r.strip()))
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown or not runtimes:
        raise FinCompressError(f"--runtimes: unknown runtime(s) {sorted(unknown)}; choose from {list(RUNTIMES)} "
                               "(bf16 rows come from --bf16)")
    return runtimes


def eval_set_list(text: str) -> list[str]:
    """One --eval-set value: NAME=FILE or `tweets`, several comma-separated (a preset's list arrives so)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def option(default, help: str, kind=None, **argparse_options):
    """A settings field: its default, its flag's type (None: a plain string) and its --help text."""
    return field(default=default, metadata={"help": help, "type": kind, **argparse_options})


@dataclass
class BenchmarkSettings:
    """Everything a benchmark run depends on besides the root (the command line, parsed)."""

    variants: str | None = option(None, "comma-separated variant names (default: every folder in checkpoints/)")
    runtimes: tuple[str, ...] = option(RUNTIMES, "comma-separated runtimes among torch,onnxruntime (default: both)",
                                       convert=runtime_list)
    threads: int = option(2, "CPU threads for accuracy and batch-1 latency", cli.positive_int)
    thread_counts: tuple[int, ...] = option((), "comma-separated thread counts for throughput (default: just "
                                            "--threads, always measured)", cli.positive_int_list)
    batch_sizes: tuple[int, ...] = option((1, 32), "comma-separated batch sizes for throughput",
                                          cli.positive_int_list)
    num_runs: int = option(100, "timed batch-1 calls per row", cli.positive_int)
    warmup: int = option(10, f"untimed calls before timing (throughput cells use at most {THROUGHPUT_WARMUP_MAX})",
                         cli.non_negative_int)
    throughput_runs: int = option(10, "timed calls per row, batch size and thread count", cli.positive_int)
    no_timing: bool = option(False, "accuracy and calibration only: no latency or throughput (their columns stay "
                             "empty), e.g. while other work shares the CPU")
    teacher: str = option("teacher", "variant the ratio and delta columns compare with; any variant works, e.g. "
                          "teacher_dynamic_int8 to rank INT8 recipes by paired speed-up")
    max_test_samples: int | None = option(None, "evaluate on the first N test sentences only, with at least one of "
                                          "every class (intervals widen accordingly)", cli.positive_int)
    eval_sets: tuple[str, ...] = option((), "an extra evaluation set, NAME=FILE (a CSV text,label, the labels of "
                                        "prepare_dataset --source csv) or `tweets` (held-out financial tweets "
                                        "without the KD transfer texts); repeatable", eval_set_list,
                                        flag="--eval-set", action="extend")
    bootstrap_resamples: int = option(BOOTSTRAP_RESAMPLES, "", shared=True)
    bootstrap_seed: int = option(BOOTSTRAP_SEED, "", shared=True)
    bf16: str = option("auto", "torch_bf16 rows: auto = the teacher, on CPUs with avx512_bf16 or amx_bf16; on = "
                       "every FP32 variant, any CPU; off = none", choices=("auto", "on", "off"))
    skip_broken: bool = option(False, "skip (with a warning, listed in the JSON) a variant that fails to load or "
                               "run, or breaks its contract, instead of stopping")
    reliability_plots: bool = option(True, "reliability diagram per variant, runtime and set in results/plots/",
                                     flag="--no-reliability-plots")
    output: str = option(DEFAULT_OUTPUT, "file stem under results/ (the throughput table is throughput.csv, or "
                         "<stem>_throughput.csv for another stem)", cli.file_stem)

    def measured_thread_counts(self) -> list[int]:
        return list(dict.fromkeys([self.threads, *self.thread_counts]))


def add_setting(parser: argparse.ArgumentParser, spec) -> None:
    meta = dict(spec.metadata)
    help_text, kind, flag = meta.pop("help"), meta.pop("type"), meta.pop("flag", None)
    meta.pop("convert", None)
    flag = flag or "--" + spec.name.replace("_", "-")
    default = spec.default
    if isinstance(default, bool):  # a switch: on by --flag, or (default on) off by --no-flag
        action = "store_false" if default else "store_true"
        parser.add_argument(flag, dest=spec.name, action=action, help=help_text)
        return
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    suffix = f" (default {shown})" if default not in (None, ()) and "default" not in help_text else ""
    options = {"type": kind} if kind else {}
    if meta.get("action") == "extend":
        default = []
    parser.add_argument(flag, dest=spec.name, default=default, help=help_text + suffix, **options, **meta)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field (the bootstrap pair from metrics, shared with every stage)."""
    for spec in fields(BenchmarkSettings):
        if spec.metadata.get("shared"):
            continue
        add_setting(parser, spec)
    add_bootstrap_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    values = {}
    for spec in fields(BenchmarkSettings):
        value = getattr(args, spec.name, MISSING)
        if value is MISSING:
            raise FinCompressError(f"internal: no flag for the setting {spec.name!r}")
        convert = spec.metadata.get("convert")
        value = convert(value) if convert else value
        values[spec.name] = tuple(value) if isinstance(value, list) else value
    return BenchmarkSettings(**values)
