"""INT8 quantization-aware training: fine-tune an FP32 variant under fake quantization, deploy like PTQ.

Reads  <root>/checkpoints/<source>/ (an FP32 variant; default the teacher) and <root>/data/*.csv.
Writes <root>/checkpoints/<source>_qat_int8/: the same ORT QDQ INT8 deployment format as
       `fincompress.quantization.ptq` (model.onnx, tokenizer, config.json, checkpoint_info.json with
       "format": "onnx", the recipe, val and test metrics measured through the common loader), and a
       training curve <root>/logs/<source>_qat_int8_<time>.csv.

Fake quantization sits on exactly the tensors PTQ quantizes, with the types and ranges of the same
static recipe (fincompress/quantization/recipe.py, `--recipe`): every encoder Linear weight (per
output channel) and its input (per tensor, range from a moving-average min/max observer), the
embedding tables (INT8 per row) unless `--fp32-embeddings`, the head only with `--quantize-head`.
Gradients pass through the straight-through estimator. The observers are frozen after
`--observer-warmup-steps` optimiser steps (at most half the run), so the rest of training adapts the
weights to fixed activation grids.

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
from fincompress.common.data import data_fingerprint, split_loader
from fincompress.common.loader import export_onnx, load_fp32_model
from fincompress.common.paths import FinCompressError, add_root_argument, project_root
from fincompress.common.training import (
    TrainConfig,
    add_eval_batch_argument,
    add_train_arguments,
    describe,
    fit,
    planned_steps,
    train_config_from_args,
)
from fincompress.common.variants import count_parameters, fp32_variant_dir, prepare_output
from fincompress.quantization.fake_quant import convert_qat, freeze_observers, prepare_qat
from fincompress.quantization.int8 import (
    TECHNIQUES,
    add_recipe_arguments,
    all_groups,
    calibration_reader,
    calibration_texts,
    evaluate_and_save,
    evaluation_splits,
    module_group,
    ordered_groups,
    quantize_static_qdq,
    recipe_from_args,
    recipe_hyperparameters,
    stage_variant_files,
)
from fincompress.quantization.recipe import EMBEDDINGS, HEAD, RECIPES

log = logging.getLogger("fincompress.qat")

# QAT fine-tunes an already trained model: at a small learning rate, for at least one full epoch
# (two by default) so every training sentence is seen under the frozen activation grids.
DEFAULTS = TrainConfig(epochs=2, lr=1e-5, patience=1)
CONFIG = {"observer_warmup_steps": 50, "observer_averaging_constant": 0.01,
          # With learned ranges ORT's calibration pass still runs (its API needs data) but every
          # quantized range is overridden, so a handful of sentences is enough.
          "calibration_samples": 16}
STATIC_RECIPES = [name for name, recipe in RECIPES.items() if recipe.is_static]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.quantization.qat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    add_recipe_arguments(parser, calibration_samples=CONFIG["calibration_samples"], seed=None,
                         recipes=STATIC_RECIPES)
    parser.add_argument("--observer-warmup-steps", type=cli.positive_int, default=CONFIG["observer_warmup_steps"],
                        help="optimiser steps during which activation ranges are observed; frozen afterwards "
                        f"(default {CONFIG['observer_warmup_steps']}, at most half the run)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="calibrate activation ranges on --calibration-samples sentences at conversion "
                        "instead of using the ranges QAT learned")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present")
    add_eval_batch_argument(parser)
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


def observer_freeze_step(warmup_steps: int, total_steps: int) -> int:
    """The optimiser step after which activation ranges stop moving: the warm-up, at most half the run."""
    return max(1, min(warmup_steps, total_steps // 2))


def observer_freezer(model: nn.Module, freeze_at: int):
    def after_step(step: int) -> None:
        if step == freeze_at:
            count = freeze_observers(model)
            log.info("froze %d activation observers after step %d", count, step)
    return after_step


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    fingerprint = data_fingerprint(root)  # the data this run reads; saving refuses if it changes meanwhile
    config = train_config_from_args(args)
    recipe, choice = recipe_from_args(args)
    source = fp32_variant_dir(root, args.source, data=fingerprint)
    name = args.output_name or f"{args.source}_qat_int8"
    dest = prepare_output(root, name, technique=TECHNIQUES["qat"], inputs=[args.source], overwrite=args.overwrite)
    splits = evaluation_splits(root)
    texts = calibration_texts(root, args.calibration_samples, config.seed)
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    model, tokenizer = load_fp32_model(source)
    groups = recipe.quantized_groups(torch_groups(model))
    linears, embeddings = modules_to_fake_quantize(model, groups)
    prepare_qat(model, linears, embeddings, recipe, CONFIG["observer_averaging_constant"])
    train = split_loader(root, "train", tokenizer, batch_size=config.batch_size, shuffle=True, seed=config.seed)
    val = split_loader(root, "val", tokenizer, batch_size=args.eval_batch_size)
    freeze_at = observer_freeze_step(args.observer_warmup_steps,
                                     planned_steps(config, len(train), accelerator.num_processes))
    result = fit(model, train, val, config, root=root, run_name=name, accelerator=accelerator,
                 after_step=observer_freezer(model, freeze_at))
    model = accelerator.unwrap_model(model).cpu().eval()
    ranges = convert_qat(model)
    if not accelerator.is_main_process:
        return {}
    with tempfile.TemporaryDirectory(prefix="fincompress-qat-") as tmp:
        workdir = Path(tmp)
        fp32_path = export_onnx(model, workdir / "fp32.onnx")  # the trained weights: new, so exported here
        onnx_groups = recipe.quantized_groups(all_groups(onnx.load(str(fp32_path), load_external_data=False)))
        if onnx_groups != groups:
            raise FinCompressError(f"QAT quantized {groups} but the exported graph has {onnx_groups}")
        reader = calibration_reader(tokenizer, texts, recipe)
        int8_path = quantize_static_qdq(fp32_path, workdir / "int8.onnx", reader, groups, recipe,
                                        activation_ranges=None if args.recalibrate else ranges)
        staged = stage_variant_files(workdir / "variant", int8_path, tokenizer, model.config)
        info = {"model_name": name, "technique": TECHNIQUES["qat"], "source_checkpoint": args.source,
                "num_parameters": count_parameters(model), "data_fingerprint": fingerprint,
                "hyperparameters": {**describe(config), **recipe_hyperparameters(recipe, choice, groups, args),
                                    "observer_warmup_steps": freeze_at,
                                    "observer_averaging_constant": CONFIG["observer_averaging_constant"],
                                    "activation_ranges": "calibrated" if args.recalibrate else "learned in QAT"},
                "fake_quant_val_macro_f1": result.best_metrics["macro_f1"], "steps": result.steps,
                "best_step": result.best_step, "training_log": str(result.log_path)}
        return evaluate_and_save(dest, staged, info, splits)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
