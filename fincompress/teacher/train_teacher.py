"""Fine-tune the teacher (FinBERT by default) on the prepared data.

Reads  <root>/data/{train,val,test}.csv and `--model` (Hub name or local folder).
Writes <root>/checkpoints/<output-name>/ (default `teacher`; transformers layout, our label
       order in config.json, checkpoint_info.json with val and test metrics) and a training
       curve <root>/logs/<output-name>_<time>.csv.

Refuses before training: an output name that is not a plain variant name, or that holds a variant
made by another stage (unless --overwrite); splits that are empty or share sentences (a teacher
evaluated on what it trained on). Refuses to save if the data was re-prepared while it trained.

The checkpoint's own label order is mapped onto ours (ProsusAI/finbert ships 0 positive,
1 negative, 2 neutral): its classification rows are permuted, not re-initialised.
Runs on CPU, one GPU, or data-parallel under `accelerate launch --num_processes N`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from fincompress.common import cli
from fincompress.common.data import SPLITS, data_fingerprint, make_loader, read_split, split_path
from fincompress.common.hub_models import load_pretrained_classifier, set_project_labels
from fincompress.common.paths import FinCompressError, add_root_argument, project_root
from fincompress.common.raw_data import normalise_text
from fincompress.common.training import (
    TrainConfig,
    add_eval_batch_argument,
    add_train_arguments,
    describe,
    evaluate_model,
    fit,
    set_seed,
    train_config_from_args,
)
from fincompress.common.variants import add_output_arguments, prepare_output, save_fp32_variant

log = logging.getLogger("fincompress.train_teacher")

DEFAULT_MODEL = "ProsusAI/finbert"
# FinBERT fine-tuning settings (Araci 2019 use lr 2e-5, batch 32, max length 128 (ours: dynamic padding)).
DEFAULTS = TrainConfig(epochs=4, lr=2e-5)
DEFAULT_OUTPUT = "teacher"
TECHNIQUE = "fine-tuned teacher"


def read_disjoint_splits(root: Path) -> dict[str, pd.DataFrame]:
    """train/val/test, no sentence in two splits (compared as data preparation deduplicates:
    whitespace-normalised, case-insensitive). Overlap means the files were mixed (data re-prepared while
    they were read, or hand-made files): the test score would measure memorisation."""
    frames = {split: read_split(root, split) for split in SPLITS}  # each checked: columns, labels, rows
    keys = {split: {normalise_text(t).lower(): t for t in frame["text"]} for split, frame in frames.items()}
    for first, second in (("train", "test"), ("train", "val"), ("val", "test")):
        shared = keys[first].keys() & keys[second].keys()
        if shared:
            example = keys[first][min(shared)]
            example = example if len(example) <= 60 else example[:57] + "..."
            raise FinCompressError(f"{split_path(root, first)} and {split_path(root, second)} share {len(shared)} "
                                   f"sentence(s) (e.g. {example!r}): the splits must be disjoint; re-run "
                                   "`python -m fincompress.data.prepare_dataset` and wait for it to finish")
    return frames


def build_teacher(model: str, random_init: bool):
    """The model to fine-tune; `random_init` builds it from the config alone (timing runs)."""
    if not random_init:
        return load_pretrained_classifier(model)
    try:
        config = AutoConfig.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    except OSError as exc:
        raise FinCompressError(f"cannot read a config and tokenizer from {model!r} ({exc}); offline, use "
                               "--model ../shared/models/finbert-shape --random-init") from exc
    set_project_labels(config)  # random weights: there is no head order to preserve
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.teacher.train_teacher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"Hub name or local folder to fine-tune (default {DEFAULT_MODEL}; offline: "
                        "../shared/models/all-MiniLM-L6-v2)")
    parser.add_argument("--random-init", action="store_true",
                        help="build --model from its config with random weights (FinBERT-shape timing runs: "
                        "../shared/models/finbert-shape)")
    add_output_arguments(parser, DEFAULT_OUTPUT)
    add_eval_batch_argument(parser)
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    add_train_arguments(parser, DEFAULTS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    config = train_config_from_args(args)
    # Checked before any work: where the teacher goes, and which data it is trained on.
    model_folder = Path(args.model).expanduser()
    dest = prepare_output(root, args.output_name, technique=TECHNIQUE, overwrite=args.overwrite,
                          inputs=[str(model_folder.resolve())] if model_folder.is_dir() else [])
    fingerprint = data_fingerprint(root)  # before reading: a change from here on stops the save
    frames = read_disjoint_splits(root)
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    set_seed(config.seed)  # before the model: a new classification head is initialised from the seed
    model, tokenizer = build_teacher(args.model, args.random_init)

    def loader(split: str, **kwargs):
        return make_loader(tokenizer, frames[split]["text"].tolist(), frames[split]["label"].tolist(), **kwargs)

    train = loader("train", batch_size=config.batch_size, shuffle=True, seed=config.seed)
    val = loader("val", batch_size=args.eval_batch_size)
    test = loader("test", batch_size=args.eval_batch_size)
    result = fit(model, train, val, config, root=root, run_name=args.output_name, accelerator=accelerator)
    model = accelerator.unwrap_model(model)
    test_metrics = evaluate_model(model, accelerator.prepare(test), accelerator)
    info = {
        "model_name": args.output_name, "technique": TECHNIQUE, "source_checkpoint": args.model,
        "val_macro_f1": result.best_metrics["macro_f1"], "val_metrics": result.best_metrics,
        "test_metrics": test_metrics, "hyperparameters": {**describe(config), "random_init": args.random_init,
                                                           "eval_batch_size": args.eval_batch_size,
                                                           "processes": accelerator.num_processes,
                                                           "config": args.config_values},
        "data_fingerprint": fingerprint, "training_log": str(result.log_path),
        "steps": result.steps, "best_step": result.best_step,
    }
    if accelerator.is_main_process:
        dest = save_fp32_variant(dest, model.cpu(), tokenizer, info)
        print(f"val macro F1 {info['val_macro_f1']:.4f}, test macro F1 {test_metrics['macro_f1']:.4f} "
              f"(accuracy {test_metrics['accuracy']:.4f}) after {result.steps} steps -> {dest}")
    accelerator.wait_for_everyone()
    return info


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
