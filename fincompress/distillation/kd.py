"""Knowledge-distillation building blocks shared by the two KD stages.

- the prediction-layer loss `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE` (Hinton 2015);
- the teacher's logits on the training texts, computed once and cached on disk under
  <root>/.cache/teacher_logits/, keyed by the teacher's weights, the data fingerprint and the
  exact texts (a changed teacher, data or transfer set gives a new key: the old file is not used);
- transfer sets: extra unlabelled sentences the teacher labels softly; any validation or test
  sentence in them is refused (FinCompressError), never silently trained on;
- the run both stages share: flags, teacher and student loading, loaders, test evaluation, the
  saved variant and one row per run in results/distillation_init_comparison.csv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fincompress.common.data import MAX_LENGTH, data_fingerprint, make_loader, model_inputs, read_split, split_loader
from fincompress.common.loader import load_fp32_model
from fincompress.common.losses import UNLABELLED, prediction_loss
from fincompress.common.paths import (
    REPO_ROOT,
    FinCompressError,
    add_root_argument,
    project_root,
    results_dir,
    variant_dir,
)
from fincompress.common.raw_data import find_phrasebank_file, normalise_text, parse_phrasebank_file
from fincompress.common.training import (
    FitResult,
    TrainConfig,
    add_train_arguments,
    describe,
    evaluate_model,
    predict_logits,
    train_config_from_args,
)
from fincompress.common.variants import read_info, save_fp32_variant
from fincompress.distillation.student_architecture import (
    add_student_arguments,
    build_student,
    describe_student,
    spec_dict,
    student_spec_from_args,
)

log = logging.getLogger("fincompress.distillation")

CACHE_FOLDER = Path(".cache") / "teacher_logits"
RUNS_TABLE = "distillation_init_comparison.csv"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# Named transfer sets: local release files under --shared-data (any other value is a file path).
NAMED_TRANSFER_SETS = {
    "phrasebank-50agree": "Financial PhraseBank sentences (50% agreement file) that are not in the prepared data",
    "twitter": "financial tweets, twitter_financial_news/sent_train.csv (labels ignored)",
}


# ----------------------------------------------------------------------------- losses

# ----------------------------------------------------------------------------- teacher-logit cache

def file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def teacher_fingerprint(folder: Path) -> str:
    """Content hash of the teacher's weights and config: retraining it changes the key."""
    return file_digest([Path(folder) / "model.safetensors", Path(folder) / "config.json"])


def texts_fingerprint(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def teacher_logits_cache_path(root: Path, teacher_folder: Path, texts: list[str]) -> Path:
    key = hashlib.sha256("|".join([teacher_fingerprint(teacher_folder), data_fingerprint(root),
                                   texts_fingerprint(texts), str(MAX_LENGTH)]).encode()).hexdigest()[:20]
    return root / CACHE_FOLDER / f"{Path(teacher_folder).name}-{key}.npy"


def cached_teacher_logits(root: Path, teacher_folder: Path, teacher: PreTrainedModel,
                          tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 64
                          ) -> tuple[np.ndarray, dict]:
    """The teacher's logits for `texts` (row i = texts[i]), from the cache or computed and cached."""
    path = teacher_logits_cache_path(root, teacher_folder, texts)
    if path.is_file():
        logits = np.load(path)
        if logits.shape[0] == len(texts):
            log.info("teacher logits from cache %s", path)
            return logits, {"path": str(path), "hit": True}
    log.info("computing teacher logits for %d texts -> %s", len(texts), path)
    raw, _, indices = predict_logits(teacher, make_loader(tokenizer, texts, batch_size=batch_size))
    logits = np.empty_like(raw)
    logits[indices] = raw
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.npy")
    np.save(tmp, logits)
    os.replace(tmp, path)  # whole file or nothing: an interrupted run never leaves a truncated cache
    return logits, {"path": str(path), "hit": False}


# ----------------------------------------------------------------------------- transfer sets

def read_transfer_texts(spec: str, shared_data: Path) -> list[str]:
    """Raw sentences of a named transfer set or of a file (.csv with a `text` column, or one per line)."""
    if spec == "phrasebank-50agree":
        return parse_phrasebank_file(find_phrasebank_file(shared_data / "financial_phrasebank", "50"))["text"].tolist()
    if spec == "twitter":
        path = shared_data / "twitter_financial_news" / "sent_train.csv"
    else:
        path = Path(spec)
    if not path.is_file():
        raise FinCompressError(f"transfer set {spec!r}: {path} not found (named sets: {', '.join(NAMED_TRANSFER_SETS)};"
                               " otherwise a .csv with a text column or a .txt with one sentence per line)")
    if path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
        if "text" not in frame.columns:
            raise FinCompressError(f"{path}: no `text` column (columns: {list(frame.columns)})")
        return frame["text"].tolist()
    return path.read_text(encoding="utf-8").splitlines()


def split_keys(root: Path, splits: tuple[str, ...]) -> set[str]:
    return {normalise_text(t).lower() for split in splits for t in read_split(root, split)["text"]}


def load_transfer_set(root: Path, spec: str, shared_data: Path = SHARED_DATA, size: int | None = None,
                      seed: int = 42) -> tuple[list[str], dict]:
    """Normalised, deduplicated transfer sentences; refuses any validation or test sentence.

    Named sets are built from sentences outside the prepared data; a user's file that contains a
    val/test sentence (case-insensitive, whitespace-normalised as in prepare_dataset) is an error:
    training on it would leak the evaluation data into the student.
    """
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
        if size < 0:
            raise FinCompressError(f"--transfer-size must be >= 0, got {size}")
        order = np.random.default_rng(seed).permutation(len(chosen))[:size]
        chosen = [chosen[i] for i in sorted(order)]
    if not chosen:
        raise FinCompressError(f"transfer set {spec!r} has no sentences outside the prepared training data")
    stats = {"name": spec, "size": len(chosen), "read": len(texts), "unique": len(keys),
             "skipped_in_train": len(in_train)}
    return chosen, stats


# ----------------------------------------------------------------------------- the shared run

def add_kd_arguments(parser: argparse.ArgumentParser, *, output_name: str, kd_defaults: dict,
                     train_defaults: TrainConfig, student_defaults: dict | None = None) -> None:
    add_root_argument(parser)
    parser.add_argument("--teacher", default="teacher", help="teacher variant under checkpoints/ (default %(default)s)")
    parser.add_argument("--output-name", default=output_name, help="student variant name (default %(default)s)")
    add_student_arguments(parser, *([student_defaults] if student_defaults else []))
    parser.add_argument("--temperature", type=float, default=kd_defaults["temperature"],
                        help="softmax temperature T of the soft-label loss (default %(default)s)")
    parser.add_argument("--alpha", type=float, default=kd_defaults["alpha"],
                        help="weight of the soft-label term; 1 - alpha weighs cross-entropy (default %(default)s)")
    parser.add_argument("--transfer-set", default=None,
                        help=f"extra unlabelled sentences the teacher labels softly: {' | '.join(NAMED_TRANSFER_SETS)}"
                        " | a .csv (text column) or .txt file; validation/test sentences are refused")
    parser.add_argument("--transfer-size", type=int, default=None,
                        help="use a random sample of this many transfer sentences (default: all)")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA,
                        help="folder of the release files the named transfer sets are read from (default %(default)s)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="batch size for teacher logits and evaluation")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    add_train_arguments(parser, train_defaults)


def check_kd_arguments(args: argparse.Namespace) -> None:
    if args.temperature <= 0:
        raise FinCompressError(f"--temperature must be > 0, got {args.temperature}")
    if not 0 <= args.alpha <= 1:
        raise FinCompressError(f"--alpha must lie in [0, 1], got {args.alpha}")
    if args.max_steps is not None and args.max_steps < 1:
        raise FinCompressError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise FinCompressError("--epochs and --batch-size must be >= 1 and --lr > 0")


@dataclass
class KDRun:
    """Everything a KD stage trains with; built once by `prepare_run`."""

    root: Path
    args: argparse.Namespace
    config: TrainConfig
    accelerator: Accelerator
    teacher_folder: Path
    teacher: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    student: PreTrainedModel
    init_record: dict
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    teacher_logits: torch.Tensor  # row i = training text i (gold training texts, then transfer texts)
    transfer: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def load_teacher(root: Path, name: str, attn_implementation: str | None = None
                 ) -> tuple[Path, PreTrainedModel, PreTrainedTokenizerBase]:
    folder = variant_dir(root, name)
    if not folder.is_dir():
        raise FinCompressError(f"teacher variant {folder} not found: train it first "
                               "(python -m fincompress.teacher.train_teacher) or pass --teacher NAME")
    if read_info(folder).get("format") != "pytorch":
        raise FinCompressError(f"teacher {name!r} is not an FP32 (pytorch) variant")
    model, tokenizer = load_fp32_model(folder, attn_implementation)
    for p in model.parameters():
        p.requires_grad_(False)
    return folder, model, tokenizer


def prepare_run(args: argparse.Namespace, attn_implementation: str | None = None,
                **student_overrides) -> KDRun:
    """Teacher, student, loaders (train + transfer set) and the cached teacher logits."""
    check_kd_arguments(args)
    root = project_root(args.root)
    config = train_config_from_args(args)
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    spec = student_spec_from_args(args)
    teacher_folder, teacher, tokenizer = load_teacher(root, args.teacher, attn_implementation)
    if attn_implementation:
        student_overrides["_attn_implementation"] = attn_implementation
    torch.manual_seed(config.seed)
    student, init_record = build_student(spec, teacher, **student_overrides)
    train = read_split(root, "train")
    texts, labels = train["text"].tolist(), train["label"].tolist()
    transfer: dict = {"name": None, "size": 0}
    if args.transfer_set:
        extra, transfer = load_transfer_set(root, args.transfer_set, args.shared_data, args.transfer_size, config.seed)
        texts, labels = texts + extra, labels + [UNLABELLED] * len(extra)
    logits, cache = cached_teacher_logits(root, teacher_folder, teacher, tokenizer, texts, args.eval_batch_size)
    return KDRun(
        root=root, args=args, config=config, accelerator=accelerator, teacher_folder=teacher_folder,
        teacher=teacher.to(accelerator.device), tokenizer=tokenizer, student=student, init_record=init_record,
        train_loader=make_loader(tokenizer, texts, labels, batch_size=config.batch_size, shuffle=True,
                                 seed=config.seed),
        val_loader=split_loader(root, "val", tokenizer, batch_size=args.eval_batch_size),
        test_loader=split_loader(root, "test", tokenizer, batch_size=args.eval_batch_size),
        teacher_logits=torch.from_numpy(logits).to(accelerator.device), transfer=transfer, cache=cache)


def cached_prediction_loss_fn(run: KDRun):
    """loss_fn for `fit`: prediction-layer KD against the cached teacher logits of each example."""
    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logits = model(**model_inputs(batch)).logits
        return prediction_loss(logits, run.teacher_logits[batch["index"]], batch["labels"],
                               run.args.alpha, run.args.temperature)
    return loss_fn


def append_run_row(root: Path, row: dict) -> Path:
    """One row per distillation run in results/ (written whole, then renamed)."""
    path = results_dir(root) / RUNS_TABLE
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def finish_run(run: KDRun, result: FitResult, technique: str, extra_hyperparameters: dict) -> dict:
    """Test the student, save it as a variant (our label order, training-only parts dropped), log the run."""
    accelerator = run.accelerator
    student = accelerator.unwrap_model(run.student)
    test_metrics = evaluate_model(student, accelerator.prepare(run.test_loader), accelerator)
    # Attention-map dropout is switched off only while distilling attention; the saved config keeps the
    # teacher's value so later fine-tuning (pruning recovery, QAT) behaves like any BERT.
    student.config.attention_probs_dropout_prob = run.teacher.config.attention_probs_dropout_prob
    teacher_info = read_info(run.teacher_folder)
    teacher_test = (teacher_info.get("test_metrics") or {}).get("macro_f1")
    cost = describe_student(student, run.teacher)
    info = {
        "model_name": run.args.output_name, "technique": technique, "source_checkpoint": run.args.teacher,
        "val_macro_f1": result.best_metrics["macro_f1"], "val_metrics": result.best_metrics,
        "test_metrics": test_metrics, "teacher_test_macro_f1": teacher_test,
        "student": {**run.init_record, **spec_dict(student_spec_from_args(run.args)), **cost},
        "transfer_set": run.transfer, "train_examples": len(run.train_loader.dataset),
        "hyperparameters": {**describe(run.config), "temperature": run.args.temperature, "alpha": run.args.alpha,
                            "student_init": run.args.student_init, "transfer_set": run.transfer.get("name"),
                            "transfer_size": run.transfer.get("size", 0), **extra_hyperparameters},
        "teacher_logits_cache": run.cache, "data_fingerprint": data_fingerprint(run.root),
        "training_log": str(result.log_path), "steps": result.steps, "best_step": result.best_step,
    }
    if not accelerator.is_main_process:
        return info
    dest = save_fp32_variant(variant_dir(run.root, run.args.output_name), student.cpu(), run.tokenizer, info)
    table = append_run_row(run.root, {
        "created_at": read_info(dest)["created_at"], "variant": run.args.output_name, "technique": technique,
        "init": run.args.student_init, "shape": run.init_record["shape"],
        "source_layers": json.dumps(run.init_record.get("source_layers")),
        "transfer_set": run.transfer.get("name"), "transfer_size": run.transfer.get("size", 0),
        "steps": result.steps, "encoder_flops_ratio": cost["encoder_flops_ratio"],
        "val_macro_f1": round(info["val_macro_f1"], 4), "test_macro_f1": round(test_metrics["macro_f1"], 4),
        "teacher_test_macro_f1": None if teacher_test is None else round(teacher_test, 4)})
    teacher_part = "" if teacher_test is None else f" (teacher test macro F1 {teacher_test:.4f})"
    print(f"{run.args.output_name}: {run.init_record['shape']}, init {run.args.student_init}, "
          f"{cost['encoder_flops_ratio']}x fewer encoder FLOPs/token; val macro F1 {info['val_macro_f1']:.4f}, "
          f"test macro F1 {test_metrics['macro_f1']:.4f}{teacher_part} after {result.steps} steps -> {dest} "
          f"(row added to {table})")
    return info
