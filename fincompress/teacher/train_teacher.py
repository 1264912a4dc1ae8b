"""Fine-tune the teacher (FinBERT by default) on the prepared data.

Reads  <root>/data/{train,val,test}.csv and `--model` (Hub name or local folder).
Writes <root>/checkpoints/<output-name>/ (default `teacher`; transformers layout, our label
       order in config.json, checkpoint_info.json with val and test metrics) and a training
       curve <root>/logs/<output-name>_<time>.csv.

The checkpoint's own label order is mapped onto ours (ProsusAI/finbert ships 0 positive,
1 negative, 2 neutral): its classification rows are permuted, not re-initialised.
Runs on CPU, one GPU, or data-parallel under `accelerate launch --num_processes N`.
"""

from __future__ import annotations

import argparse
import logging

import torch
from accelerate import Accelerator
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, split_loader
from fincompress.common.hub_models import load_pretrained_classifier, set_project_labels
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, variant_dir
from fincompress.common.training import (
    TrainConfig,
    add_train_arguments,
    describe,
    evaluate_model,
    fit,
    train_config_from_args,
)
from fincompress.common.variants import save_fp32_variant

log = logging.getLogger("fincompress.train_teacher")

DEFAULT_MODEL = "ProsusAI/finbert"
# FinBERT fine-tuning settings (Araci 2019 use lr 2e-5, batch 32, max length 128 (ours: dynamic padding)).
DEFAULTS = TrainConfig(epochs=4, batch_size=32, lr=2e-5, weight_decay=0.01, warmup_fraction=0.1,
                       grad_clip=1.0, patience=2, seed=42)


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
    parser.add_argument("--output-name", default="teacher", help="variant folder name under checkpoints/")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="batch size for val/test evaluation")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    add_train_arguments(parser, DEFAULTS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    config = train_config_from_args(args)
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    model, tokenizer = build_teacher(args.model, args.random_init)
    train = split_loader(root, "train", tokenizer, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    val = split_loader(root, "val", tokenizer, batch_size=args.eval_batch_size)
    test = split_loader(root, "test", tokenizer, batch_size=args.eval_batch_size)
    result = fit(model, train, val, config, root=root, run_name=args.output_name, accelerator=accelerator)
    model = accelerator.unwrap_model(model)
    test_metrics = evaluate_model(model, accelerator.prepare(test), accelerator)
    info = {
        "model_name": args.output_name, "technique": "fine-tuned teacher", "source_checkpoint": args.model,
        "val_macro_f1": result.best_metrics["macro_f1"], "val_metrics": result.best_metrics,
        "test_metrics": test_metrics, "hyperparameters": {**describe(config), "random_init": args.random_init,
                                                           "processes": accelerator.num_processes},
        "data_fingerprint": data_fingerprint(root), "training_log": str(result.log_path),
        "steps": result.steps, "best_step": result.best_step,
    }
    if accelerator.is_main_process:
        dest = save_fp32_variant(variant_dir(root, args.output_name), model.cpu(), tokenizer, info)
        print(f"val macro F1 {info['val_macro_f1']:.4f}, test macro F1 {test_metrics['macro_f1']:.4f} "
              f"(accuracy {test_metrics['accuracy']:.4f}) after {result.steps} steps -> {dest}")
    accelerator.wait_for_everyone()
    return info


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
