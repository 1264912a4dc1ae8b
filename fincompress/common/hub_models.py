"""Pretrained models from the Hub or a local folder, in the project's label order.

ProsusAI/finbert ships `0 positive, 1 negative, 2 neutral`; the project uses `0 negative,
1 neutral, 2 positive` everywhere. A checkpoint's label names (`id2label`) decide how its
classification head is permuted; a base encoder (no label names) gets a new 3-class head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fincompress.common.paths import ID2LABEL, LABEL2ID, LABELS, FinCompressError

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



# ----------------------------------------------------------------------------- loading

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
