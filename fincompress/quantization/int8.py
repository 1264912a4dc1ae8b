"""INT8 building blocks shared by PTQ and QAT: one deployment recipe, so the two are comparable.

The deployment format is an ONNX Runtime QDQ graph (`model.onnx` in a variant folder with
`"format": "onnx"`), run by the common loader in onnxruntime, where the CPU execution provider
fuses DequantizeLinear -> MatMul into `MatMulIntegerToFloat` (integer GEMM, float output).

What is quantized (the recipe, `RECIPE` below):
- the encoder's Linear layers (Q, K, V, attention output, FFN in, FFN out: the MatMuls with a
  constant weight, 97% of the multiply-adds): weights INT8 per output channel, symmetric;
  their input activations UINT8 per tensor, asymmetric, range calibrated on training sentences;
- the embedding tables are *stored* INT8 with one scale per row (weight-only; the looked-up
  rows are dequantized, everything after the lookup runs in FP32). Without this the FP32 word
  embeddings alone (30522 x 768) are 21% of FinBERT's FP32 size;
- FP32 stays: the embedding LayerNorm, the attention score MatMuls (QK^T and PV: activation x
  activation, ~1% of the multiply-adds at our sentence lengths, and quantizing the softmax output
  costs accuracy for no measurable speed), every LayerNorm, GELU, softmax and residual stream
  (the quantized copy of a tensor feeds only the MatMul; see `keep_residuals_fp32`), and the
  pooler + classifier head.
QAT fake-quantizes exactly these tensors with the same formulas (`fake_quant.py`).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from fincompress.common.data import MAX_LENGTH, data_fingerprint, read_split
from fincompress.common.hub_models import set_project_labels
from fincompress.common.loader import ONNX_INPUTS, export_onnx, load_fp32_model
from fincompress.common.metrics import classification_metrics
from fincompress.common.paths import FinCompressError, variant_dir
from fincompress.common.variants import ONNX_FILE, read_info, save_variant
from fincompress.quantization.fake_quant import int8_weight_range

log = logging.getLogger("fincompress.quantization")

# The deployment recipe PTQ and QAT share (see the module docstring for the reasons).
RECIPE = {
    "format": "QDQ",                  # QOperator is legacy; ORT's CPU kernels are tuned for QDQ graphs
    "weight_type": "int8",            # symmetric, per output channel
    "activation_type": "uint8",       # asymmetric, per tensor: U8S8 is MLAS's fast integer GEMM on x86
                                      # (int8 activations measured 6x slower on this AVX2 host)
    "per_channel": True,
    "reduce_range": False,            # 7-bit weights only help non-VNNI CPUs that saturate (opt-in flag)
    "quantized_groups": "layer.*",    # encoder layers; "embeddings" (int8 storage) and "head" are switches
    "embeddings_int8_storage": True,
    "calibration_batch_size": 1,      # one sentence per call: no padding positions in the ranges
}
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
EMBEDDINGS, HEAD = "embeddings", "head"
_LAYER_RE = re.compile(r"\.layer\.(\d+)\.")


# ----------------------------------------------------------------------------- sources and data

def resolve_fp32_source(root: Path, name: str) -> Path:
    """The folder of an FP32 variant to quantize; a clear error if it is missing or not FP32."""
    folder = variant_dir(root, name)
    if not folder.is_dir():
        raise FinCompressError(f"source variant {name!r} not found at {folder}: train it first "
                               f"(the teacher: python -m fincompress.teacher.train_teacher --root {root})")
    info = read_info(folder)
    if info.get("format", "pytorch") != "pytorch" or not (folder / "model.safetensors").is_file():
        raise FinCompressError(f"source variant {name!r} is {info.get('format')!r}, not an FP32 PyTorch "
                               "checkpoint: quantize the FP32 model it was made from instead")
    return folder


def calibration_texts(root: Path, count: int, seed: int) -> list[str]:
    """`count` training sentences drawn at random (seeded): what the deployed model will see."""
    if count < 1:
        raise FinCompressError(f"--calibration-samples must be >= 1 (got {count})")
    train = read_split(root, "train")
    return train.sample(n=min(count, len(train)), random_state=seed)["text"].tolist()


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
           pad_to: int | None = None) -> dict[str, np.ndarray]:
    padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True, "max_length": MAX_LENGTH}
    encoded = tokenizer(list(texts), truncation=True, return_tensors="np", return_token_type_ids=True, **padding)
    return {k: encoded[k].astype(np.int64) for k in ONNX_INPUTS}


class TextCalibrationReader(CalibrationDataReader):
    """Feeds tokenized sentences to ORT's calibrator, `batch_size` sentences per call.

    fixed_shape: pad every batch to the longest calibration sentence. ORT's histogram calibrators
    (percentile, entropy) stack the outputs of all calls and need equal shapes; min/max does not,
    and then no padding positions enter the ranges.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                 batch_size: int = RECIPE["calibration_batch_size"], fixed_shape: bool = False):
        texts = list(texts)
        pad_to = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]) \
            if fixed_shape else None
        self.batches = [encode(tokenizer, texts[i:i + batch_size], pad_to) for i in range(0, len(texts), batch_size)]
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


def calibration_reader(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], method: str) -> TextCalibrationReader:
    return TextCalibrationReader(tokenizer, texts, fixed_shape=method != "minmax")


# ----------------------------------------------------------------------------- which nodes

@dataclass(frozen=True)
class LinearNode:
    """A MatMul/Gemm with a constant weight in the exported graph, and the torch Linear it came from."""

    node: str
    module: str
    input_tensor: str
    group: str


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
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes is None:
            raise FinCompressError(f"ONNX node {node.name} has no torch name scope: export the source with "
                                   "fincompress.common.variants.export_onnx (dynamo exporter)")
        names = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
        module = names[-2] if len(names) >= 2 else names[-1]
        found.append(LinearNode(node.name, module, node.input[0], module_group(module)))
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
                        method: str = "minmax", reduce_range: bool = RECIPE["reduce_range"],
                        activation_ranges: dict[str, tuple[float, float]] | None = None,
                        cache_path: Path | None = None) -> Path:
    """Static QDQ INT8 of the Linear nodes in `groups` (+ INT8 embedding storage if "embeddings" is in it).

    activation_ranges: {torch module name: (rmin, rmax)} forced on the Linear inputs (QAT's learned
    ranges, through ORT's TensorQuantOverrides) instead of the calibrated ones.
    cache_path: ORT calibration cache; when it exists calibration is not run again (sensitivity runs).
    """
    groups = set(groups)
    model = onnx.load(str(fp32_path))
    nodes = [n for n in linear_nodes(model) if n.group in groups]
    if method not in CALIBRATION_METHODS:
        raise FinCompressError(f"unknown calibration method {method!r}; choose from {sorted(CALIBRATION_METHODS)}")
    extra = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],  # float output: MatMulIntegerToFloat
             "WeightSymmetric": True, "ActivationSymmetric": False}
    if activation_ranges:
        extra["TensorQuantOverrides"] = tensor_overrides(nodes, activation_ranges)
    with tempfile.TemporaryDirectory(prefix="fincompress-q-") as tmp, quiet_root_logger():
        staged = Path(tmp) / "q.onnx"
        if nodes:
            if reader is not None and hasattr(reader, "rewind"):
                reader.rewind()
            quantize_static(str(fp32_path), str(staged), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=[n.node for n in nodes],
                            per_channel=RECIPE["per_channel"], reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CALIBRATION_METHODS[method], extra_options=extra,
                            calibration_cache_path=str(cache_path) if cache_path else None)
            quantized = onnx.load(str(staged))
        else:
            quantized = model
        keep_residuals_fp32(quantized)
        if EMBEDDINGS in groups:
            quantize_embedding_storage(quantized, reduce_range)
        save_onnx(quantized, out_path)
    return out_path


@contextmanager
def quiet_root_logger():
    """ORT's quantizer logs advice on the root logger (run quant_pre_process); we skip it on purpose.

    quant_pre_process = symbolic shape inference + ORT's basic graph optimisations + shape
    inference. The dynamo export already carries shapes, the nodes we quantize are plain MatMuls
    selected by name (pre-processing would rename/fuse nodes and lose the torch name scopes that
    map them to modules), and ORT applies its fusions when the session opens, after QDQ insertion.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def tensor_overrides(nodes: Sequence[LinearNode], ranges: dict[str, tuple[float, float]]) -> dict:
    """ORT TensorQuantOverrides pinning each quantized Linear input to a given (rmin, rmax)."""
    by_tensor: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for node in nodes:
        if node.module in ranges:
            by_tensor[node.input_tensor].append(ranges[node.module])
    missing = [n.module for n in nodes if n.module not in ranges]
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


def quantize_embedding_storage(model: onnx.ModelProto, reduce_range: bool = False) -> list[str]:
    """Store every embedding table (Gather from a 2-D float initializer) as INT8 with one scale per row.

    Gather(table, ids) becomes Gather(table_int8, ids) * Gather(row_scales, ids): only the looked-up
    rows are dequantized, so lookup cost does not grow with the vocabulary. Symmetric, same formula
    as the per-channel weights (`fake_quant.weight_scales`). Returns the quantized table names.
    """
    tables = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    qmin, qmax = int8_weight_range(reduce_range)
    new_nodes, done = [], []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in tables:
            new_nodes.append(node)
            continue
        name = node.input[0]
        if name not in done:
            table = numpy_helper.to_array(tables[name]).astype(np.float32)
            scales = np.abs(table).max(axis=1, keepdims=True) / qmax
            scales[scales == 0] = 1.0
            quantized = np.clip(np.rint(table / scales), qmin, qmax).astype(np.int8)
            model.graph.initializer.remove(tables[name])
            model.graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                            numpy_helper.from_array(scales.astype(np.float32), f"{name}_row_scale")])
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


def quantize_dynamic_baseline(fp32_path: Path, out_path: Path) -> Path:
    """The one-liner a user tries first: `quantize_dynamic(in, out)` with ORT's defaults."""
    with tempfile.TemporaryDirectory(prefix="fincompress-q-") as tmp, quiet_root_logger():
        staged = Path(tmp) / "q.onnx"
        quantize_dynamic(str(fp32_path), str(staged), weight_type=QuantType.QInt8)
        save_onnx(onnx.load(str(staged)), out_path)
    return out_path


def save_onnx(model: onnx.ModelProto, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def export_fp32(model, workdir: Path) -> Path:
    """The FP32 ONNX graph (dynamo exporter) that PTQ, QAT and the dynamic baseline start from."""
    return export_onnx(model, Path(workdir) / "fp32.onnx")


def export_source(source_folder: Path, workdir: Path) -> tuple[Path, PreTrainedTokenizerBase, PretrainedConfig, int]:
    """Export an FP32 variant: (onnx path, tokenizer, config, parameter count)."""
    from fincompress.common.variants import count_parameters

    model, tokenizer = load_fp32_model(source_folder)
    return export_fp32(model, workdir), tokenizer, model.config, count_parameters(model)


# ----------------------------------------------------------------------------- evaluation and saving

def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictions(path: Path, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                     batch_size: int = 32) -> np.ndarray:
    """Predicted class per text from an ONNX model in onnxruntime (outputs in project label order)."""
    session = onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    predictions = []
    for start in range(0, len(texts), batch_size):
        encoded = encode(tokenizer, texts[start:start + batch_size])
        predictions.append(session.run(None, {k: encoded[k] for k in names})[0].argmax(-1))
    return np.concatenate(predictions)


def evaluate_onnx(path: Path, tokenizer: PreTrainedTokenizerBase, root: Path, split: str) -> dict:
    frame = read_split(root, split)
    return classification_metrics(frame["label"].to_numpy(), onnx_predictions(path, tokenizer, frame["text"].tolist()))


def save_int8_variant(root: Path, name: str, onnx_path: Path, tokenizer: PreTrainedTokenizerBase,
                      config: PretrainedConfig, info: dict) -> Path:
    """Write checkpoints/<name>/ (model.onnx, tokenizer, config.json, checkpoint_info.json) atomically."""
    set_project_labels(config)  # the graph's outputs are in project order (the source was)

    def write(folder: Path) -> None:
        shutil.copyfile(onnx_path, folder / ONNX_FILE)
        tokenizer.save_pretrained(folder)
        config.save_pretrained(folder)

    info = {"format": "onnx", "runtime": "onnxruntime", "data_fingerprint": data_fingerprint(root), **info}
    return save_variant(variant_dir(root, name), write, info)


def evaluate_and_save(root: Path, name: str, onnx_path: Path, tokenizer: PreTrainedTokenizerBase,
                      config: PretrainedConfig, info: dict) -> dict:
    """Measure val/test macro F1 of the INT8 graph in onnxruntime, then save the variant."""
    val = evaluate_onnx(onnx_path, tokenizer, root, "val")
    test = evaluate_onnx(onnx_path, tokenizer, root, "test")
    info = {**info, "val_macro_f1": val["macro_f1"], "val_metrics": val, "test_metrics": test}
    dest = save_int8_variant(root, name, onnx_path, tokenizer, config, info)
    print(f"{name}: val macro F1 {val['macro_f1']:.4f}, test macro F1 {test['macro_f1']:.4f} "
          f"(accuracy {test['accuracy']:.4f}), {read_info(dest)['size_mb']:.1f} MB -> {dest}")
    return {**info, "path": str(dest)}


def add_recipe_arguments(parser, calibration_samples: int, seed: int | None) -> None:
    """Flags PTQ and QAT share: the source, calibration data and the recipe switches."""
    parser.add_argument("--source", default="teacher",
                        help="FP32 variant under checkpoints/ to quantize (default teacher)")
    parser.add_argument("--output-name", help="variant folder to write (default <source>_<technique>_int8)")
    parser.add_argument("--calibration-samples", type=int, default=calibration_samples,
                        help=f"training sentences used to calibrate activation ranges (default {calibration_samples}; "
                        "a small number is the smoke setting)")
    parser.add_argument("--calibration-method", choices=sorted(CALIBRATION_METHODS), default="minmax",
                        help="how activation ranges are set from the calibration data: minmax (observed range), "
                        "percentile (99.999th, clips outliers) or entropy (KL-optimal threshold); default minmax")
    parser.add_argument("--fp32-embeddings", action="store_true",
                        help="keep the embedding tables FP32 instead of INT8 storage with per-row scales "
                        "(bigger file: the word table is 21%% of FinBERT's FP32 size)")
    parser.add_argument("--quantize-head", action="store_true",
                        help="also quantize the pooler and classifier (FP32 by default: accuracy cliff, no speed gain)")
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights: avoids int16 saturation of the U8S8 kernel on x86 CPUs without VNNI")
    if seed is not None:  # training stages get --seed from add_train_arguments
        parser.add_argument("--seed", type=int, default=seed, help="random seed (calibration sample)")


def check_recipe_arguments(args) -> None:
    """Reject bad numbers before any slow export or training starts."""
    if args.calibration_samples < 1:
        raise FinCompressError(f"--calibration-samples must be >= 1 (got {args.calibration_samples})")


def recipe_groups(available: Iterable[str], args) -> list[str]:
    """The groups the recipe quantizes: every encoder layer, embeddings unless --fp32-embeddings,
    the head only with --quantize-head."""
    available = list(available)
    layers = [g for g in available if g.startswith("layer.")]
    return ([EMBEDDINGS] if not args.fp32_embeddings else []) + layers + ([HEAD] if args.quantize_head else [])


def recipe_description(args, groups: Sequence[str]) -> dict:
    return {**RECIPE, "embeddings_int8_storage": not args.fp32_embeddings, "reduce_range": args.reduce_range,
            "quantized_groups": list(groups), "calibration_samples": args.calibration_samples,
            "calibration_method": args.calibration_method, "seed": args.seed}
