"""The whole study in one command: every stage in order, skipping what is up to date.

Reads  whatever the stages read (the datasets, the teacher model), under one project root, with the
       settings of `configs/<preset>/<stage>.json` (one readable file per preset and stage).
Writes every variant in checkpoints/, results/benchmark_results.csv/.json, results/plots/, and a stamp
       per finished stage in <root>/.cache/pipeline/<stage>.json (its command, its config and the
       signatures of its inputs). With --seeds, extra runs of the training-based stages in
       <root>/seeds/seed<k>/ and results/seed_results.csv / seed_summary.csv.

A stage is skipped when its outputs exist and its command, config and inputs are unchanged since it
last ran; `--force` re-runs everything. Each stage runs as its own `python -m` process (stages meet
through files), so a failing stage stops the run with its name and the command to re-run it.

Presets (configs/<preset>/):
  smoke    tiny and fast (CI, notebooks on CPU): a few steps per stage, a tenth of the offline data.
  offline  the reference study on CPU: the release files of the datasets and the all-MiniLM-L6-v2
           stand-in teacher (from the assets folder: see `python -m fincompress.assets`).
  finbert  the real study (GPU): ProsusAI/finbert and the Hub's copies of the datasets.

Seeds: `--seeds 0,1,2` re-trains every training-based variant (students, QAT, pruned, and the stacked
INT8 students) once per seed against the one canonical teacher, each seed in its own project root
<root>/seeds/seed<k>/ (its data and teacher are links to the canonical ones), so the canonical
variant names in <root>/checkpoints/ stay what every other stage, the demo and the notebooks use.
`--teacher-seeds 0,1,2` measures the teacher's own spread (<root>/seeds/teacher_seed<k>/).
`--quick` caps every stage at the smoke preset's budget: it checks a preset's commands end to end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fincompress.common import cli
from fincompress.common.io import atomic_write_text
from fincompress.common.paths import REPO_ROOT, FinCompressError, add_root_argument, project_root

CONFIGS = REPO_ROOT / "configs"
PRESETS = ("smoke", "offline", "finbert")
DATA = "data/dataset_info.json"
SEEDS_FOLDER = "seeds"
# Settings that only set how much work a stage does: `--quick` takes these from the smoke preset.
BUDGET_KEYS = ("max_steps", "batch_size", "sample_fraction", "calibration_samples", "observer_warmup_steps",
               "rounds", "targets", "max_val_samples", "num_runs", "warmup", "throughput_runs",
               "max_test_samples", "transfer_size", "batch_sizes", "thread_counts", "bootstrap_resamples")
# Study settings: every preset file names each one its stage has (tests/test_presets.py checks), so no
# study value comes silently from the code. The code's own defaults are only for running a stage by hand.
STUDY_SETTINGS = ("epochs", "lr", "patience", "batch_size", "weight_decay", "warmup_fraction", "grad_clip", "seed",
                  "eval_batch_size", "temperature", "alpha", "student_layers", "student_hidden", "student_heads",
                  "student_ffn", "student_init", "init_layer_map", "transfer_set", "layer_map", "intermediate_epochs",
                  "target", "rounds", "importance", "ffn_prune", "calibration_samples", "observer_warmup_steps",
                  "agreement", "model")
# Settings every preset gives the same value for a stage (presets differ in budget, data and model only).
SHARED_SETTINGS = ("weight_decay", "warmup_fraction", "grad_clip", "seed", "eval_batch_size", "temperature",
                   "alpha", "importance", "agreement")


def variant(name: str) -> str:
    return f"checkpoints/{name}"


@dataclass
class Stage:
    """One `python -m module --config FILE args...` step and the files it reads and writes (relative to root)."""

    name: str
    module: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seeded: bool = False  # trained with a seed: re-run once per --seeds value
    config: Path | None = None
    args: list[str] = field(default_factory=list)
    root: Path | None = None  # None: the pipeline's root; else a seed run's own root

    @property
    def label(self) -> str:
        return self.name if self.root is None else f"{self.name} [{self.root.name}]"


def _stage(name: str, module: str, inputs: list[str], outputs: list[str] | None = None, seeded: bool = False) -> Stage:
    return Stage(name, module, inputs, outputs if outputs is not None else [variant(name)], seeded)


TEACHER = variant("teacher")
# The study: stage, module, inputs, outputs. Every setting lives in configs/<preset>/<stage>.json.
STUDY = [
    _stage("data", "fincompress.data.prepare_dataset", [], [DATA]),
    _stage("teacher", "fincompress.teacher.train_teacher", [DATA]),
    _stage("student_vanilla_kd", "fincompress.distillation.soft_label_distillation", [DATA, TEACHER], seeded=True),
    _stage("student_intermediate_kd", "fincompress.distillation.intermediate_distillation", [DATA, TEACHER],
           seeded=True),
    # A smaller student (the finbert preset: TinyBERT-4's 4 x 312 shape): how far speed goes, at what F1.
    _stage("student_small_kd", "fincompress.distillation.soft_label_distillation", [DATA, TEACHER], seeded=True),
    _stage("teacher_ptq_int8", "fincompress.quantization.ptq", [DATA, TEACHER]),
    _stage("teacher_dynamic_int8", "fincompress.quantization.ptq", [DATA, TEACHER]),
    _stage("teacher_qat_int8", "fincompress.quantization.qat", [DATA, TEACHER], seeded=True),
    _stage("pruned_30pct", "fincompress.pruning.prune_finetune", [DATA, TEACHER], seeded=True),
    _stage("pruned_50pct", "fincompress.pruning.prune_finetune", [DATA, TEACHER], seeded=True),
    _stage("pruning_curve", "fincompress.pruning.curve", [DATA, TEACHER], ["results/pruning_curve.csv"]),
    # Stacked rows: each KD student, then INT8.
    _stage("student_vanilla_kd_ptq_int8", "fincompress.quantization.ptq", [DATA, variant("student_vanilla_kd")],
           seeded=True),
    _stage("student_intermediate_kd_ptq_int8", "fincompress.quantization.ptq",
           [DATA, variant("student_intermediate_kd")], seeded=True),
    _stage("student_small_kd_ptq_int8", "fincompress.quantization.ptq", [DATA, variant("student_small_kd")],
           seeded=True),
]
SEED_SUMMARY = _stage("seed_summary", "fincompress.evaluation.seeds", [DATA], ["results/seed_summary.csv"])
REPORT = [
    # The generation record is written last: a run cut short before it left no complete results set.
    _stage("benchmark", "fincompress.evaluation.benchmark", [DATA],
           ["results/benchmark_results.csv", "results/benchmark_results.generation.json"]),
    _stage("plots", "fincompress.evaluation.plots", ["results/benchmark_results.csv"], ["results/plots/pareto.png"]),
]
REPORT_NAMES = {stage.name for stage in REPORT}


# ----------------------------------------------------------------------------- building the stage list

def config_path(preset: str, stage: str) -> Path:
    return CONFIGS / preset / f"{stage}.json"


def read_stage_config(preset: str, stage: str) -> dict:
    path = config_path(preset, stage)
    return cli.read_config(path) if path.is_file() else {}


def quick_args(preset: str, stage: str) -> list[str]:
    """The smoke preset's budget settings for `stage`, as flags that override the preset's config."""
    if preset == "smoke":
        return []
    smoke = read_stage_config("smoke", stage)
    return [token for key in BUDGET_KEYS if key in smoke
            for token in (f"--{key.replace('_', '-')}", str(smoke[key]))]


def output_args(spec: Stage) -> list[str]:
    """`--output-name` of a stage that makes one variant: its folder is the stage's name, never derived
    by the stage from another flag (e.g. pruning's --target)."""
    return ["--output-name", spec.name] if spec.outputs == [variant(spec.name)] else []


def override_args(stage: str, preset: str, model: str | None, data_dir: Path | None, quick: bool) -> list[str]:
    """Flags the pipeline's own options add to a stage's config (the command line wins over the file)."""
    args = quick_args(preset, stage) if quick else []
    if stage == "teacher" and model:
        args += ["--model", str(model)]
    if stage == "data" and data_dir is not None:
        data_dir = Path(data_dir).expanduser().resolve()
        if not data_dir.is_dir():
            raise FinCompressError(f"--data-dir {data_dir}: not a folder (expected financial_phrasebank/ and "
                                   "fiqa_2018/ inside, e.g. ../shared/data)")
        args += ["--source", "local", "--phrasebank-dir", str(data_dir / "financial_phrasebank"),
                 "--fiqa-dir", str(data_dir / "fiqa_2018")]
    return args


def build_stages(preset: str, model: str | None = None, data_dir: Path | None = None, *,
                 quick: bool = False) -> list[Stage]:
    """The study's canonical stages for a preset, each with its config file and overrides."""
    if preset not in PRESETS:
        raise FinCompressError(f"unknown preset {preset!r}; choose from {PRESETS}")
    stages = []
    for spec in [*STUDY, *REPORT]:
        path = config_path(preset, spec.name)
        stages.append(Stage(spec.name, spec.module, list(spec.inputs), list(spec.outputs), spec.seeded,
                            path if path.is_file() else None,
                            output_args(spec) + override_args(spec.name, preset, model, data_dir, quick)))
    return stages


def parse_seeds(text: str | list[int] | None, flag: str = "--seeds") -> list[int]:
    if text is None or text == "":
        return []
    if isinstance(text, list):
        return [int(s) for s in text]
    try:
        seeds = [cli.non_negative_int(part.strip()) for part in str(text).split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise FinCompressError(f"{flag} {text!r}: {exc}") from exc
    if len(set(seeds)) != len(seeds):
        raise FinCompressError(f"{flag} {text!r}: a seed is repeated")
    return seeds


def seed_root(root: Path, name: str) -> Path:
    return root / SEEDS_FOLDER / name


def link_into(run_root: Path, root: Path, parts: list[str]) -> None:
    """Make `run_root/part` a link to `root/part` (the canonical data and teacher a seed run shares)."""
    for part in parts:
        link, target = run_root / part, root / part
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise FinCompressError(f"{link} exists and is not a link to {target}: remove it to run the seeds")
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def seed_stages(root: Path, stages: list[Stage], seeds: list[int], teacher_seeds: list[int]) -> list[Stage]:
    """Seed runs: each seeded stage per seed in seeds/seed<k>/, the teacher per teacher seed."""
    runs = []
    for seed in seeds:
        for stage in stages:
            if stage.seeded:
                runs.append(Stage(stage.name, stage.module, stage.inputs, stage.outputs, True, stage.config,
                                  [*stage.args, "--seed", str(seed)], seed_root(root, f"seed{seed}")))
    teacher = next((s for s in stages if s.name == "teacher"), None)
    if teacher is not None:
        for seed in teacher_seeds:
            runs.append(Stage(teacher.name, teacher.module, teacher.inputs, teacher.outputs, True, teacher.config,
                              [*teacher.args, "--seed", str(seed)], seed_root(root, f"teacher_seed{seed}")))
    return runs


def prepare_seed_roots(root: Path, runs: list[Stage]) -> None:
    for run_root in sorted({s.root for s in runs if s.root is not None}):
        shared = ["data"] if run_root.name.startswith("teacher_seed") else ["data", "checkpoints/teacher"]
        if not (root / "checkpoints" / "teacher").is_dir() and "checkpoints/teacher" in shared:
            raise FinCompressError(f"seed runs need the canonical teacher in {root / 'checkpoints'}: "
                                   "run the teacher stage first")
        link_into(run_root, root, shared)


# ----------------------------------------------------------------------------- up-to-date checks

def signature(path: Path) -> str | None:
    """What identifies a version of an input: a variant's info file, else the file's bytes."""
    if path.is_dir():
        path = path / "checkpoint_info.json"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stage_root(root: Path, stage: Stage) -> Path:
    return stage.root or root


def stamp_path(root: Path, stage: Stage) -> Path:
    return stage_root(root, stage) / ".cache" / "pipeline" / f"{stage.name}.json"


def stage_state(root: Path, stage: Stage) -> dict:
    run_root = stage_root(root, stage)
    config = cli.read_config(stage.config) if stage.config else {}
    return {"module": stage.module, "config": config, "args": stage.args,
            "inputs": {name: signature(run_root / name) for name in stage.inputs}}


def is_up_to_date(root: Path, stage: Stage) -> bool:
    stamp = stamp_path(root, stage)
    run_root = stage_root(root, stage)
    if not stamp.is_file() or not all((run_root / out).exists() for out in stage.outputs):
        return False
    try:
        return json.loads(stamp.read_text()) == stage_state(root, stage)
    except json.JSONDecodeError:
        return False


def stage_command(root: Path, stage: Stage) -> list[str]:
    # Stages run in the repository, so a config inside it is shown (and passed) by its relative path.
    config = ["--config", os.path.relpath(stage.config, REPO_ROOT) if stage.config.is_relative_to(REPO_ROOT)
              else str(stage.config)] if stage.config else []
    return ["-m", stage.module, "--root", str(stage_root(root, stage)), *config, *stage.args]


def run_stage(root: Path, stage: Stage) -> None:
    command = stage_command(root, stage)
    print(f"\n=== {stage.label}: python {' '.join(command)}", flush=True)
    started = time.perf_counter()
    code = subprocess.call([sys.executable, *command], cwd=REPO_ROOT)
    if code != 0:
        hint = " (offline: --data-dir FOLDER with the release files)" if stage.name == "data" else ""
        raise FinCompressError(
            f"stage {stage.name!r} failed (exit {code}){hint}. Its message is above; re-run it alone with\n"
            f"  python {' '.join(command)}\n"
            f"then re-run the pipeline: finished stages are skipped.")
    atomic_write_text(stamp_path(root, stage), json.dumps(stage_state(root, stage), indent=2))
    print(f"=== {stage.label} done in {time.perf_counter() - started:.0f}s", flush=True)


def run_stages(root: Path, stages: list[Stage], force: bool = False) -> dict[str, str]:
    """Run the stages in order; returns {stage label: "ran" | "skipped"}."""
    status = {}
    for stage in stages:
        if not force and is_up_to_date(root, stage):
            print(f"=== {stage.label}: up to date, skipped", flush=True)
            status[stage.label] = "skipped"
            continue
        run_stage(root, stage)
        status[stage.label] = "ran"
    return status


def select(stages: list[Stage], names: str | list[str] | None) -> list[Stage]:
    if not names:
        return stages
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    known = [s.name for s in stages]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise FinCompressError(f"unknown stage(s) {unknown}; stages: {known}")
    return [s for s in stages if s.name in wanted]


def plan(root: Path, preset: str, *, stages: str | list[str] | None = None, model: str | None = None,
         data_dir: Path | None = None, seeds: list[int] = (), teacher_seeds: list[int] = (),
         quick: bool = False) -> list[Stage]:
    """Every stage to run, in order: the canonical study, the seed runs and their summary, the report."""
    all_stages = build_stages(preset, model, data_dir, quick=quick)
    chosen = select(all_stages, stages)
    study = [s for s in chosen if s.name not in REPORT_NAMES]
    report = [s for s in chosen if s.name in REPORT_NAMES]
    runs = seed_stages(root, study, list(seeds), list(teacher_seeds))
    summary = []
    if runs:  # the summary is stale whenever a canonical or a seed variant changes
        seed_outputs = [f"{SEEDS_FOLDER}/{run.root.name}/{out}" for run in runs for out in run.outputs]
        canonical = [out for stage in study for out in stage.outputs if out.startswith("checkpoints/")]
        summary = [Stage(SEED_SUMMARY.name, SEED_SUMMARY.module, [DATA, *canonical, *seed_outputs],
                         list(SEED_SUMMARY.outputs))]
    # The report is stale whenever what it reads changes: the benchmark every variant of the preset, the
    # plots the benchmark's and the other stages' results (and the seed summary).
    made = [out for stage in all_stages if stage.name not in REPORT_NAMES for out in stage.outputs]
    extra = {"benchmark": [out for out in made if out.startswith("checkpoints/")],
             "plots": [out for out in made if out.startswith("results/")] + [out for s in summary for out in s.outputs]}
    report = [replace(s, inputs=[*s.inputs, *extra[s.name]]) for s in report]
    return [*study, *runs, *summary, *report]


def run_pipeline(preset: str = "finbert", root: str | Path | None = None, stages: str | list[str] | None = None,
                 force: bool = False, model: str | None = None, data_dir: Path | None = None,
                 seeds: str | list[int] | None = None, teacher_seeds: str | list[int] | None = None,
                 quick: bool = False) -> dict[str, str]:
    """Entry point for notebooks: run (or skip) the chosen stages of a preset under `root`."""
    root = project_root(root)
    chosen = plan(root, preset, stages=stages, model=model, data_dir=data_dir, seeds=parse_seeds(seeds),
                  teacher_seeds=parse_seeds(teacher_seeds, "--teacher-seeds"), quick=quick)
    status = {}
    for stage in chosen:  # seed roots are linked once the canonical teacher they share exists
        if stage.root is not None:
            prepare_seed_roots(root, [stage])
        status.update(run_stages(root, [stage], force))
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--preset", choices=PRESETS, default="finbert",
                        help="which study to run: its settings are configs/<preset>/*.json (default finbert)")
    parser.add_argument("--model", help="teacher to fine-tune, a Hub name or a local folder (overrides the "
                        "preset's teacher config: ProsusAI/finbert for finbert, all-MiniLM-L6-v2 otherwise)")
    parser.add_argument("--data-dir", type=Path, help="folder holding financial_phrasebank/ and fiqa_2018/ release "
                        "files: prepare the data from them instead of the preset's source (e.g. ../shared/data)")
    parser.add_argument("--stages", help="comma-separated subset of stages to run (default: all, in order)")
    parser.add_argument("--seeds", help="comma-separated seeds: re-train every training-based variant once per seed "
                        "(in <root>/seeds/seed<k>/) and write results/seed_summary.csv")
    parser.add_argument("--teacher-seeds", help="comma-separated seeds for extra teacher runs (the teacher's own "
                        "spread, in <root>/seeds/teacher_seed<k>/)")
    parser.add_argument("--quick", action="store_true",
                        help="cap every stage at the smoke preset's budget (checks a preset end to end in minutes)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when up to date")
    parser.add_argument("--list", action="store_true", help="print the stages and their commands, run nothing")
    return parser


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    seeds, teacher_seeds = parse_seeds(args.seeds), parse_seeds(args.teacher_seeds, "--teacher-seeds")
    if args.list:
        for stage in plan(root, args.preset, stages=args.stages, model=args.model, data_dir=args.data_dir,
                          seeds=seeds, teacher_seeds=teacher_seeds, quick=args.quick):
            state = "up to date" if is_up_to_date(root, stage) else "to run"
            print(f"{stage.label:44s} [{state}] python {' '.join(stage_command(root, stage))}")
        return {}
    status = run_pipeline(args.preset, root, args.stages, args.force, args.model, args.data_dir,
                          seeds, teacher_seeds, args.quick)
    print(f"\npipeline ({args.preset}) finished: {sum(v == 'ran' for v in status.values())} stage(s) ran, "
          f"{sum(v == 'skipped' for v in status.values())} skipped")
    return status


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
