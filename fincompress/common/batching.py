"""Length-grouped batching, shared by the server and batch scoring.

Texts are tokenized once without padding, sorted by token count and cut into batches whose
padded size (longest text x texts) stays within a token budget, so a batch of short texts is not
padded to the length of one long text. Results come back in input order. Each text's scores equal
its batch-1 scores (padding is masked), which tests assert for every runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from fincompress.common.loader import ONNX_INPUTS, Predictor
from fincompress.common.paths import LABELS, FinCompressError


@dataclass(frozen=True)
class EncodedText:
    """One tokenized, unpadded text: its ids and token types (the attention mask is all ones)."""

    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_unpadded(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[EncodedText]:
    """Tokenize texts once, truncated to `max_length` tokens, without padding."""
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise FinCompressError("every text must be a non-empty string")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        return_token_type_ids=True)
    return [EncodedText(ids, types) for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"])]


def pad_batch(texts: Sequence[EncodedText], pad_token_id: int) -> dict[str, np.ndarray]:
    """The model inputs of one batch (int64 arrays `ONNX_INPUTS`), padded to its longest text."""
    width = max(len(t) for t in texts)
    arrays = {name: np.zeros((len(texts), width), dtype=np.int64) for name in ONNX_INPUTS}
    arrays["input_ids"].fill(pad_token_id)
    for row, text in enumerate(texts):
        arrays["input_ids"][row, :len(text)] = text.input_ids
        arrays["token_type_ids"][row, :len(text)] = text.token_type_ids
        arrays["attention_mask"][row, :len(text)] = 1
    return arrays


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Indices of texts grouped by length: each batch's longest length x size <= `max_batch_tokens`.

    A single text longer than the budget still forms its own batch (it must be answered).
    """
    if max_batch_tokens < 1:
        raise FinCompressError(f"the token budget must be at least 1, not {max_batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so the newest text is the batch's longest.
        too_many_tokens = lengths[index] * (len(current) + 1) > max_batch_tokens
        too_many_texts = max_batch_size is not None and len(current) >= max_batch_size
        if current and (too_many_tokens or too_many_texts):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def score_encoded(predictor: Predictor, texts: Sequence[EncodedText], max_batch_tokens: int,
                  raw_scores: bool = False, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Scores (N, 3) of tokenized texts in input order: probabilities (calibrated when the variant
    is), or raw logits with `raw_scores`. `on_batch(n)` is called after each batch of n texts."""
    scores = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
    pad_id = predictor.tokenizer.pad_token_id or 0
    for batch in plan_batches([len(t) for t in texts], max_batch_tokens):
        logits = predictor.logits(pad_batch([texts[i] for i in batch], pad_id))
        scores[batch] = logits if raw_scores else predictor.probabilities(logits)
        if on_batch is not None:
            on_batch(len(batch))
    return scores


def score_texts(predictor: Predictor, texts: Sequence[str], max_batch_tokens: int, raw_scores: bool = False,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Scores (N, 3) of texts in input order, batched by length within `max_batch_tokens`."""
    encoded = encode_unpadded(predictor.tokenizer, texts, predictor.max_length)
    return score_encoded(predictor, encoded, max_batch_tokens, raw_scores, on_batch)
