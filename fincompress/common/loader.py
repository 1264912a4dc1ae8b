"""The one loader: any variant folder as a `Predictor` (texts -> class probabilities).

An FP32 variant runs in PyTorch (its Linear shapes rebuilt from the saved weights, so pruned
models with uneven heads load) or, exported once to ONNX, in ONNX Runtime; an ONNX artifact
(INT8) runs in ONNX Runtime. The benchmark, the INT8 stages, the notebooks and the demo all use it,
so every model is tokenized (`encode_texts`) and run in ONNX Runtime (`onnx_session`) one way.

Library code here changes no process-wide state: PyTorch's thread count is set by the entry point
that wants one (the benchmark's and the demo's `main`), torch.onnx logging is quiet only while
exporting.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fincompress.common.data import MAX_LENGTH
from fincompress.common.hardware import cpu_flags  # noqa: F401  (re-exported: callers read the ISA here)
from fincompress.common.hub_models import project_order, reorder_classifier_to_project_labels
from fincompress.common.io import as_user_error, atomic_write, atomic_write_text, content_digest
from fincompress.common.onnx_graph import fuse_attention
from fincompress.common.paths import LABELS, FinCompressError
from fincompress.common.raw_data import is_visible_text
from fincompress.common.variants import ONNX_FILE, folder_problem, read_info

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# What `export_onnx` makes; a cached export with another version (older code) is exported again.
EXPORT_VERSION = "2"  # 2: attention fused
EXPORT_SOURCES = ("model.safetensors", "config.json")  # what an FP32 export is made from (its cache key)


# ----------------------------------------------------------------------------- loading FP32

def fit_linear_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Replace every nn.Linear whose saved weight is smaller (pruned) by one of the saved shape.

    Attention modules get their head count from the new query width, so a model with uneven
    heads per layer (or pruned FFN neurons) rebuilds exactly before its weights are loaded.
    """
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        saved = state_dict.get(f"{name}.weight")
        if saved is None or tuple(saved.shape) == tuple(module.weight.shape):
            continue
        out_features, in_features = saved.shape
        replacement = nn.Linear(in_features, out_features, bias=module.bias is not None,
                                dtype=module.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)
    for module in model.modules():
        if hasattr(module, "attention_head_size") and hasattr(module, "query"):
            module.num_attention_heads = module.query.out_features // module.attention_head_size
            module.all_head_size = module.query.out_features


def load_fp32_model(folder: Path, attn_implementation: str | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an FP32 variant folder (any head/FFN shapes) as a transformers model in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FinCompressError(f"{folder}: model.safetensors is missing; not an FP32 variant")
    try:
        config = AutoConfig.from_pretrained(folder)
        if attn_implementation:
            config._attn_implementation = attn_implementation
        state_dict = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise FinCompressError(f"{folder}: cannot read the checkpoint ({exc}); re-create the variant") from exc
    model = AutoModelForSequenceClassification.from_config(config)
    try:
        fit_linear_shapes(model, state_dict)
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # a tensor whose shape config.json cannot explain
        raise FinCompressError(f"{folder}: weights do not match config.json ({str(exc).splitlines()[0][:160]}); "
                               "re-create the variant") from exc
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise FinCompressError(f"{folder}: weights do not match the config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    reorder_classifier_to_project_labels(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- ONNX

@contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise logger `name` to `level` for the duration of the block, then restore its old level."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def export_onnx(model: PreTrainedModel, path: Path) -> Path:
    """Export a BERT classifier to ONNX (dynamic batch and sequence) with the dynamo exporter, each
    layer's attention fused into one MultiHeadAttention (`onnx_graph.fuse_attention`).

    The graph keeps the exporter's `pkg.torch.onnx.name_scopes` node metadata: the INT8 stages map
    MatMul nodes to torch modules through it. FP32 and INT8 variants run the same fused attention,
    so their ONNX Runtime rows differ only in what quantization changes.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = {k: torch.ones(2, 16, dtype=torch.long) for k in ONNX_INPUTS}
    example["token_type_ids"].zero_()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # The exporter reports every decomposition step at INFO/WARNING: quiet while it runs, restored after.
    with quiet_logger("torch.onnx"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # No file argument: the exporter hands back the graph in memory, written once after the fusion.
        program = torch.onnx.export(model, (), None, kwargs=example, input_names=list(ONNX_INPUTS),
                                    output_names=["logits"], dynamic_shapes={k: {0: batch, 1: seq}
                                                                             for k in ONNX_INPUTS},
                                    dynamo=True, verbose=False)
    graph = program.model_proto
    if not getattr(model.config, "is_decoder", False):  # the fusion masks padding keys only, no causal mask
        fuse_attention(graph, attention_head_size(model.config))
    try:
        atomic_write(path, lambda tmp: onnx.save_model(graph, str(tmp)))
    except OSError as exc:
        raise as_user_error(exc, f"cannot export {path}") from None
    return path


def attention_head_size(config: PretrainedConfig) -> int:
    """Width of one attention head (BERT: hidden_size / num_attention_heads; pruning removes heads, not width)."""
    return int(config.hidden_size // config.num_attention_heads)


def export_record_path(onnx_path: Path) -> Path:
    """Where `ensure_onnx_export` records which code made a cached export (beside it)."""
    return Path(onnx_path).with_name("export.json")


def _file_stamp(path: Path) -> dict:
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def export_record(onnx_path: Path) -> dict | None:
    """The record of a cached export, or None when it has none (older code) or the export file changed since
    (overwritten, truncated). Reads the small record, never the model itself."""
    try:
        record = json.loads(export_record_path(onnx_path).read_text(encoding="utf-8"))
        unchanged = record["file"] == _file_stamp(onnx_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if unchanged and isinstance(record, dict) else None


def export_version(onnx_path: Path) -> str | None:
    """The EXPORT_VERSION a cached export was made with (None: no valid record, see `export_record`)."""
    record = export_record(onnx_path)
    return record.get("export_version") if record else None


def export_source_digest(folder: Path) -> str:
    """What an FP32 export is made from, by content (weights and config): restored weights that keep an
    older mtime (`cp -p`, `rsync -a`, `tar`) still change it."""
    return content_digest([Path(folder) / name for name in EXPORT_SOURCES], length=64)


# ORT fusions the sessions leave out. SkipLayerNormFusion turns Add + LayerNormalization into the
# SkipLayerNormalization contrib kernel, which measured 4-7x slower than the pair it replaces on an
# AMD EPYC Zen 5 (onnxruntime 1.32, 40 x 768: 128 vs 19 us on 1 thread, 65 vs 14 us on 2) and cost
# FinBERT's shape 1.0 ms (FP32) and 1.1 ms (INT8) per sentence; FP32 logits are unchanged (4e-7).
DISABLED_ORT_OPTIMIZERS = ("SkipLayerNormFusion",)


def onnx_session(onnx_path: Path, threads: int | None = None, spinning: bool = True,
                 optimized_model_path: Path | None = None, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with ORT's graph optimisations (but `DISABLED_ORT_OPTIMIZERS`): the one
    place sessions are made.

    threads: intra-op threads (None: ONNX Runtime's default). spinning=False stops idle ORT workers
    from spinning (fair timing of several models in one process). optimized_model_path: also write
    the graph ORT actually runs (after its fusions), to inspect what it fused. profile_prefix: record
    ONNX Runtime's per-node profile (written by `session.end_profiling()`, file named from the prefix).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_ORT_OPTIMIZERS))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        reason = " ".join(str(exc).split())  # ORT's messages span lines; the user gets one
        raise FinCompressError(f"{onnx_path}: cannot open the ONNX model ({reason}); re-create the variant") from exc


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int = MAX_LENGTH,
                 pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize a batch the way every runtime is fed: int64 arrays `ONNX_INPUTS`, truncated to
    `max_length`, padded to the batch's longest text (or to exactly `pad_to` tokens)."""
    padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True,
                                                                              "max_length": max_length}
    encoded = tokenizer(list(texts), truncation=True, return_tensors="np", return_token_type_ids=True, **padding)
    return {k: encoded[k].astype(np.int64) for k in ONNX_INPUTS}


# ----------------------------------------------------------------------------- the one loader

class Predictor:
    """Maps texts to class probabilities in project order, whatever the variant is.

    `encode` tokenizes (numpy int64 arrays); `logits` runs the model on an encoded batch (the
    part the benchmark times); `predict_proba` does both in batches.
    """

    runtime: str

    def __init__(self, folder: Path, tokenizer: PreTrainedTokenizerBase, info: dict, max_length: int = MAX_LENGTH):
        self.folder = Path(folder)
        self.name = self.folder.name
        self.tokenizer = tokenizer
        self.info = info
        self.max_length = max_length
        # Post-hoc temperature scaling fitted on the validation split (checkpoint_info.json "calibration");
        # 1.0 when the variant was never calibrated. It changes probabilities, never the argmax.
        self.temperature = calibration_temperature(info)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = list(texts)
        if not texts or not all(map(is_visible_text, texts)):
            raise FinCompressError("every text must be a non-empty string (with a visible character)")
        return encode_texts(self.tokenizer, texts, self.max_length)

    def logits(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        texts = list(texts)
        chunks = []
        for start in range(0, len(texts), batch_size):
            logits = self.logits(self.encode(texts[start:start + batch_size]))
            chunks.append(self.probabilities(logits))
        return np.concatenate(chunks) if chunks else np.zeros((0, len(LABELS)), dtype=np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities from this variant's logits, with its calibration temperature applied."""
        return softmax(logits, self.temperature)


def calibration_temperature(info: dict) -> float:
    """The temperature a variant's probabilities are divided by (1.0 when it was not calibrated)."""
    calibration = info.get("calibration") or {}
    temperature = calibration.get("temperature", 1.0) if isinstance(calibration, dict) else 1.0
    if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature <= 0:
        raise FinCompressError(f"checkpoint_info.json calibration.temperature must be a positive number, "
                               f"not {temperature!r}; re-run the calibration")
    return float(temperature)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (float64 inside, so tiny probabilities keep their digits)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


class TorchPredictor(Predictor):
    runtime = "torch"

    def __init__(self, folder: Path, info: dict, attn_implementation: str | None = None):
        model, tokenizer = load_fp32_model(folder, attn_implementation)
        super().__init__(folder, tokenizer, info)
        self.model = model

    @torch.inference_mode()
    def logits(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: torch.from_numpy(v) for k, v in encoded.items()}
        return self.model(**inputs).logits.float().numpy()


class OnnxPredictor(Predictor):
    runtime = "onnxruntime"

    def __init__(self, folder: Path, info: dict, onnx_path: Path, threads: int | None = None, spinning: bool = True,
                 profile_prefix: str | None = None):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        super().__init__(folder, tokenizer, info)
        self.onnx_path = Path(onnx_path)
        self.session = onnx_session(onnx_path, threads, spinning, profile_prefix=profile_prefix)
        self.input_names = [i.name for i in self.session.get_inputs()]
        dims = self.session.get_outputs()[0].shape
        self.declared_classes = dims[-1] if dims else None  # an int when the graph states it (else a name)
        config_path = Path(folder) / "config.json"
        order = project_order(AutoConfig.from_pretrained(folder)) if config_path.is_file() else None
        self.order = order if order and order != list(range(len(LABELS))) else None

    def logits(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        outputs = self.session.run(None, {k: encoded[k] for k in self.input_names})[0]
        return outputs[:, self.order] if self.order else outputs


def onnx_cache_path(folder: Path) -> Path:
    """Where the FP32 ONNX export of an FP32 variant is cached (beside its weights)."""
    return Path(folder) / "onnx" / ONNX_FILE


def ensure_onnx_export(folder: Path) -> Path:
    """Export an FP32 variant to ONNX once; export again when the sha256 of the weights and config it was made
    from differs (whatever the mtimes say), or it was made by older code (another EXPORT_VERSION)."""
    folder = Path(folder)
    path = onnx_cache_path(folder)
    source = export_source_digest(folder)
    record = export_record(path) if path.is_file() else None
    if not record or record.get("export_version") != EXPORT_VERSION or record.get("source") != source:
        model, _ = load_fp32_model(folder)
        export_onnx(model, path)
        atomic_write_text(export_record_path(path), json.dumps(
            {"export_version": EXPORT_VERSION, "file": _file_stamp(path), "source": source,
             "source_files": list(EXPORT_SOURCES)}))
    return path


def variant_runtimes(folder: Path) -> list[str]:
    """Runtimes a variant can be measured in: FP32 in both, an ONNX artifact only in ORT."""
    return ["onnxruntime"] if read_info(folder).get("format") == "onnx" else ["torch", "onnxruntime"]


def load_variant(path: str | os.PathLike, runtime: str | None = None, threads: int | None = None,
                 ort_spinning: bool = True, ort_profile_prefix: str | None = None) -> Predictor:
    """The one loader: a variant folder as a Predictor (texts -> probabilities).

    runtime: None picks the variant's native runtime (torch for FP32, onnxruntime for ONNX
    artifacts); "onnxruntime" on an FP32 variant exports it to ONNX first (cached).
    threads: ONNX Runtime intra-op threads of this model's session. PyTorch's thread count is
    process-wide: the entry point sets it (`torch.set_num_threads`), never the loader.
    ort_spinning=False stops idle ONNX Runtime threads from spinning (fair timing of several models
    in one process). ort_profile_prefix: record ONNX Runtime's per-node profile (see `onnx_session`).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FinCompressError(f"variant folder {folder} does not exist")
    problem = folder_problem(folder)
    if problem:
        raise FinCompressError(f"variant {folder.name}: {problem}")
    info = read_info(folder)
    runtimes = variant_runtimes(folder)
    runtime = runtime or runtimes[0]
    if runtime not in runtimes:
        raise FinCompressError(f"{folder.name} ({info.get('format')}) cannot run in {runtime}; it runs in {runtimes}")
    if runtime == "torch":
        return check_contract(TorchPredictor(folder, info))
    onnx_path = folder / ONNX_FILE if info.get("format") == "onnx" else ensure_onnx_export(folder)
    if not onnx_path.is_file():
        raise FinCompressError(f"{folder}: {ONNX_FILE} is missing; re-create the variant")
    return check_contract(OnnxPredictor(folder, info, onnx_path, threads, spinning=ort_spinning,
                                        profile_prefix=ort_profile_prefix))


CONTRACT_PROBE = "Operating profit rose ."  # one short text every variant must score as len(LABELS) logits


def check_contract(predictor: Predictor) -> Predictor:
    """Refuse (one line) a variant that loads but breaks the contract: ONNX inputs other than ONNX_INPUTS (or
    no input_ids), or outputs that are not one row of len(LABELS) logits (project order) per text."""
    name = predictor.name
    inputs = getattr(predictor, "input_names", None)
    if inputs is not None and ("input_ids" not in inputs or set(inputs) - set(ONNX_INPUTS)):
        raise FinCompressError(f"variant {name}: its ONNX inputs are {inputs}, not (a subset with input_ids of) "
                               f"{list(ONNX_INPUTS)}; re-create the variant")
    declared = getattr(predictor, "declared_classes", None)
    logits = predictor.logits(predictor.encode([CONTRACT_PROBE, CONTRACT_PROBE + " Shares fell ."]))
    shape = (2, declared) if isinstance(declared, int) and declared != len(LABELS) else np.shape(logits)
    if len(shape) != 2 or shape != (2, len(LABELS)):
        shown = "(batch, " + ", ".join(str(d) for d in shape[1:]) + ")"
        raise FinCompressError(f"variant {name}: its outputs have shape {shown}, not (batch, {len(LABELS)}): the "
                               f"contract is {len(LABELS)} classes ({', '.join(LABELS)}) in that order; "
                               "re-create the variant")
    return predictor
