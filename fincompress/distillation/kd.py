"""Knowledge-distillation building blocks shared by the two KD stages.

- transfer sets: extra unlabelled sentences the teacher labels softly; any validation or test
  sentence in them is refused (FinCompressError), never silently trained on. The named sets are
  read from the study's assets (`common.assets.asset_file`), or from --shared-data if given;
- the steps of the recipe both stages call in order in their `main`: flags, output guards (checked
  before any work), teacher, student, loaders and the teacher's logits (`common.teacher_logits`:
  computed on the training device and cached), test evaluation, the saved variant and one row per
  run in results/distillation_init_comparison.csv.
The prediction-layer loss is `common.losses` (shared with pruning recovery).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fincompress.common import cli
from fincompress.common.assets import asset_file
from fincompress.common.data import data_fingerprint, make_loader, read_split, split_loader
from fincompress.common.eval_sets import tweets_for_transfer
from fincompress.common.io import append_csv_rows
from fincompress.common.loader import load_fp32_model
from fincompress.common.losses import UNLABELLED, cached_kd_loss_fn
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir
from fincompress.common.raw_data import normalise_text, read_phrasebank
from fincompress.common.teacher_logits import teacher_logits
from fincompress.common.training import (
    FitResult,
    LossFn,
    TrainConfig,
    add_eval_batch_argument,
    add_train_arguments,
    describe,
    evaluate_model,
    set_seed,
    train_config_from_args,
)
from fincompress.common.variants import (
    add_output_arguments,
    fp32_variant_dir,
    prepare_output,
    read_info,
    save_fp32_variant,
    variant_name,
)
from fincompress.distillation.student_architecture import (
    StudentSpec,
    add_student_arguments,
    build_student,
    describe_student,
    spec_dict,
    student_spec_from_args,
)

log = logging.getLogger("fincompress.distillation")

RUNS_TABLE = "distillation_init_comparison.csv"
RUNS_COLUMNS = ["created_at", "variant", "technique", "init", "shape", "source_layers", "transfer_set",
                "transfer_size", "epochs", "steps", "encoder_flops_ratio", "val_macro_f1", "test_macro_f1",
                "teacher_test_macro_f1"]
# Named transfer sets: the asset folder they are read from (under --shared-data if given), and what they are.
NAMED_TRANSFER_SETS = {
    "phrasebank-50agree": ("data/financial_phrasebank",
                           "Financial PhraseBank sentences (50% agreement file) that are not in the prepared data"),
    "twitter": ("data/twitter_financial_news", "financial tweets, twitter_financial_news/sent_train.csv "
                "(labels ignored) without the share held out for the benchmark's `tweets` set"),
}


# ----------------------------------------------------------------------------- transfer sets

def named_set_folder(name: str, shared_data: Path | None) -> Path:
    """The release folder of a named transfer set: under `shared_data` if given, else from the assets."""
    relative = NAMED_TRANSFER_SETS[name][0]
    return Path(shared_data) / Path(relative).name if shared_data is not None else asset_file(relative)


def read_text_file(path: Path, spec: str) -> list[str]:
    """Sentences of a .csv (a `text` column) or of a text file (one per line)."""
    if not path.is_file():
        raise FinCompressError(f"transfer set {spec!r}: {path} not found (named sets: {', '.join(NAMED_TRANSFER_SETS)};"
                               " otherwise a .csv with a text column or a .txt with one sentence per line)")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8")
            if "text" not in frame.columns:
                raise FinCompressError(f"{path}: no `text` column (columns: {list(frame.columns)})")
            return frame["text"].tolist()
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise FinCompressError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise FinCompressError(f"{path}: not a readable CSV ({str(exc).strip()})") from None


def read_transfer_texts(spec: str, shared_data: Path | None = None) -> list[str]:
    """Raw sentences of a named transfer set or of a file (.csv with a `text` column, or one per line)."""
    if spec == "phrasebank-50agree":
        return read_phrasebank(named_set_folder(spec, shared_data), "50")["text"].tolist()
    if spec == "twitter":
        return tweets_for_transfer(named_set_folder(spec, shared_data))
    return read_text_file(Path(spec).expanduser(), spec)


def split_keys(root: Path, splits: tuple[str, ...]) -> set[str]:
    return {normalise_text(t).lower() for split in splits for t in read_split(root, split)["text"]}


def load_transfer_set(root: Path, spec: str, shared_data: Path | None = None, size: int | None = None,
                      seed: int = 42) -> tuple[list[str], dict]:
    """Normalised, deduplicated transfer sentences; refuses any validation or test sentence.

    Named sets are built from sentences outside the prepared data; a user's file that contains a
    val/test sentence (case-insensitive, whitespace-normalised as in prepare_dataset) is an error:
    training on it would leak the evaluation data into the student. `size` draws that many
    sentences with `seed` (the same seed, the same sample).
    """
    if size is not None and size < 1:
        raise FinCompressError(f"--transfer-size must be >= 1, got {size}")
    texts = [normalise_text(t) for t in read_transfer_texts(spec, shared_data)]
    keys: dict[str, str] = {}
    for text in texts:
        if text:
            keys.setdefault(text.lower(), text)
    evaluation = split_keys(root, ("val", "test"))
    train = split_keys(root, ("train",))
    if spec in NAMED_TRANSFER_SETS:  # built to lie outside the prepared data
        keys = {k: t for k, t in keys.items() if k not in evaluation and k not in train}
    leaked = [t for k, t in keys.items() if k in evaluation]
    if leaked:
        raise FinCompressError(f"transfer set {spec!r} contains {len(leaked)} validation/test sentence(s), e.g. "
                               f"{leaked[0][:100]!r}; remove them (the student must never train on evaluation data)")
    in_train = [k for k in keys if k in train]
    chosen = [t for k, t in keys.items() if k not in train]  # already in train with a gold label
    if size is not None:
        order = np.random.default_rng(seed).permutation(len(chosen))[:size]
        chosen = [chosen[i] for i in sorted(order)]
    if not chosen:
        raise FinCompressError(f"transfer set {spec!r} has no sentences outside the prepared training data")
    stats = {"name": spec, "size": len(chosen), "read": len(texts), "unique": len(keys),
             "skipped_in_train": len(in_train)}
    return chosen, stats


# ----------------------------------------------------------------------------- flags

def add_kd_arguments(parser: argparse.ArgumentParser, *, output_name: str, kd_defaults: dict,
                     train_defaults: TrainConfig, student_defaults: dict | None = None) -> None:
    add_root_argument(parser)
    parser.add_argument("--teacher", type=variant_name, default="teacher",
                        help="teacher variant under checkpoints/ (default %(default)s)")
    add_output_arguments(parser, output_name)
    add_student_arguments(parser, *([student_defaults] if student_defaults else []))
    parser.add_argument("--temperature", type=cli.positive_float, default=kd_defaults["temperature"],
                        help="softmax temperature T of the soft-label loss, > 0 (default %(default)s)")
    parser.add_argument("--alpha", type=cli.fraction, default=kd_defaults["alpha"],
                        help="weight of the soft-label term in [0, 1]; 1 - alpha weighs cross-entropy "
                        "(default %(default)s)")
    parser.add_argument("--transfer-set", default=None,
                        help=f"extra unlabelled sentences the teacher labels softly: {' | '.join(NAMED_TRANSFER_SETS)}"
                        " | a .csv (text column) or .txt file; validation/test sentences are refused")
    parser.add_argument("--transfer-size", type=cli.positive_int, default=None,
                        help="use a random sample (drawn with --seed) of this many transfer sentences (default: all)")
    parser.add_argument("--shared-data", type=Path, default=None,
                        help="folder holding financial_phrasebank/ and twitter_financial_news/ for the named "
                        "transfer sets (default: the study's assets, see `python -m fincompress.assets`)")
    add_eval_batch_argument(parser)
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    add_train_arguments(parser, train_defaults)


# ----------------------------------------------------------------------------- the recipe's steps
# Each KD stage calls these in order: start_run -> load_teacher -> new_student -> training_data ->
# (its own training) -> trained_student -> evaluate_on_test -> variant_info -> save_student.

@dataclass
class KDRun:
    """What a KD stage settles before any work: where it writes, on which data, with which settings."""

    root: Path
    args: argparse.Namespace
    technique: str
    dest: Path  # the checked output folder
    fingerprint: str  # of the data when the stage started
    config: TrainConfig
    student_spec: StudentSpec
    accelerator: Accelerator


@dataclass
class Teacher:
    """The frozen FP32 teacher variant."""

    folder: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


@dataclass
class Student:
    """The student being trained and how it was initialised (checkpoint_info's `student`)."""

    model: PreTrainedModel
    init_record: dict


@dataclass
class TrainingData:
    """The loaders, and the teacher's logits on the training texts (row i = training text i)."""

    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    teacher_logits: torch.Tensor  # gold training texts, then transfer texts
    transfer: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def check_output(root: Path, args: argparse.Namespace, technique: str) -> Path:
    """The output folder, refused before any work if it is the teacher (or the student's init source)."""
    inputs = [args.teacher]
    kind, _, source = args.student_init.partition(":")
    if kind == "pretrained" and Path(source).expanduser().is_dir():
        inputs.append(str(Path(source).expanduser().resolve()))
    return prepare_output(root, args.output_name, technique=technique, inputs=inputs, overwrite=args.overwrite)


def start_run(args: argparse.Namespace, technique: str) -> KDRun:
    """Guards first (output name, data fingerprint, student shape), then the settings and the device."""
    root = project_root(args.root)
    dest = check_output(root, args, technique)
    return KDRun(root=root, args=args, technique=technique, dest=dest, fingerprint=data_fingerprint(root),
                 config=train_config_from_args(args), student_spec=student_spec_from_args(args),
                 accelerator=Accelerator(cpu=args.cpu or not torch.cuda.is_available()))


def load_teacher(run: KDRun, attn_implementation: str | None = None) -> Teacher:
    """The frozen FP32 teacher variant (refused if made from other data than the run's)."""
    folder = fp32_variant_dir(run.root, run.args.teacher, role="teacher", data=run.fingerprint)
    model, tokenizer = load_fp32_model(folder, attn_implementation)
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(folder, model, tokenizer)


def new_student(run: KDRun, teacher: Teacher, **overrides) -> Student:
    """The student of the run's shape and init, its new weights drawn with --seed."""
    set_seed(run.config.seed)
    return Student(*build_student(run.student_spec, teacher.model, **overrides))


def training_texts(root: Path, args: argparse.Namespace, seed: int) -> tuple[list[str], list[int], dict]:
    """Gold training sentences, then the transfer set's (label UNLABELLED: soft labels only)."""
    train = read_split(root, "train")
    texts, labels = train["text"].tolist(), train["label"].tolist()
    if not args.transfer_set:
        return texts, labels, {"name": None, "size": 0}
    extra, transfer = load_transfer_set(root, args.transfer_set, args.shared_data, args.transfer_size, seed)
    return texts + extra, labels + [UNLABELLED] * len(extra), transfer


def training_data(run: KDRun, teacher: Teacher) -> TrainingData:
    """Gold and transfer sentences, the teacher's (cached) logits on them, and the loaders."""
    root, args, config = run.root, run.args, run.config
    texts, labels, transfer = training_texts(root, args, config.seed)
    logits, cache = teacher_logits(root, teacher.folder, teacher.model, teacher.tokenizer, texts,
                                   data_fingerprint=run.fingerprint, accelerator=run.accelerator,
                                   batch_size=args.eval_batch_size)
    return TrainingData(
        train_loader=make_loader(teacher.tokenizer, texts, labels, batch_size=config.batch_size, shuffle=True,
                                 seed=config.seed),
        val_loader=split_loader(root, "val", teacher.tokenizer, batch_size=args.eval_batch_size),
        test_loader=split_loader(root, "test", teacher.tokenizer, batch_size=args.eval_batch_size),
        teacher_logits=torch.from_numpy(logits).to(run.accelerator.device), transfer=transfer, cache=cache)


def soft_label_loss(run: KDRun, data: TrainingData) -> LossFn:
    """Prediction-layer KD against the cached teacher logits (the vanilla stage's whole loss)."""
    return cached_kd_loss_fn(data.teacher_logits, run.args.alpha, run.args.temperature)


def trained_student(run: KDRun, student: Student, teacher: Teacher) -> PreTrainedModel:
    """The trained model as it is saved: unwrapped from the accelerator, the teacher's attention dropout."""
    model = run.accelerator.unwrap_model(student.model)
    # Attention-map dropout is switched off only while distilling attention; the saved config keeps the
    # teacher's value so later fine-tuning (pruning recovery, QAT) behaves like any BERT.
    model.config.attention_probs_dropout_prob = teacher.model.config.attention_probs_dropout_prob
    return model


def evaluate_on_test(run: KDRun, model: PreTrainedModel, data: TrainingData) -> dict:
    """Test-split metrics of the trained student (the val metrics are the training's best epoch)."""
    return evaluate_model(model, run.accelerator.prepare(data.test_loader), run.accelerator)


# ----------------------------------------------------------------------------- saving

def variant_info(run: KDRun, teacher: Teacher, student: Student, data: TrainingData, result: FitResult,
                 test: dict, extra_hyperparameters: dict) -> dict:
    """checkpoint_info.json of a KD student."""
    args = run.args
    teacher_info = read_info(teacher.folder)
    cost = describe_student(run.accelerator.unwrap_model(student.model), teacher.model)
    return {
        "model_name": args.output_name, "technique": run.technique, "source_checkpoint": args.teacher,
        "val_macro_f1": result.best_metrics["macro_f1"], "val_metrics": result.best_metrics,
        "test_metrics": test,
        "teacher_test_macro_f1": (teacher_info.get("test_metrics") or {}).get("macro_f1"),
        "student": {**student.init_record, **spec_dict(run.student_spec), **cost},
        "transfer_set": data.transfer, "train_examples": len(data.train_loader.dataset),
        "hyperparameters": {**describe(run.config), "temperature": args.temperature, "alpha": args.alpha,
                            "student_init": args.student_init, "transfer_set": data.transfer.get("name"),
                            "transfer_size": data.transfer.get("size", 0), **extra_hyperparameters,
                            "config": args.config_values},
        "teacher_logits_cache": data.cache, "data_fingerprint": run.fingerprint,
        "training_log": str(result.log_path), "training": result.summary(),
        "epochs": result.epochs, "steps": result.steps, "best_step": result.best_step,
    }


def runs_table_row(info: dict, created_at: str) -> dict:
    """The run's row in results/distillation_init_comparison.csv."""
    student, transfer = info["student"], info["transfer_set"]
    teacher_test = info["teacher_test_macro_f1"]
    return {"created_at": created_at, "variant": info["model_name"], "technique": info["technique"],
            "init": student["init"], "shape": student["shape"],
            "source_layers": json.dumps(student.get("source_layers")), "transfer_set": transfer.get("name"),
            "transfer_size": transfer.get("size", 0), "epochs": info["epochs"], "steps": info["steps"],
            "encoder_flops_ratio": student["encoder_flops_ratio"], "val_macro_f1": round(info["val_macro_f1"], 4),
            "test_macro_f1": round(info["test_metrics"]["macro_f1"], 4),
            "teacher_test_macro_f1": None if teacher_test is None else round(teacher_test, 4)}


def save_student(run: KDRun, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: dict) -> dict:
    """Save the student as a variant (our label order, training-only parts dropped) and log its row."""
    if not run.accelerator.is_main_process:
        return info
    dest = save_fp32_variant(run.dest, model.cpu(), tokenizer, info)
    table = append_csv_rows(results_dir(run.root) / RUNS_TABLE, [runs_table_row(info, read_info(dest)["created_at"])],
                            RUNS_COLUMNS)
    teacher_test = info["teacher_test_macro_f1"]
    teacher_part = "" if teacher_test is None else f" (teacher test macro F1 {teacher_test:.4f})"
    print(f"{info['model_name']}: {info['student']['shape']}, init {info['student']['init']}, "
          f"{info['student']['encoder_flops_ratio']}x fewer encoder FLOPs/token; val macro F1 "
          f"{info['val_macro_f1']:.4f}, test macro F1 {info['test_metrics']['macro_f1']:.4f}{teacher_part} after "
          f"{info['steps']} steps -> {dest} (row added to {table})")
    return info
