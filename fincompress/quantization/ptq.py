"""INT8 post-training quantization of an FP32 variant for ONNX Runtime (static, calibrated; or the dynamic baseline).

Reads  <root>/checkpoints/<source>/ (an FP32 variant; default the teacher), training sentences
       from <root>/data/train.csv for calibration, val/test for the recorded metrics.
Writes <root>/checkpoints/<source>_ptq_int8/ (`--method static`, default): a QDQ INT8 `model.onnx`
       (encoder Linear weights INT8 per channel, their inputs UINT8 per tensor with ranges calibrated
       on `--calibration-samples` training sentences, embedding tables INT8 per row, head FP32; see
       fincompress/quantization/int8.py), tokenizer, config.json and checkpoint_info.json
       ("format": "onnx": the common loader runs it in onnxruntime), with val and test metrics.
       `--method dynamic` writes <root>/checkpoints/<source>_dynamic_int8/ instead: ORT's one-liner
       `quantize_dynamic(in, out)` with its defaults (ranges measured at run time; no calibration),
       the baseline that shows what calibration and QAT buy.
       `--sensitivity` also writes <root>/results/<variant>_sensitivity.csv: validation macro F1 when
       only one group (embeddings, layer.<i>, head) is left FP32 with all others INT8, and when only it
       is INT8.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import onnx
import pandas as pd

from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.metrics import classification_metrics
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, results_dir
from fincompress.quantization.int8 import (
    add_recipe_arguments,
    all_groups,
    calibration_reader,
    calibration_texts,
    check_recipe_arguments,
    evaluate_and_save,
    export_source,
    onnx_predictions,
    quantize_dynamic_baseline,
    quantize_static_qdq,
    recipe_description,
    recipe_groups,
    resolve_fp32_source,
)

log = logging.getLogger("fincompress.ptq")

CONFIG = {"calibration_samples": 256, "seed": 42}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.quantization.ptq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--method", choices=("static", "dynamic"), default="static",
                        help="static: calibrated QDQ INT8 -> <source>_ptq_int8 (default); dynamic: ORT "
                        "quantize_dynamic with defaults -> <source>_dynamic_int8 (baseline)")
    add_recipe_arguments(parser, CONFIG["calibration_samples"], CONFIG["seed"])
    parser.add_argument("--sensitivity", action="store_true",
                        help="also write results/<variant>_sensitivity.csv (per-group val macro F1; one extra "
                        "quantization + validation pass per group and direction)")
    return parser


def sensitivity_report(root: Path, fp32_path: Path, tokenizer, reader, args, workdir: Path) -> pd.DataFrame:
    """Val macro F1 with one group left FP32 (all others INT8) and with only that group INT8."""
    val = read_split(root, "val")
    texts, labels = val["text"].tolist(), val["label"].to_numpy()
    groups = all_groups(onnx.load(str(fp32_path), load_external_data=False))
    cache = workdir / "calibration_cache.json"  # calibrate once, reuse the ranges for every configuration

    def f1_with(quantized: list[str]) -> float:
        path = quantize_static_qdq(fp32_path, workdir / "sensitivity.onnx", reader, quantized,
                                   args.calibration_method, args.reduce_range, cache_path=cache)
        return classification_metrics(labels, onnx_predictions(path, tokenizer, texts))["macro_f1"]

    fp32 = classification_metrics(labels, onnx_predictions(fp32_path, tokenizer, texts))["macro_f1"]
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
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    check_recipe_arguments(args)
    source = resolve_fp32_source(root, args.source)
    technique = "ptq" if args.method == "static" else "dynamic"
    name = args.output_name or f"{args.source}_{technique}_int8"
    if name == args.source:
        raise FinCompressError("--output-name must differ from --source (the source is never overwritten)")
    with tempfile.TemporaryDirectory(prefix="fincompress-ptq-") as tmp:
        workdir = Path(tmp)
        fp32_path, tokenizer, config, num_parameters = export_source(source, workdir)
        info = {"model_name": name, "source_checkpoint": args.source, "num_parameters": num_parameters}
        if args.method == "dynamic":
            path = quantize_dynamic_baseline(fp32_path, workdir / "int8.onnx")
            info |= {"technique": "INT8 dynamic quantization (ORT quantize_dynamic defaults, no calibration)",
                     "hyperparameters": {"quantize_dynamic": "defaults (weight_type QInt8, per-tensor, all ops)"}}
            return evaluate_and_save(root, name, path, tokenizer, config, info)
        texts = calibration_texts(root, args.calibration_samples, args.seed)
        reader = calibration_reader(tokenizer, texts, args.calibration_method)
        groups = recipe_groups(all_groups(onnx.load(str(fp32_path), load_external_data=False)), args)
        path = quantize_static_qdq(fp32_path, workdir / "int8.onnx", reader, groups, args.calibration_method,
                                   args.reduce_range)
        info |= {"technique": "INT8 post-training static quantization (ORT QDQ, calibrated)",
                 "hyperparameters": recipe_description(args, groups)}
        result = evaluate_and_save(root, name, path, tokenizer, config, info)
        if args.sensitivity:
            frame = sensitivity_report(root, fp32_path, tokenizer, reader, args, workdir)
            out = results_dir(root) / f"{name}_sensitivity.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(out, index=False)
            print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            print(f"wrote {out}")
            result["sensitivity"] = str(out)
        return result


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
