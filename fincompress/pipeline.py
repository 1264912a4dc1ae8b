"""The whole study in one command: every stage in order, skipping what is up to date.

Reads  whatever the stages read (the datasets, `--model`), under one project root.
Writes every variant in checkpoints/, results/benchmark_results.csv/.json, results/plots/, and a
       stamp per finished stage in <root>/.cache/pipeline/<stage>.json (its command and the
       signatures of its inputs).

A stage is skipped when its outputs exist and its command and inputs are unchanged since it last
ran; `--force` re-runs everything. Each stage runs as its own `python -m` process (stages meet
through files), so a failing stage stops the run with its name and the command to re-run it.

Presets:
  smoke    tiny and fast (CI, notebooks on CPU): a few steps per stage, local data and models.
  offline  the full reference study here: local data (--data-dir) and a local teacher (--model,
           the MiniLM-L6-H384 stand-in; see the README for why).
  finbert  the real study (default for users with a GPU and the Hub): ProsusAI/finbert and the Hub
           datasets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fincompress.common import cli
from fincompress.common.paths import REPO_ROOT, FinCompressError, add_root_argument, project_root

SHARED = REPO_ROOT.parent / "shared"
PRESETS = ("smoke", "offline", "finbert")
STUDENT_384 = ["--student-hidden", "384", "--student-heads", "12", "--student-ffn", "1536"]


@dataclass
class Stage:
    """One `python -m module args...` step with the files it reads and writes (relative to root)."""

    name: str
    module: str
    args: list[str]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def variant(name: str) -> str:
    return f"checkpoints/{name}"


DATA = "data/dataset_info.json"


def build_stages(preset: str, model: str | None = None, data_dir: Path | None = None) -> list[Stage]:
    """The study's stages for a preset. Every knob of a preset is visible here."""
    if preset not in PRESETS:
        raise FinCompressError(f"unknown preset {preset!r}; choose from {PRESETS}")
    data_dir = Path(data_dir or SHARED / "data")
    minilm = str(SHARED / "models" / "all-MiniLM-L6-v2")
    smoke = preset == "smoke"
    few = ["--max-steps", "3", "--batch-size", "16"]
    if preset == "finbert":
        data_args = ["--source", "hub"]
        teacher_args = ["--model", model or "ProsusAI/finbert"]
        # 4 x 384 student, default init: pretrained MiniLM-L6-H384 (Hub), its evenly spaced layers.
        student = ["--student-layers", "4", *STUDENT_384]
        vanilla_args, intermediate_args = list(student), list(student)
        qat_args: list[str] = []
        prune_args = ["--rounds", "3", "--distill"]
    else:
        data_args = ["--source", "local", "--phrasebank-dir", str(data_dir / "financial_phrasebank"),
                     "--fiqa-dir", str(data_dir / "fiqa_2018")]
        teacher_args = ["--model", model or minilm, "--lr", "5e-5", "--epochs", "4"]
        # The 6 x 384 MiniLM teacher gets a 2 x 384 student (3x fewer encoder FLOPs per token), initialised
        # from the teacher's bottom two layers (the best init in results/distillation_init_comparison.csv).
        student = ["--student-layers", "2", *STUDENT_384, "--student-init", "teacher-layers", "--init-layer-map", "0,1"]
        vanilla_args = [*student, "--lr", "2e-4", "--epochs", "4", "--patience", "2",
                        "--transfer-set", "phrasebank-50agree"]
        intermediate_args = [*student, "--lr", "2e-4", "--epochs", "6", "--patience", "3"]
        qat_args = ["--max-steps", "24", "--observer-warmup-steps", "8"]
        prune_args = ["--rounds", "2", "--distill"]
    if smoke:
        data_args += ["--sample-fraction", "0.1"]  # ~340 texts: every stage's real code path, in seconds
        teacher_args = ["--model", model or minilm, *few]
        student = ["--student-layers", "2", *STUDENT_384, "--student-init", f"pretrained:{minilm}"]
        vanilla_args, intermediate_args = [*student, *few], [*student, *few]
        qat_args = [*few, "--observer-warmup-steps", "1"]
        prune_args = ["--rounds", "1", *few]
    calibration = ["--calibration-samples", "32" if smoke else "256"]
    curve_targets = "0.1,0.3,0.5,0.7" if smoke else "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
    bench = (["--num-runs", "10", "--warmup", "2", "--throughput-runs", "2", "--max-test-samples", "64"]
             if smoke else [])
    teacher = variant("teacher")
    stages = [
        Stage("data", "fincompress.data.prepare_dataset", data_args, [], [DATA]),
        Stage("teacher", "fincompress.teacher.train_teacher", teacher_args, [DATA], [teacher]),
        Stage("student_vanilla_kd", "fincompress.distillation.soft_label_distillation", vanilla_args,
              [DATA, teacher], [variant("student_vanilla_kd")]),
        Stage("student_intermediate_kd", "fincompress.distillation.intermediate_distillation", intermediate_args,
              [DATA, teacher], [variant("student_intermediate_kd")]),
        Stage("teacher_ptq_int8", "fincompress.quantization.ptq", ["--source", "teacher", *calibration],
              [DATA, teacher], [variant("teacher_ptq_int8")]),
        Stage("teacher_dynamic_int8", "fincompress.quantization.ptq", ["--source", "teacher", "--method", "dynamic"],
              [DATA, teacher], [variant("teacher_dynamic_int8")]),
        Stage("teacher_qat_int8", "fincompress.quantization.qat", ["--source", "teacher", *qat_args],
              [DATA, teacher], [variant("teacher_qat_int8")]),
        Stage("pruned_30pct", "fincompress.pruning.prune_finetune", ["--target", "0.3", *prune_args],
              [DATA, teacher], [variant("pruned_30pct")]),
        Stage("pruned_50pct", "fincompress.pruning.prune_finetune", ["--target", "0.5", *prune_args],
              [DATA, teacher], [variant("pruned_50pct")]),
        Stage("pruning_curve", "fincompress.pruning.prune_finetune",
              ["--curve-targets", curve_targets, *(["--max-val-samples", "96"] if smoke else [])],
              [DATA, teacher], ["results/pruning_curve.csv"]),
    ]
    # Stacked rows: each KD student, then INT8.
    stages += [Stage(f"{student}_ptq_int8", "fincompress.quantization.ptq", ["--source", student, *calibration],
                     [DATA, variant(student)], [variant(f"{student}_ptq_int8")])
               for student in ("student_vanilla_kd", "student_intermediate_kd")]
    variant_outputs = [out for s in stages for out in s.outputs if out.startswith("checkpoints/")]
    stages += [
        Stage("benchmark", "fincompress.evaluation.benchmark", bench, variant_outputs,
              ["results/benchmark_results.csv"]),
        Stage("plots", "fincompress.evaluation.plots", [], ["results/benchmark_results.csv"],
              ["results/plots/pareto.png"]),
    ]
    return stages


# ----------------------------------------------------------------------------- up-to-date checks

def signature(path: Path) -> str | None:
    """What identifies a version of an input: a variant's info file, else the file's bytes."""
    if path.is_dir():
        path = path / "checkpoint_info.json"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stamp_path(root: Path, stage: Stage) -> Path:
    return root / ".cache" / "pipeline" / f"{stage.name}.json"


def stage_state(root: Path, stage: Stage) -> dict:
    return {"module": stage.module, "args": stage.args,
            "inputs": {name: signature(root / name) for name in stage.inputs}}


def is_up_to_date(root: Path, stage: Stage) -> bool:
    stamp = stamp_path(root, stage)
    if not stamp.is_file() or not all((root / out).exists() for out in stage.outputs):
        return False
    return json.loads(stamp.read_text()) == stage_state(root, stage)


def run_stage(root: Path, stage: Stage) -> None:
    command = [sys.executable, "-m", stage.module, "--root", str(root), *stage.args]
    print(f"\n=== {stage.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    code = subprocess.call(command, cwd=REPO_ROOT)
    if code != 0:
        raise FinCompressError(
            f"stage {stage.name!r} failed (exit {code}). Its message is above; re-run it alone with\n"
            f"  python -m {stage.module} --root {root} {' '.join(stage.args)}\n"
            f"then re-run the pipeline: finished stages are skipped.")
    stamp = stamp_path(root, stage)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(stage_state(root, stage), indent=2))
    print(f"=== {stage.name} done in {time.perf_counter() - started:.0f}s", flush=True)


def run_stages(root: Path, stages: list[Stage], force: bool = False) -> dict[str, str]:
    """Run the stages in order; returns {stage: "ran" | "skipped"}."""
    status = {}
    for stage in stages:
        if not force and is_up_to_date(root, stage):
            print(f"=== {stage.name}: up to date, skipped", flush=True)
            status[stage.name] = "skipped"
            continue
        run_stage(root, stage)
        status[stage.name] = "ran"
    return status


def select(stages: list[Stage], names: str | list[str] | None) -> list[Stage]:
    if not names:
        return stages
    wanted = names.split(",") if isinstance(names, str) else list(names)
    known = {s.name for s in stages}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise FinCompressError(f"unknown stage(s) {unknown}; stages: {[s.name for s in stages]}")
    return [s for s in stages if s.name in wanted]


def run_pipeline(preset: str = "finbert", root: str | Path | None = None, stages: str | list[str] | None = None,
                 force: bool = False, model: str | None = None, data_dir: Path | None = None) -> dict[str, str]:
    """Entry point for notebooks: run (or skip) the chosen stages of a preset under `root`."""
    chosen = select(build_stages(preset, model, data_dir), stages)
    return run_stages(project_root(root), chosen, force)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--preset", choices=PRESETS, default="finbert", help="which study to run (default finbert)")
    parser.add_argument("--model", help="teacher to fine-tune (default: ProsusAI/finbert for finbert, "
                        "../shared/models/all-MiniLM-L6-v2 for offline and smoke)")
    parser.add_argument("--data-dir", type=Path, help="folder holding financial_phrasebank/ and fiqa_2018/ "
                        "(offline and smoke presets; default ../shared/data)")
    parser.add_argument("--stages", help="comma-separated subset of stages to run (default: all, in order)")
    parser.add_argument("--force", action="store_true", help="re-run stages even when up to date")
    parser.add_argument("--list", action="store_true", help="print the stages and their commands, run nothing")
    return parser


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    stages = select(build_stages(args.preset, args.model, args.data_dir), args.stages)
    if args.list:
        for stage in stages:
            state = "up to date" if is_up_to_date(root, stage) else "to run"
            print(f"{stage.name:34s} [{state}] python -m {stage.module} {' '.join(stage.args)}")
        return {}
    status = run_stages(root, stages, args.force)
    print(f"\npipeline ({args.preset}) finished: {sum(v == 'ran' for v in status.values())} stage(s) ran, "
          f"{sum(v == 'skipped' for v in status.values())} skipped")
    return status


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
