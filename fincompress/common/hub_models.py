"""Pretrained models from the Hub or a local folder, in the project's label order; Hub downloads.

ProsusAI/finbert ships `0 positive, 1 negative, 2 neutral`; the project uses `0 negative,
1 neutral, 2 positive` everywhere. A checkpoint's label names (`id2label`) decide how its
classification head is permuted; a base encoder (no label names) gets a new 3-class head; other
label names are refused with a message (their meaning cannot be guessed).

The Hub is reached through huggingface_hub's own cache (so pinned files load offline once cached);
when it is unreachable, calls fail at once with one line naming the local alternative instead of
waiting through the library's retries. The safetensors auto-conversion request transformers starts
for `.bin`-only checkpoints (ProsusAI/finbert) is switched off.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

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

# A `.bin`-only Hub checkpoint makes transformers open a background conversion request on the Hub.
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")

log = logging.getLogger("fincompress.hub_models")
PROBE_TIMEOUT = 5.0  # seconds to open a connection to the Hub before calling it unreachable
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
LOCAL_MODEL_HINT = ("--model PATH, a local folder with config.json, weights and tokenizer (e.g. the all-MiniLM-L6-v2 "
                    "asset: `python -m fincompress.assets` shows where it is), or the offline preset: "
                    "python -m fincompress.pipeline --preset offline")


# ----------------------------------------------------------------------------- labels

def set_project_labels(config: PretrainedConfig) -> None:
    config.id2label = dict(ID2LABEL)
    config.label2id = dict(LABEL2ID)
    config.num_labels = len(LABELS)


def project_order(config: PretrainedConfig) -> list[int] | None:
    """Indices of the checkpoint's outputs in project order (negative, neutral, positive).

    None when the checkpoint has no real label names (`LABEL_0`...): a 3-output head is then taken to
    use the project order already, any other head is replaced. Raises if the names are not our three classes.
    """
    names = {int(i): str(n).strip().lower() for i, n in (config.id2label or {}).items()}
    if not names or all(n.startswith("label_") for n in names.values()):
        return None
    by_name = {n: i for i, n in names.items()}
    if set(by_name) != set(LABELS) or len(names) != len(LABELS):
        raise FinCompressError(f"checkpoint labels {[names[i] for i in sorted(names)]} are not {list(LABELS)}: "
                               f"their meaning cannot be mapped; use a checkpoint whose id2label names these three "
                               f"classes, or a base encoder (it gets a new 3-class head)")
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


# ----------------------------------------------------------------------------- the Hub

def is_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=4)
def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError:
        return False
    return True


def hub_reachable() -> bool:
    """Whether the Hub can be reached (offline mode: no; behind a proxy: assumed yes; else one connection
    attempt per process)."""
    from huggingface_hub import constants

    if is_offline():
        return False
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    return _answers(endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80))


def hub_download(repo_id: str, filename: str, *, repo_type: str = "model", revision: str | None = None) -> Path:
    """One Hub file through the Hugging Face cache: cached copies first, then (if the Hub answers) the Hub.

    Raises ConnectionError at once when the file is not cached and the Hub is unreachable.
    """
    from huggingface_hub import hf_hub_download

    kwargs = {"repo_type": repo_type, "revision": revision}
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True, **kwargs))
    except Exception:  # not cached (LocalEntryNotFoundError, or a missing ref): ask the Hub
        pass
    if not hub_reachable():
        raise ConnectionError(f"the Hugging Face Hub is unreachable{' (offline mode)' if is_offline() else ''} "
                              f"and {repo_id}/{filename} is not in its cache")
    return Path(hf_hub_download(repo_id, filename, **kwargs))


# ----------------------------------------------------------------------------- loading

def hub_error(name: str, exc: Exception, local_hint: str = LOCAL_MODEL_HINT) -> FinCompressError:
    return FinCompressError(
        f"could not load {name!r} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}). "
        f"If the Hugging Face Hub is unreachable, use a local copy instead: {local_hint}"
    )


def looks_like_a_path(name: str) -> bool:
    """A name no Hub repository id can have (`org/name` or `name`): it was meant as a folder."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def hub_load_kwargs(name_or_path: str) -> dict:
    """Extra `from_pretrained` arguments for a model name or folder: a folder that is not there is refused
    here, and an uncached Hub name with the Hub unreachable fails at once (cache only) instead of through
    the library's retries."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        return {}
    if looks_like_a_path(name_or_path):
        raise FinCompressError(f"{local}: no such folder (a local model is a folder with config.json; "
                               "a Hub name looks like ProsusAI/finbert)")
    return {} if hub_reachable() else {"local_files_only": True}


def unnamed_head(config: PretrainedConfig) -> str:
    """What happens to the head of a checkpoint without class names (said in the log)."""
    classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if classifier and config.num_labels == len(LABELS):
        return "its 3-output head is taken as negative, neutral, positive"
    return "a new 3-class head (negative, neutral, positive) is trained"


def load_pretrained_classifier(name_or_path: str, attn_implementation: str | None = None
                               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hub name or local folder as a 3-class classifier in project label order.

    - label names negative/neutral/positive in any order (ProsusAI/finbert): the head is permuted;
    - no label names (a base encoder such as all-MiniLM-L6-v2, or `LABEL_i`): a new 3-class head
      unless the checkpoint already has a 3-output head (then taken as project order);
    - other label names (e.g. bearish/bullish): refused, naming them.
    """
    local = Path(name_or_path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise FinCompressError(f"{local} has no config.json: not a transformers model folder")
    cached_only = hub_load_kwargs(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, **cached_only)
        order = project_order(config)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if order is None:
            log.info("%s has no class names: %s", name_or_path, unnamed_head(config))
            config.num_labels = len(LABELS)
            kwargs["ignore_mismatched_sizes"] = True  # a head with another number of outputs is replaced
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **cached_only)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config, **cached_only,
                                                                   **kwargs)
    except FinCompressError:
        raise
    except (OSError, ValueError) as exc:
        raise hub_error(name_or_path, exc) from exc
    except Exception as exc:  # safetensors/torch raise their own types for truncated or corrupt weights
        raise FinCompressError(f"{name_or_path}: cannot load the model ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160]}); check or re-download its weights") from exc
    reorder_classifier_to_project_labels(model)
    return model, tokenizer
