"""Variant folders: atomic saving, `checkpoint_info.json`, and the one loader.

A variant folder `checkpoints/<name>/` holds either
- an FP32 model in the transformers `save_pretrained` layout (`format: "pytorch"`); a pruned
  model has smaller Linear layers than its config implies, and `load_fp32_model` rebuilds those
  shapes from the saved weights before loading them; or
- an ONNX deployment artifact `model.onnx` (`format: "onnx"`, e.g. INT8), with `config.json`
  for the label names,
plus the tokenizer files and `checkpoint_info.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
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
from fincompress.common.paths import ID2LABEL, LABEL2ID, LABELS, FinCompressError

INFO_FILE = "checkpoint_info.json"
ONNX_FILE = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".data", ".pt")
INFO_FIELDS = ("model_name", "technique", "source_checkpoint", "val_macro_f1", "num_parameters",
               "size_mb", "hyperparameters", "data_fingerprint", "created_at")
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------- saving

def weights_size_mb(folder: Path) -> float:
    """Size on disk of the model weights (not the tokenizer, metadata or the onnx/ export cache), in MB."""
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return round(total / 1e6, 3)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_variant(dest: Path, write: Callable[[Path], None], info: dict) -> Path:
    """Write a variant folder atomically: into a temporary sibling, then rename.

    `write(tmp_folder)` writes the model and tokenizer files. `size_mb` and `created_at` are
    filled in here. If anything fails (or the process is interrupted) no folder named `dest`
    is created and an existing one is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        info = {**info, "size_mb": weights_size_mb(tmp),
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        missing = [f for f in INFO_FIELDS if f not in info]
        if missing:
            raise ValueError(f"checkpoint_info is missing {missing}")
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def save_fp32_variant(dest: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: dict) -> Path:
    """Save an FP32 transformers model as a variant (our label names in its config)."""
    set_project_labels(model.config)
    info = {"format": "pytorch", "num_parameters": count_parameters(model), **info}

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return save_variant(dest, write, info)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_info(folder: Path) -> dict:
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise FinCompressError(f"{folder} is not a FinCompress variant: {INFO_FILE} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FinCompressError(f"{path} is corrupt ({exc}); re-create the variant") from exc


def list_variants(checkpoints: Path) -> list[str]:
    """Names of complete variant folders (temporary folders start with a dot)."""
    if not checkpoints.is_dir():
        return []
    return sorted(p.name for p in checkpoints.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / INFO_FILE).is_file())


def select_variants(root: Path, names: str | None) -> list[str]:
    """`names` (comma-separated) checked against the variants under root, or all of them."""
    available = list_variants(Path(root) / "checkpoints")
    if not names:
        if not available:
            raise FinCompressError(f"no variant folders in {Path(root) / 'checkpoints'}: train the teacher first")
        return available
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    missing = [n for n in chosen if n not in available]
    if missing:
        raise FinCompressError(f"unknown variant(s) {missing}; available: {available}")
    return chosen


# ----------------------------------------------------------------------------- labels

def set_project_labels(config: PretrainedConfig) -> None:
    config.id2label = dict(ID2LABEL)
    config.label2id = dict(LABEL2ID)
    config.num_labels = len(LABELS)


def project_order(config: PretrainedConfig) -> list[int] | None:
    """Indices of the checkpoint's outputs in project order (negative, neutral, positive).

    None when the checkpoint has no real label names (`LABEL_0`...): it is then taken to
    use the project order already. Raises if the names are not our three classes.
    """
    names = {int(i): str(n).lower() for i, n in (config.id2label or {}).items()}
    if not names or all(n.startswith("label_") for n in names.values()):
        return None
    by_name = {n: i for i, n in names.items()}
    if set(by_name) != set(LABELS):
        raise FinCompressError(f"checkpoint labels {sorted(by_name)} are not {list(LABELS)}")
    return [by_name[n] for n in LABELS]


def reorder_classifier_to_project_labels(model: PreTrainedModel) -> bool:
    """Permute the classification head so output i means LABELS[i]; True if it was permuted.

    ProsusAI/finbert ships `0 positive, 1 negative, 2 neutral`: re-using its head means
    moving its rows, not re-initialising it or silently mislabelling.
    """
    order = project_order(model.config)
    if order is None or order == list(range(len(LABELS))):
        set_project_labels(model.config)
        return False
    head = model.classifier if hasattr(model, "classifier") else model.get_output_embeddings()
    with torch.no_grad():
        head.weight.copy_(head.weight[order].clone())
        head.bias.copy_(head.bias[order].clone())
    set_project_labels(model.config)
    return True


# ----------------------------------------------------------------------------- loading FP32

def hub_error(name: str, exc: Exception, local_hint: str) -> FinCompressError:
    return FinCompressError(
        f"could not load {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
        f"If the Hugging Face Hub is unreachable, use a local copy instead: {local_hint}"
    )


def load_pretrained_classifier(name_or_path: str, attn_implementation: str | None = None
                               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hub name or local folder as a 3-class classifier in project label order."""
    local = Path(name_or_path)
    if local.exists() and not (local / "config.json").is_file():
        raise FinCompressError(f"{local} has no config.json: not a transformers model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if project_order(config) is None:  # no class names: a base encoder or a LABEL_i head
            config.num_labels = len(LABELS)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config, **kwargs)
    except FinCompressError:
        raise
    except (OSError, ValueError) as exc:
        raise hub_error(name_or_path, exc, "--model ../shared/models/all-MiniLM-L6-v2 (or any local "
                        "folder with config.json, weights and tokenizer)") from exc
    reorder_classifier_to_project_labels(model)
    return model, tokenizer


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
    fit_linear_shapes(model, state_dict)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise FinCompressError(f"{folder}: weights do not match the config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    reorder_classifier_to_project_labels(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- ONNX

def export_onnx(model: PreTrainedModel, path: Path) -> Path:
    """Export a BERT classifier to ONNX (dynamic batch and sequence) with the dynamo exporter."""
    import logging
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = {k: torch.ones(2, 16, dtype=torch.long) for k in ONNX_INPUTS}
    example["token_type_ids"].zero_()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(tmp), kwargs=example, input_names=list(ONNX_INPUTS),
                          output_names=["logits"], dynamic_shapes={k: {0: batch, 1: seq} for k in ONNX_INPUTS},
                          dynamo=True, external_data=False, verbose=False)
    os.replace(tmp, path)
    return path


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

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = list(texts)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise FinCompressError("every text must be a non-empty string")
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="np", return_token_type_ids=True)
        return {k: encoded[k].astype(np.int64) for k in ONNX_INPUTS}

    def logits(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        texts = list(texts)
        chunks = []
        for start in range(0, len(texts), batch_size):
            logits = self.logits(self.encode(texts[start:start + batch_size]))
            chunks.append(_softmax(logits))
        return np.concatenate(chunks) if chunks else np.zeros((0, len(LABELS)), dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


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

    def __init__(self, folder: Path, info: dict, onnx_path: Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        tokenizer = AutoTokenizer.from_pretrained(folder)
        super().__init__(folder, tokenizer, info)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spinning:  # idle ORT workers otherwise spin and steal the CPU from the next model timed
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise FinCompressError(f"{onnx_path}: cannot open the ONNX model ({exc}); re-create the variant") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
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
    """Export an FP32 variant to ONNX once; re-export if the weights are newer than the export."""
    folder = Path(folder)
    path = onnx_cache_path(folder)
    weights = folder / "model.safetensors"
    if not path.is_file() or path.stat().st_mtime < weights.stat().st_mtime:
        model, _ = load_fp32_model(folder)
        export_onnx(model, path)
    return path


def variant_runtimes(folder: Path) -> list[str]:
    """Runtimes a variant can be measured in: FP32 in both, an ONNX artifact only in ORT."""
    return ["onnxruntime"] if read_info(folder).get("format") == "onnx" else ["torch", "onnxruntime"]


def load_variant(path: str | os.PathLike, runtime: str | None = None, threads: int | None = None,
                 ort_spinning: bool = True) -> Predictor:
    """The one loader: a variant folder as a Predictor (texts -> probabilities).

    runtime: None picks the variant's native runtime (torch for FP32, onnxruntime for ONNX
    artifacts); "onnxruntime" on an FP32 variant exports it to ONNX first (cached).
    ort_spinning=False stops idle ONNX Runtime threads from spinning (fair timing of several models
    in one process).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FinCompressError(f"variant folder {folder} does not exist")
    info = read_info(folder)
    runtimes = variant_runtimes(folder)
    runtime = runtime or runtimes[0]
    if runtime not in runtimes:
        raise FinCompressError(f"{folder.name} ({info.get('format')}) cannot run in {runtime}; it runs in {runtimes}")
    if runtime == "torch":
        if threads:
            torch.set_num_threads(threads)
        return TorchPredictor(folder, info)
    onnx_path = folder / ONNX_FILE if info.get("format") == "onnx" else ensure_onnx_export(folder)
    if not onnx_path.is_file():
        raise FinCompressError(f"{folder}: {ONNX_FILE} is missing; re-create the variant")
    return OnnxPredictor(folder, info, onnx_path, threads, spinning=ort_spinning)
