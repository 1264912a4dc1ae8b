"""INT8 quantization-aware training: fine-tune an FP32 variant under fake quantization, deploy like PTQ.

Reads  <root>/checkpoints/<source>/ (an FP32 variant; default the teacher) and <root>/data/*.csv.
Writes <root>/checkpoints/<source>_qat_int8/: the same ORT QDQ INT8 deployment format as
       `fincompress.quantization.ptq` (model.onnx, tokenizer, config.json, checkpoint_info.json with
       "format": "onnx", val and test metrics measured in onnxruntime), and a training curve
       <root>/logs/<source>_qat_int8_<time>.csv.

Fake quantization sits on exactly the tensors PTQ quantizes (fincompress/quantization/int8.py):
every encoder Linear weight (INT8 per output channel, symmetric) and its input (UINT8 per tensor,
range from a moving-average min/max observer), the embedding tables (INT8 per row) unless
`--fp32-embeddings`, the head only with `--quantize-head`. Gradients pass through the
straight-through estimator. The observers are frozen after `--observer-warmup-steps` optimiser
steps, so the rest of training adapts the weights to fixed activation grids.

Conversion: the trained FP32 weights are exported and quantized by the PTQ code path, with each
Linear input pinned to the range QAT learned (ORT TensorQuantOverrides) rather than re-calibrated:
the weights were trained against those grids, so re-calibrating would hand them different rounding
than they learned to tolerate. `--recalibrate` calibrates instead (for comparison).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import onnx
import torch
from accelerate import Accelerator
from torch import nn

from fincompress.common import cli
from fincompress.common.data import split_loader
from fincompress.common.loader import load_fp32_model
from fincompress.common.paths import FinCompressError, add_root_argument, project_root
from fincompress.common.training import TrainConfig, add_train_arguments, describe, fit, train_config_from_args
from fincompress.common.variants import count_parameters
from fincompress.quantization.fake_quant import convert_qat, freeze_observers, prepare_qat
from fincompress.quantization.int8 import (
    EMBEDDINGS,
    HEAD,
    add_recipe_arguments,
    all_groups,
    calibration_reader,
    calibration_texts,
    check_recipe_arguments,
    evaluate_and_save,
    export_fp32,
    module_group,
    ordered_groups,
    quantize_static_qdq,
    recipe_description,
    recipe_groups,
    resolve_fp32_source,
)

log = logging.getLogger("fincompress.qat")

# QAT fine-tunes an already trained model: a few epochs at a small learning rate.
DEFAULTS = TrainConfig(epochs=2, batch_size=32, lr=1e-5, weight_decay=0.01, warmup_fraction=0.1,
                       grad_clip=1.0, patience=1, seed=42)
CONFIG = {"observer_warmup_steps": 50, "observer_averaging_constant": 0.01,
          # With learned ranges ORT's calibration pass still runs (its API needs data) but every
          # quantized range is overridden, so a handful of sentences is enough.
          "calibration_samples": 16, "eval_batch_size": 64}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.quantization.qat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    add_recipe_arguments(parser, CONFIG["calibration_samples"], seed=None)
    parser.add_argument("--observer-warmup-steps", type=int, default=CONFIG["observer_warmup_steps"],
                        help="optimiser steps during which activation ranges are observed; frozen afterwards "
                        f"(default {CONFIG['observer_warmup_steps']}, at most half the run)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="calibrate activation ranges on --calibration-samples sentences at conversion "
                        "instead of using the ranges QAT learned")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    add_train_arguments(parser, DEFAULTS)
    return parser


def torch_groups(model: nn.Module) -> list[str]:
    """The groups of a torch model, named as in the exported graph (`int8.all_groups`)."""
    return ordered_groups({EMBEDDINGS, HEAD, *(module_group(n) for n, m in model.named_modules()
                                               if isinstance(m, nn.Linear))})


def modules_to_fake_quantize(model: nn.Module, groups: list[str]) -> tuple[list[str], list[str]]:
    """(Linear names, Embedding names) in the quantized groups: the tensors PTQ quantizes."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and module_group(n) in groups]
    embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and EMBEDDINGS in groups]
    return linears, embeddings


def observer_freezer(model: nn.Module, freeze_at: int):
    def after_step(step: int) -> None:
        if step == freeze_at:
            count = freeze_observers(model)
            log.info("froze %d activation observers after step %d", count, step)
    return after_step


def planned_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    total = config.epochs * batches_per_epoch
    return min(total, config.max_steps) if config.max_steps is not None else total


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    config = train_config_from_args(args)
    if args.observer_warmup_steps < 1:
        raise FinCompressError(f"--observer-warmup-steps must be >= 1 (got {args.observer_warmup_steps})")
    check_recipe_arguments(args)
    source = resolve_fp32_source(root, args.source)
    name = args.output_name or f"{args.source}_qat_int8"
    if name == args.source:
        raise FinCompressError("--output-name must differ from --source (the source is never overwritten)")
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    model, tokenizer = load_fp32_model(source)
    groups = recipe_groups(torch_groups(model), args)
    linears, embeddings = modules_to_fake_quantize(model, groups)
    prepare_qat(model, linears, embeddings, args.reduce_range, CONFIG["observer_averaging_constant"])
    train = split_loader(root, "train", tokenizer, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    val = split_loader(root, "val", tokenizer, batch_size=CONFIG["eval_batch_size"])
    freeze_at = max(1, min(args.observer_warmup_steps, planned_steps(config, len(train)) // 2))
    result = fit(model, train, val, config, root=root, run_name=name, accelerator=accelerator,
                 after_step=observer_freezer(model, freeze_at))
    model = accelerator.unwrap_model(model).cpu().eval()
    ranges = convert_qat(model)
    if not accelerator.is_main_process:
        return {}
    with tempfile.TemporaryDirectory(prefix="fincompress-qat-") as tmp:
        fp32_path = export_fp32(model, Path(tmp))
        onnx_groups = recipe_groups(all_groups(onnx.load(str(fp32_path), load_external_data=False)), args)
        if onnx_groups != groups:
            raise FinCompressError(f"QAT quantized {groups} but the exported graph has {onnx_groups}")
        reader = calibration_reader(tokenizer, calibration_texts(root, args.calibration_samples, args.seed),
                                    args.calibration_method)
        path = quantize_static_qdq(fp32_path, Path(tmp) / "int8.onnx", reader, groups, args.calibration_method,
                                   args.reduce_range, activation_ranges=None if args.recalibrate else ranges)
        info = {"model_name": name, "source_checkpoint": args.source, "num_parameters": count_parameters(model),
                "technique": "INT8 quantization-aware training (fake quant + STE, ORT QDQ deployment)",
                "hyperparameters": {**describe(config), **recipe_description(args, groups),
                                    "observer_warmup_steps": freeze_at,
                                    "observer_averaging_constant": CONFIG["observer_averaging_constant"],
                                    "activation_ranges": "calibrated" if args.recalibrate else "learned in QAT"},
                "fake_quant_val_macro_f1": result.best_metrics["macro_f1"], "steps": result.steps,
                "best_step": result.best_step, "training_log": str(result.log_path)}
        return evaluate_and_save(root, name, path, tokenizer, model.config, info)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
