"""Length-grouped batching, shared by the server and batch scoring.

Texts are tokenized once without padding, sorted by token count and cut into batches whose
padded size (longest text x texts) stays within a token budget, so a batch of short texts is not
padded to the length of one long text. Results come back in input order. Each text's scores equal
its batch-1 scores (padding is masked), which tests assert for every runtime.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fincompress.common.paths import LABELS, FinCompressError
from fincompress.common.raw_data import is_visible_text

if TYPE_CHECKING:  # light at import: `fincompress.serve` reads the defaults below before torch is loaded
    from transformers import PreTrainedTokenizerBase

    from fincompress.common.loader import Predictor

# Defaults of the server and of batch scoring, defined here once.
MAX_BATCH_TOKENS = 4096  # padded tokens (texts x longest text) per model call
SAMPLE_TEXT = "Operating profit rose compared with the previous quarter."  # warm-up and overhead measurement
# The fixed cost of one model call in padded tokens, when it is not measured (`measure_call_overhead`).
CALL_OVERHEAD_TOKENS = 64


@dataclass(frozen=True)
class EncodedText:
    """One tokenized, unpadded text: its ids and token types (the attention mask is all ones)."""

    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_unpadded(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[EncodedText]:
    """Tokenize texts once, truncated to `max_length` tokens, without padding."""
    if not all(map(is_visible_text, texts)):
        raise FinCompressError("every text must be a non-empty string (with a visible character)")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                        return_token_type_ids=True)
    return [EncodedText(ids, types) for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"])]


def pad_batch(texts: Sequence[EncodedText], pad_token_id: int) -> dict[str, np.ndarray]:
    """The model inputs of one batch (int64 arrays `ONNX_INPUTS`), padded to its longest text."""
    from fincompress.common.loader import ONNX_INPUTS  # here, not at the top: see the imports
    width = max(len(t) for t in texts)
    arrays = {name: np.zeros((len(texts), width), dtype=np.int64) for name in ONNX_INPUTS}
    arrays["input_ids"].fill(pad_token_id)
    for row, text in enumerate(texts):
        arrays["input_ids"][row, :len(text)] = text.input_ids
        arrays["token_type_ids"][row, :len(text)] = text.token_type_ids
        arrays["attention_mask"][row, :len(text)] = 1
    return arrays


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int | None = None,
                 call_overhead_tokens: float = CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of texts grouped by length: each batch's longest length x size <= `max_batch_tokens`.

    The texts are sorted by length and cut into consecutive batches so that the estimated work is least:
    a model call costs its padded tokens (size x longest) plus `call_overhead_tokens`, the fixed cost of
    one call expressed in tokens. So short texts are not padded to a long one when a second call costs
    less than the padding, and many texts of one length share one call. A single text longer than the
    budget still forms its own batch (it must be answered).
    """
    if max_batch_tokens < 1:
        raise FinCompressError(f"the token budget must be at least 1, not {max_batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    # Work over the distinct lengths (at most max_length + 1 of them), not the texts: any corpus size is cheap.
    counts = Counter(lengths)
    distinct = sorted(counts)
    ends = list(np.cumsum([0] + [counts[v] for v in distinct]))
    groups = _cheapest_groups(distinct, ends, lambda longest: _batch_cap(longest, max_batch_tokens, max_batch_size),
                              call_overhead_tokens)
    batches: list[list[int]] = []
    for first, last, cap in groups:
        members = order[first:last]
        batches.extend(members[i:i + cap] for i in range(0, len(members), cap))
    return batches


def _batch_cap(longest: int, max_batch_tokens: int, max_batch_size: int | None) -> int:
    """Texts of length `longest` one call may hold (at least 1)."""
    cap = max(1, max_batch_tokens // max(longest, 1))
    return min(cap, max_batch_size) if max_batch_size is not None else cap


def _cheapest_groups(distinct: list[int], ends: list[int], cap_of: Callable[[int], int],
                     overhead: float) -> list[tuple[int, int, int]]:
    """(first, last, cap) text ranges of the sorted texts: a dynamic programme over the distinct lengths, where
    the range of lengths (i, j] is padded to distinct[j - 1] and split into calls of at most its cap."""
    best = [0.0] + [float("inf")] * len(distinct)
    start = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        longest, cap = distinct[j - 1], cap_of(distinct[j - 1])
        for i in range(j):
            texts = ends[j] - ends[i]
            cost = best[i] + -(-texts // cap) * overhead + texts * longest
            if cost < best[j]:
                best[j], start[j] = cost, i
    groups, j = [], len(distinct)
    while j > 0:
        i = start[j]
        groups.append((int(ends[i]), int(ends[j]), cap_of(distinct[j - 1])))
        j = i
    return groups[::-1]


def measure_call_overhead(predictor: Predictor, length: int = 32, texts: int = 8, repeats: int = 10) -> float:
    """The fixed cost of one model call of this variant on this CPU, in padded tokens.

    Times one text and `texts` texts of `length` tokens (best of `repeats`) and fits time = a + b x tokens:
    the overhead is a / b. Per-operator overhead dominates a small model, arithmetic a large one, so the
    right amount of batching differs by variant and CPU: measured, not assumed. Clamped to [0, 4096].
    """
    ids = predictor.tokenizer(SAMPLE_TEXT)["input_ids"]
    body = (ids[1:-1] * length)[:max(length - 2, 0)]
    text = EncodedText([ids[0], *body, ids[-1]], [0] * (len(body) + 2))
    pad_id = predictor.tokenizer.pad_token_id or 0

    shapes = {1: pad_batch([text], pad_id), texts: pad_batch([text] * texts, pad_id)}
    best = dict.fromkeys(shapes, float("inf"))
    for inputs in shapes.values():
        predictor.logits(inputs)  # first call of a shape: not timed
    for _ in range(repeats):  # the two shapes alternate, so a busy moment slows both alike
        for size, inputs in shapes.items():
            start = time.perf_counter()
            predictor.logits(inputs)
            best[size] = min(best[size], time.perf_counter() - start)
    one, many = best[1], best[texts]
    per_token = (many - one) / ((texts - 1) * len(text))
    if per_token <= 0:  # a batch cost no more than one text: calls are all overhead
        return 4096.0
    return float(min(max((one - per_token * len(text)) / per_token, 0.0), 4096.0))


def score_encoded(predictor: Predictor, texts: Sequence[EncodedText], max_batch_tokens: int,
                  raw_scores: bool = False, on_batch: Callable[[int], None] | None = None,
                  call_overhead_tokens: float = CALL_OVERHEAD_TOKENS) -> np.ndarray:
    """Scores (N, 3) of tokenized texts in input order: probabilities (calibrated when the variant
    is), or raw logits with `raw_scores`. `on_batch(n)` is called after each batch of n texts."""
    scores = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
    pad_id = predictor.tokenizer.pad_token_id or 0
    for batch in plan_batches([len(t) for t in texts], max_batch_tokens, None, call_overhead_tokens):
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
