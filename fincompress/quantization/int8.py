"""INT8 building blocks shared by PTQ and QAT: one recipe (`recipe.Int8Recipe`), one deployment path.

The deployment format is an ONNX Runtime QDQ graph (`model.onnx` in a variant folder with
`"format": "onnx"`), run by the common loader in onnxruntime, where the CPU execution provider
fuses DequantizeLinear -> MatMul into `MatMulIntegerToFloat` (integer GEMM, float output).

What the static recipes quantize (types, symmetry and ranges come from the recipe):
- the encoder's Linear layers (Q, K, V, attention output, FFN in, FFN out: the MatMuls with a
  constant weight, 97% of the multiply-adds): weights per output channel; their input activations
  per tensor, range calibrated on training sentences (or learned in QAT). Q, K and V read one tensor
  and share one QuantizeLinear;
- the embedding tables are *stored* INT8 with one scale per row (weight-only; the looked-up rows
  are dequantized, everything after the lookup runs in FP32). Without this the FP32 word embeddings
  alone (30522 x 768) are 21% of FinBERT's FP32 size;
- FP32 stays: the embedding LayerNorm, the attention core after Q/K/V (one MultiHeadAttention
  kernel per layer in the export, or inside the QAttention kernel that also runs the integer Q/K/V
  GEMM: QK^T and PV are activation x activation, ~1% of the multiply-adds at our sentence lengths,
  and quantizing the softmax output costs accuracy for no measurable speed),
  every LayerNorm, GELU and residual stream (the quantized copy of a tensor feeds only the MatMul;
  see `keep_residuals_fp32`), and the pooler + classifier head unless the recipe quantizes it.
QAT fake-quantizes exactly these tensors with the same formulas (`fake_quant.py`).

Every model here is exported, evaluated and run through the common loader (`export_onnx`,
`ensure_onnx_export`, `OnnxPredictor`), so the F1 an INT8 stage records is the F1 the benchmark measures.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from fincompress.common import cli
from fincompress.common.data import MAX_LENGTH, read_split
from fincompress.common.hub_models import set_project_labels
from fincompress.common.loader import OnnxPredictor, cpu_flags, encode_texts, quiet_logger
from fincompress.common.metrics import metrics_from_probabilities
from fincompress.common.onnx_graph import node_metadata, node_module
from fincompress.common.paths import FinCompressError
from fincompress.common.variants import ONNX_FILE, add_output_arguments, save_variant, variant_name
from fincompress.quantization.fake_quant import integer_rows
from fincompress.quantization.graph_rewrites import (
    FUSED_MODULES,
    bert_fusions,
    fold_bias_adds,
    fuse_quantized_attention,
    fuse_shared_input_linears,
)
from fincompress.quantization.recipe import (
    CALIBRATION_METHODS,
    DEFAULT_RECIPE,
    EMBEDDINGS,
    HEAD,
    Int8Recipe,
    resolve_recipe,
)

log = logging.getLogger("fincompress.quantization")

# checkpoint_info.json "technique" of each INT8 stage (prepare_output compares it before replacing a variant).
TECHNIQUES = {
    "ptq": "INT8 post-training static quantization (ORT QDQ, calibrated)",
    "dynamic": "INT8 dynamic quantization (ORT quantize_dynamic defaults, no calibration)",
    "qat": "INT8 quantization-aware training (fake quant + STE, ORT QDQ deployment)",
}
EVALUATED_SPLITS = ("val", "test")
_LAYER_RE = re.compile(r"\.layer\.(\d+)\.")


# ----------------------------------------------------------------------------- data

def calibration_texts(root: Path, count: int, seed: int) -> list[str]:
    """`count` training sentences drawn at random (seeded): what the deployed model will see."""
    if count < 1:
        raise FinCompressError(f"--calibration-samples must be >= 1 (got {count})")
    train = read_split(root, "train")
    return train.sample(n=min(count, len(train)), random_state=seed)["text"].tolist()


def evaluation_splits(root: Path) -> dict[str, pd.DataFrame]:
    """The splits an INT8 variant is scored on, read when the stage starts (a missing file fails early)."""
    return {split: read_split(root, split) for split in EVALUATED_SPLITS}


class TextCalibrationReader(CalibrationDataReader):
    """Feeds tokenized sentences to ORT's calibrator, `batch_size` sentences per call.

    fixed_shape: pad every batch to the longest calibration sentence. ORT's histogram calibrators
    (percentile, entropy) stack the outputs of all calls and need equal shapes; min/max does not,
    and then no padding positions enter the ranges. Tokenized by the loader's `encode_texts`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1,
                 fixed_shape: bool = False):
        texts = list(texts)
        pad_to = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]) \
            if fixed_shape else None
        self.batches = [encode_texts(tokenizer, texts[i:i + batch_size], pad_to=pad_to)
                        for i in range(0, len(texts), batch_size)]
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def __len__(self) -> int:
        return len(self.batches)

    def rewind(self) -> None:
        self.position = 0


def calibration_reader(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                       recipe: Int8Recipe) -> TextCalibrationReader:
    return TextCalibrationReader(tokenizer, texts, recipe.calibration_batch_size,
                                 fixed_shape=recipe.calibration_method != "minmax")


# ----------------------------------------------------------------------------- which nodes

@dataclass(frozen=True)
class LinearNode:
    """A MatMul/Gemm with a constant weight in the exported graph, and the torch Linear it came from."""

    node: str
    module: str
    input_tensor: str
    group: str
    modules: tuple[str, ...] = ()  # every module a fused MatMul stands for (Q, K, V); else (module,)

    def __post_init__(self) -> None:
        if not self.modules:
            object.__setattr__(self, "modules", (self.module,))


def module_group(module: str) -> str:
    """Sensitivity group of a torch module name: layer.<i>, head or embeddings."""
    match = _LAYER_RE.search(f".{module}.")
    if match:
        return f"layer.{match.group(1)}"
    return EMBEDDINGS if ".embeddings." in f".{module}." else HEAD


def linear_nodes(model: onnx.ModelProto) -> list[LinearNode]:
    """The Linear MatMul/Gemm nodes, mapped to torch modules through the exporter's name scopes."""
    initializers = {i.name for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in initializers:
            continue
        module = node_module(node)
        if module is None:
            raise FinCompressError(f"ONNX node {node.name} has no torch name scope: the graph was not made by "
                                   "fincompress.common.loader.export_onnx; delete the source's onnx/ folder so it "
                                   "is exported again")
        fused = node_metadata(node, FUSED_MODULES)
        modules = tuple(fused.split(",")) if fused else (module,)
        found.append(LinearNode(node.name, modules[0], node.input[0], module_group(modules[0]), modules))
    return found


def ordered_groups(groups: Iterable[str]) -> list[str]:
    """embeddings, layer.0, layer.1, ..., head (whichever are present)."""
    groups = set(groups)
    layers = sorted((g for g in groups if g.startswith("layer.")), key=lambda g: int(g.split(".")[1]))
    return [g for g in (EMBEDDINGS, *layers, HEAD) if g in groups]


def all_groups(model: onnx.ModelProto) -> list[str]:
    """Every group of an exported graph (the embeddings always exist)."""
    return ordered_groups({EMBEDDINGS, HEAD, *(n.group for n in linear_nodes(model))})


# ----------------------------------------------------------------------------- quantization

def quantize_static_qdq(fp32_path: Path, out_path: Path, reader: CalibrationDataReader | None, groups: Iterable[str],
                        recipe: Int8Recipe, activation_ranges: dict[str, tuple[float, float]] | None = None,
                        cache_path: Path | None = None) -> Path:
    """Static QDQ INT8 of the Linear nodes in `groups` (+ INT8 embedding storage if "embeddings" is in it).

    Types, symmetry, per-channel, reduce_range, the calibration method and the graph rewrites
    (graph_rewrites.py: Q/K/V fusion, bias folding, integer attention, ORT's BERT fusions) come from `recipe`.
    activation_ranges: {torch module name: (rmin, rmax)} forced on the Linear inputs (QAT's, not calibrated).
    cache_path: ORT calibration cache; when it exists calibration is not run again (sensitivity runs).
    """
    if not recipe.is_static:
        raise ValueError(f"recipe {recipe.name!r} is not a static recipe")
    groups = set(groups)
    # ORT's quantizer advises quant_pre_process on the root logger; we skip it on purpose: the export
    # already carries shapes, and pre-processing renames nodes (losing the torch name scopes we select by).
    with tempfile.TemporaryDirectory(prefix="fincompress-q-") as tmp, quiet_logger(""):
        model = bert_fusions(fp32_path) if recipe.transformer_optimizer else onnx.load(str(fp32_path))
        nodes = [n for n in linear_nodes(model) if n.group in groups]
        if recipe.fuse_qkv:
            fuse_shared_input_linears(model, {n.node: n.module for n in nodes})
            nodes = [n for n in linear_nodes(model) if n.group in groups]
        prepared = save_onnx(model, Path(tmp) / "prepared.onnx")
        extra = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],  # float output: MatMulIntegerToFloat
                 # contrib ops (the export's MultiHeadAttention, ORT's fusions) carry no output types: float
                 "DefaultTensorType": onnx.TensorProto.FLOAT,
                 **recipe.ort_extra_options()}
        if activation_ranges:
            extra["TensorQuantOverrides"] = tensor_overrides(nodes, activation_ranges)
        staged = Path(tmp) / "q.onnx"
        if nodes:
            if reader is not None and hasattr(reader, "rewind"):
                reader.rewind()
            quantize_static(str(prepared), str(staged), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=[n.node for n in nodes],
                            per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                            activation_type=recipe.ort_activation_type, weight_type=recipe.ort_weight_type,
                            calibrate_method=recipe.ort_calibration_method, extra_options=extra,
                            calibration_cache_path=str(cache_path) if cache_path else None)
            quantized = onnx.load(str(staged))
        else:
            quantized = model
        keep_residuals_fp32(quantized)
        if EMBEDDINGS in groups:
            quantize_embedding_storage(quantized)
        if recipe.fold_bias:
            fold_bias_adds(quantized)
        if recipe.quantized_attention:
            fuse_quantized_attention(quantized)
        save_onnx(quantized, out_path)
    return out_path


def tensor_overrides(nodes: Sequence[LinearNode], ranges: dict[str, tuple[float, float]]) -> dict:
    """ORT TensorQuantOverrides pinning each quantized Linear input to a given (rmin, rmax)."""
    by_tensor: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for node in nodes:
        by_tensor[node.input_tensor] += [ranges[m] for m in node.modules if m in ranges]
    missing = [m for n in nodes for m in n.modules if m not in ranges]
    if missing:
        raise FinCompressError(f"no learned activation range for {missing[:3]}: QAT and PTQ disagree on the "
                               "quantized layers")
    # Q, K and V read the same tensor: their observers saw the same values; take the union to be safe.
    return {tensor: [{"rmin": np.float32(min(r[0] for r in rs)), "rmax": np.float32(max(r[1] for r in rs))}]
            for tensor, rs in by_tensor.items()}


def keep_residuals_fp32(model: onnx.ModelProto) -> int:
    """Let only the quantized MatMuls read the quantized copy of an activation.

    ORT's QDQ quantizer hands DequantizeLinear(QuantizeLinear(x)) to *every* consumer of x, so the
    residual Add / LayerNorm would also see rounded values (and run an extra DequantizeLinear).
    QAT fake-quantizes only the Linear inputs; this makes the deployed graph do the same.
    Returns the number of rewired inputs.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    return rewired


def quantize_embedding_storage(model: onnx.ModelProto) -> list[str]:
    """Store every embedding table (Gather from a 2-D float initializer) as INT8 with one scale per row.

    Gather(table, ids) becomes Cast(Gather(table_int8, ids)) * Gather(row_scales, ids): only the
    looked-up rows are dequantized, so lookup cost does not grow with the vocabulary. The integers are
    `fake_quant.integer_rows` of the table: exactly the grid QAT's fake-quantized embeddings train on.
    Returns the quantized table names.
    """
    tables = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    new_nodes, done = [], []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in tables:
            new_nodes.append(node)
            continue
        name = node.input[0]
        if name not in done:
            table = torch.from_numpy(numpy_helper.to_array(tables[name]).astype(np.float32))
            integers, scales, _ = integer_rows(table, Int8Recipe.embedding_qrange(), symmetric=True)
            model.graph.initializer.remove(tables[name])
            model.graph.initializer.extend([
                numpy_helper.from_array(integers.numpy().astype(np.int8), f"{name}_int8"),
                numpy_helper.from_array(scales.numpy().reshape(-1, 1).astype(np.float32), f"{name}_row_scale")])
            done.append(name)
        out, ids = node.output[0], node.input[1]
        new_nodes += [
            helper.make_node("Gather", [f"{name}_int8", ids], [f"{out}_int8"], name=f"{node.name}_int8", axis=0),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], name=f"{node.name}_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [f"{name}_row_scale", ids], [f"{out}_scale"], name=f"{node.name}_scale", axis=0),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{node.name}_dequantize"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return done


def quantize_dynamic_graph(fp32_path: Path, out_path: Path, recipe: Int8Recipe) -> Path:
    """ORT's `quantize_dynamic(in, out)` with the dynamic recipe's weight settings (ORT's defaults)."""
    if recipe.is_static:
        raise ValueError(f"recipe {recipe.name!r} is a static recipe")
    with tempfile.TemporaryDirectory(prefix="fincompress-q-") as tmp, quiet_logger(""):
        # ORT writes `<input>-inferred.onnx` beside its input: a private copy keeps that out of the source
        # variant's folder, where another run quantizing the same source would delete it under this one.
        private = Path(tmp) / "fp32.onnx"
        shutil.copyfile(fp32_path, private)
        staged = Path(tmp) / "q.onnx"
        quantize_dynamic(str(private), str(staged), weight_type=recipe.ort_weight_type,
                         per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                         extra_options=recipe.ort_extra_options())
        save_onnx(onnx.load(str(staged)), out_path)
    return out_path


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


# ----------------------------------------------------------------------------- evaluation and saving

def stage_variant_files(folder: Path, onnx_path: Path, tokenizer: PreTrainedTokenizerBase,
                        config: PretrainedConfig) -> Path:
    """Write what an INT8 variant folder holds (model.onnx, tokenizer, config.json) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, folder / ONNX_FILE)
    tokenizer.save_pretrained(folder)
    set_project_labels(config)  # the graph's outputs are in project order (the source was)
    config.save_pretrained(folder)
    return folder


def staged_metrics(folder: Path, splits: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Metrics of the model in a staged variant folder on each split, measured as the benchmark
    measures them: the loader's OnnxPredictor (same tokenisation, same ORT session settings)."""
    predictor = OnnxPredictor(folder, {}, Path(folder) / ONNX_FILE)
    return {split: metrics_from_probabilities(frame["label"].to_numpy(),
                                              predictor.predict_proba(frame["text"].tolist()))
            for split, frame in splits.items()}


def evaluate_and_save(dest: Path, staged: Path, info: dict, splits: dict[str, pd.DataFrame]) -> dict:
    """Score the staged INT8 variant on val and test, then save it as `dest` (atomically)."""
    metrics = staged_metrics(staged, splits)
    val, test = metrics["val"], metrics["test"]
    info = {"format": "onnx", "runtime": "onnxruntime", **info, "val_macro_f1": val["macro_f1"],
            "val_metrics": val, "test_metrics": test}
    saved = save_variant(dest, lambda folder: shutil.copytree(staged, folder, dirs_exist_ok=True), info)
    print(f"{dest.name}: val macro F1 {val['macro_f1']:.4f}, test macro F1 {test['macro_f1']:.4f} "
          f"(accuracy {test['accuracy']:.4f}) -> {saved}")
    return {**info, "path": str(saved)}


# ----------------------------------------------------------------------------- flags -> recipe

def add_recipe_arguments(parser: argparse.ArgumentParser, *, calibration_samples: int, seed: int | None,
                         recipes: Sequence[str], default_recipe: str | None = DEFAULT_RECIPE) -> None:
    """Flags PTQ and QAT share: the source, the output, the recipe and its switches, calibration data."""
    parser.add_argument("--source", type=variant_name, default="teacher",
                        help="FP32 variant under checkpoints/ to quantize (default teacher)")
    add_output_arguments(parser, None)
    parser.add_argument("--recipe", choices=list(recipes), default=default_recipe,
                        help=f"INT8 recipe (fincompress/quantization/recipe.py); default {DEFAULT_RECIPE}")
    parser.add_argument("--calibration-samples", type=cli.positive_int, default=calibration_samples,
                        help=f"training sentences used to calibrate activation ranges (default {calibration_samples}; "
                        "a small number is the smoke setting)")
    parser.add_argument("--calibration-method", choices=sorted(CALIBRATION_METHODS), default=None,
                        help="how activation ranges are set from the calibration data: minmax (observed range), "
                        "percentile (99.999th, clips outliers) or entropy (KL-optimal threshold); default: the "
                        "recipe's (minmax)")
    parser.add_argument("--fp32-embeddings", action="store_true",
                        help="keep the embedding tables FP32 instead of INT8 storage with per-row scales "
                        "(bigger file: the word table is 21%% of FinBERT's FP32 size)")
    parser.add_argument("--quantize-head", action="store_true",
                        help="also quantize the pooler and classifier (FP32 by default: accuracy cliff, no speed gain)")
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights: avoids int16 saturation of the U8S8 kernel on x86 CPUs without VNNI")
    if seed is not None:  # training stages get --seed from add_train_arguments
        parser.add_argument("--seed", type=cli.non_negative_int, default=seed,
                            help=f"random seed of the calibration sample (default {seed})")


STATIC_ONLY_FLAGS = ("calibration_method", "fp32_embeddings", "quantize_head")


def recipe_from_args(args: argparse.Namespace) -> tuple[Int8Recipe, dict]:
    """The recipe the flags ask for (`--recipe`, then the switches), and how it was chosen."""
    recipe, choice = resolve_recipe(args.recipe, cpu_flags())
    if not recipe.is_static:
        given = [f"--{flag.replace('_', '-')}" for flag in STATIC_ONLY_FLAGS if getattr(args, flag)]
        if given:
            raise FinCompressError(f"{', '.join(given)} apply to static recipes, not {recipe.name!r} "
                                   "(ORT's quantize_dynamic defaults); drop them or choose a static --recipe")
    changes = {"reduce_range": recipe.reduce_range or args.reduce_range}
    if recipe.is_static:
        changes |= {"quantize_embeddings": recipe.quantize_embeddings and not args.fp32_embeddings,
                    "quantize_head": recipe.quantize_head or args.quantize_head,
                    "calibration_method": args.calibration_method or recipe.calibration_method}
    return recipe.replace(**changes), choice


def recipe_hyperparameters(recipe: Int8Recipe, choice: dict, groups: Sequence[str], args: argparse.Namespace) -> dict:
    """What checkpoint_info.json records about how a variant was quantized."""
    values = {"recipe": recipe.as_dict(), "recipe_choice": choice, "quantized_groups": list(groups),
              "config": args.config_values}
    if recipe.is_static:
        values |= {"calibration_samples": args.calibration_samples, "seed": args.seed}
    return values
