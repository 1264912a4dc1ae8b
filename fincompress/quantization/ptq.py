"""INT8 post-training quantization of an FP32 variant for ONNX Runtime (static, calibrated; or the dynamic baseline).

Reads  <root>/checkpoints/<source>/ (an FP32 variant; default the teacher) and its cached FP32 ONNX
       export <source>/onnx/model.onnx (made by the common loader if missing), training sentences from
       <root>/data/train.csv for calibration, val/test for the recorded metrics.
Writes <root>/checkpoints/<source>_ptq_int8/ (a static recipe, the default): a QDQ INT8 `model.onnx`
       (encoder Linear weights INT8 per channel, their inputs UINT8 per tensor with ranges calibrated
       on `--calibration-samples` training sentences, embedding tables INT8 per row, head FP32; see
       fincompress/quantization/recipe.py and int8.py), tokenizer, config.json and checkpoint_info.json
       ("format": "onnx": the common loader runs it in onnxruntime) with val and test metrics measured
       through that loader, the recipe (`hyperparameters.recipe`), and the CPU instruction sets that
       chose it (`hyperparameters.recipe_choice`).
       `--recipe dynamic` (alias `--method dynamic`) writes <root>/checkpoints/<source>_dynamic_int8/
       instead: ORT's one-liner `quantize_dynamic(in, out)` with its defaults (ranges measured at run
       time; no calibration), the baseline that shows what calibration and QAT buy.
       `--sensitivity` also writes <root>/results/<variant>_sensitivity.csv: validation macro F1 when
       only one group (embeddings, layer.<i>, head) is left FP32 with all others INT8, and when only it
       is INT8.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import onnx
import pandas as pd
from transformers import AutoConfig, AutoTokenizer

from fincompress.common import cli, io
from fincompress.common.data import data_fingerprint
from fincompress.common.io import atomic_write_text
from fincompress.common.loader import ensure_onnx_export, load_variant
from fincompress.common.metrics import metrics_from_probabilities
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir
from fincompress.common.variants import ONNX_FILE, fp32_variant_dir, prepare_output, read_info
from fincompress.quantization.int8 import (
    TECHNIQUES,
    add_recipe_arguments,
    all_groups,
    calibration_reader,
    calibration_texts,
    evaluate_and_save,
    evaluation_splits,
    quantize_dynamic_graph,
    quantize_static_qdq,
    recipe_from_args,
    recipe_hyperparameters,
    stage_variant_files,
    staged_metrics,
)
from fincompress.quantization.recipe import DEFAULT_RECIPE, RECIPES, Int8Recipe

log = logging.getLogger("fincompress.ptq")

CONFIG = {"calibration_samples": 256, "seed": 42}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.quantization.ptq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--method", choices=("static", "dynamic"), default=None,
                        help="static: a calibrated QDQ recipe -> <source>_ptq_int8 (default); dynamic: the same as "
                        "--recipe dynamic -> <source>_dynamic_int8 (baseline)")
    add_recipe_arguments(parser, calibration_samples=CONFIG["calibration_samples"], seed=CONFIG["seed"],
                         recipes=list(RECIPES), default_recipe=None)  # None: not given (`--method` may choose)
    parser.add_argument("--sensitivity", action="store_true",
                        help="also write results/<variant>_sensitivity.csv (per-group val macro F1; one extra "
                        "quantization + validation pass per group and direction)")
    return parser


def reconcile_method(args: argparse.Namespace) -> None:
    """`--method` is the older name of the static/dynamic choice: fold it into `--recipe`."""
    if args.method == "dynamic" and args.recipe not in (None, "dynamic"):
        raise FinCompressError(f"--method dynamic contradicts --recipe {args.recipe}; give one of them")
    if args.method == "static" and args.recipe == "dynamic":
        raise FinCompressError("--method static contradicts --recipe dynamic; give one of them")
    if args.recipe is None:
        args.recipe = "dynamic" if args.method == "dynamic" else DEFAULT_RECIPE


def default_output_name(source: str, recipe: Int8Recipe) -> str:
    return f"{source}_ptq_int8" if recipe.is_static else f"{source}_dynamic_int8"


def sensitivity_report(val: pd.DataFrame, source: Path, fp32_path: Path, staged: Path, reader, recipe: Int8Recipe,
                       workdir: Path) -> pd.DataFrame:
    """Val macro F1 with one group left FP32 (all others INT8) and with only that group INT8.

    `staged` is the saved variant's folder in the making (tokenizer, config): each configuration is
    quantized into a copy of it and scored through the loader, like the variant itself.
    """
    groups = all_groups(onnx.load(str(fp32_path), load_external_data=False))
    cache = workdir / "calibration_cache.json"  # calibrate once, reuse the ranges for every configuration
    trial = workdir / "sensitivity"
    shutil.copytree(staged, trial, ignore=shutil.ignore_patterns(ONNX_FILE))  # tokenizer and config

    def f1_with(quantized: list[str]) -> float:
        quantize_static_qdq(fp32_path, trial / ONNX_FILE, reader, quantized, recipe, cache_path=cache)
        return staged_metrics(trial, {"val": val})["val"]["macro_f1"]

    fp32 = metrics_from_probabilities(val["label"].to_numpy(), load_variant(source, runtime="onnxruntime")
                                      .predict_proba(val["text"].tolist()))["macro_f1"]
    everything = f1_with(groups)
    rows = [{"group": "(none: FP32 source)", "macro_f1_only_this_fp32": fp32, "macro_f1_only_this_int8": fp32},
            {"group": "(all groups INT8)", "macro_f1_only_this_fp32": everything,
             "macro_f1_only_this_int8": everything}]
    for group in groups:
        rows.append({"group": group, "macro_f1_only_this_fp32": f1_with([g for g in groups if g != group]),
                     "macro_f1_only_this_int8": f1_with([group])})
        log.info("sensitivity %s: %s", group, rows[-1])
    frame = pd.DataFrame(rows)
    frame["drop_vs_fp32_only_this_int8"] = fp32 - frame["macro_f1_only_this_int8"]
    frame["gain_vs_all_int8_only_this_fp32"] = frame["macro_f1_only_this_fp32"] - everything
    return frame


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    fingerprint = data_fingerprint(root)  # the data this run reads; saving refuses if it changes meanwhile
    reconcile_method(args)
    recipe, choice = recipe_from_args(args)
    if args.sensitivity and not recipe.is_static:
        raise FinCompressError("--sensitivity measures a static recipe's groups; drop it for the dynamic recipe")
    source = fp32_variant_dir(root, args.source, data=fingerprint)
    name = args.output_name or default_output_name(args.source, recipe)
    technique = TECHNIQUES["ptq" if recipe.is_static else "dynamic"]
    dest = prepare_output(root, name, technique=technique, inputs=[args.source], overwrite=args.overwrite)
    # Before any work: the INT8 variant (and its temporary copy) is smaller than the FP32 weights it is made from.
    io.check_writable(dest.parent, need_bytes=io.tree_size(source / "model.safetensors"))
    with io.file_system_errors(f"cannot make {dest}"):
        return quantize(args, root, source, dest, recipe, choice, fingerprint)


def quantize(args: argparse.Namespace, root: Path, source: Path, dest: Path, recipe: Int8Recipe, choice: dict,
             fingerprint: str) -> dict:
    """Quantize `source` with `recipe`, score it through the loader and save it as `dest`."""
    name, technique = dest.name, TECHNIQUES["ptq" if recipe.is_static else "dynamic"]
    splits = evaluation_splits(root)
    texts = calibration_texts(root, args.calibration_samples, args.seed) if recipe.is_static else []
    tokenizer, config = AutoTokenizer.from_pretrained(source), AutoConfig.from_pretrained(source)
    fp32_path = ensure_onnx_export(source)  # the loader's cached export: the graph the benchmark runs in FP32
    info = {"model_name": name, "technique": technique, "source_checkpoint": args.source,
            "num_parameters": read_info(source)["num_parameters"], "data_fingerprint": fingerprint}
    with tempfile.TemporaryDirectory(prefix="fincompress-ptq-") as tmp:
        workdir = Path(tmp)
        if recipe.is_static:
            reader = calibration_reader(tokenizer, texts, recipe)
            groups = recipe.quantized_groups(all_groups(onnx.load(str(fp32_path), load_external_data=False)))
            int8_path = quantize_static_qdq(fp32_path, workdir / "int8.onnx", reader, groups, recipe)
        else:
            groups = ["all ops onnxruntime quantizes by default"]
            int8_path = quantize_dynamic_graph(fp32_path, workdir / "int8.onnx", recipe)
        staged = stage_variant_files(workdir / "variant", int8_path, tokenizer, config)
        info["hyperparameters"] = recipe_hyperparameters(recipe, choice, groups, args)
        result = evaluate_and_save(dest, staged, info, splits)
        if args.sensitivity:
            frame = sensitivity_report(splits["val"], source, fp32_path, staged, reader, recipe, workdir)
            out = atomic_write_text(results_dir(root) / f"{name}_sensitivity.csv", frame.to_csv(index=False))
            print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print(f"wrote {out}")
            result["sensitivity"] = str(out)
        return result


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
