"""A teacher's logits on training texts, computed once and cached on disk.

Knowledge distillation and pruning recovery with KD both train against the fixed logits of a
teacher (pruning: the unpruned source). They are computed once per teacher and text list, on the
accelerator's device, and cached in <root>/.cache/teacher_logits/<teacher>-<key>.npy. The key is
made of everything the logits depend on: the teacher's weights and config (`io.content_digest`),
the data fingerprint, the texts themselves (`io.text_digest`) and the tokenizer's max length, so a
retrained teacher, re-prepared data or another transfer set never reuses a stale file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fincompress.common.data import MAX_LENGTH, make_loader
from fincompress.common.io import atomic_write, content_digest, text_digest
from fincompress.common.training import predict_logits

log = logging.getLogger("fincompress.teacher_logits")

CACHE_FOLDER = Path(".cache") / "teacher_logits"
TEACHER_FILES = ("model.safetensors", "config.json")


def teacher_digest(teacher_folder: Path) -> str:
    """Content hash of the teacher's weights and config: retraining it in place changes the key."""
    return content_digest([Path(teacher_folder) / name for name in TEACHER_FILES])


def cache_path(root: Path, teacher_folder: Path, texts: list[str], data_fingerprint: str,
               max_length: int = MAX_LENGTH) -> Path:
    """Where the logits of this teacher on these texts (with this data and max length) are cached."""
    key = text_digest([teacher_digest(teacher_folder), data_fingerprint, text_digest(texts), str(max_length)],
                      length=20)
    return Path(root) / CACHE_FOLDER / f"{Path(teacher_folder).name}-{key}.npy"


def compute_logits(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                   accelerator: Accelerator, batch_size: int = 64, max_length: int = MAX_LENGTH) -> np.ndarray:
    """The teacher's logits for `texts` (row i = texts[i]), computed on the accelerator's device.

    The teacher is moved there first (it stays there: the KD stages use it on that device afterwards).
    Under several processes each computes its share and the rows are gathered.
    """
    teacher.to(accelerator.device)
    loader = accelerator.prepare(make_loader(tokenizer, texts, batch_size=batch_size, max_length=max_length))
    raw, _, indices = predict_logits(teacher, loader, accelerator)
    logits = np.empty_like(raw)
    logits[indices] = raw
    return logits


def teacher_logits(root: Path, teacher_folder: Path, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   texts: list[str], *, data_fingerprint: str, accelerator: Accelerator | None = None,
                   batch_size: int = 64, max_length: int = MAX_LENGTH) -> tuple[np.ndarray, dict]:
    """The teacher's logits for `texts` (row i = texts[i]) from the cache, or computed and cached.

    `teacher_folder` is the variant folder `teacher` was loaded from (its files make the cache key);
    `data_fingerprint` is the fingerprint the stage took when it started. Returns the logits and a
    record for checkpoint_info.json ({"path", "hit"}).
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    path = cache_path(root, teacher_folder, texts, data_fingerprint, max_length)
    if path.is_file():
        logits = np.load(path)
        if logits.shape[0] == len(texts):
            log.info("teacher logits from cache %s", path)
            teacher.to(accelerator.device)
            return logits, {"path": str(path), "hit": True}
    log.info("computing teacher logits for %d texts -> %s", len(texts), path)
    logits = compute_logits(teacher, tokenizer, texts, accelerator, batch_size, max_length)
    if accelerator.is_main_process:
        # np.save appends ".npy" to names without it: write through an open handle so the name stays ours
        atomic_write(path, lambda tmp: _save_array(tmp, logits))
    return logits, {"path": str(path), "hit": False}


def _save_array(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)
