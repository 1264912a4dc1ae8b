"""Dynamic batching for the server: every request's texts go into one queue, one model thread answers them.

Reads nothing from disk; calls `Predictor.logits` of the variant it is given. The model is not
thread-safe and its intra-op threads do the parallel work, so a single thread runs it: it takes what has
arrived (with `max_wait_ms` > 0 it waits that long after the first text for more), tokenizes those texts
once (`encode_unpadded`), groups them by length within the token budget (`plan_batches`) and resolves each
request's future as soon as its last text is scored. Padding is masked, so each text's scores equal its
batch-1 scores.

Back-pressure: `submit` refuses at once (`QueueFull`) when the texts accepted and not yet answered would
exceed `max_queue` (a request's texts stop counting the moment it is answered); nothing waits without
bound. A failing model call fails only the requests that had a text in that call (`ModelError`); the
thread keeps serving. `close()` stops accepting and drains what was accepted before it returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np

from fincompress.common.batching import (
    CALL_OVERHEAD_TOKENS,
    MAX_BATCH_TOKENS,
    EncodedText,
    encode_unpadded,
    pad_batch,
    plan_batches,
)
from fincompress.common.loader import Predictor
from fincompress.common.paths import LABELS

log = logging.getLogger("fincompress.serving")

_STOP = object()  # queued by close(): everything queued before it is answered first


class QueueFull(Exception):
    """More texts are waiting than the server accepts (answered 429)."""


class ShuttingDown(Exception):
    """The server stopped accepting requests (answered 503)."""


class TextTooLong(Exception):
    """A text longer than the model reads, sent with truncation off (answered 413)."""


class ModelError(Exception):
    """The model call for a batch holding one of the request's texts failed (answered 500)."""


@dataclass(frozen=True)
class BatchSettings:
    max_batch_tokens: int = MAX_BATCH_TOKENS
    max_batch_size: int | None = None
    max_wait_ms: float = 0.0  # take what has queued: under load texts gather while the model runs
    max_queue: int = 256
    call_overhead_tokens: float | None = None  # None: the server measures it at start-up


@dataclass
class Observer:
    """Callbacks for metrics (all optional): texts and padded tokens of each model call, its seconds, queue size."""

    on_model_call: Callable[[int, int, float], None] | None = None
    on_queue_size: Callable[[int], None] | None = None


@dataclass
class _Request:
    texts: list[str]
    raw_scores: bool
    truncate: bool
    future: Future = field(default_factory=Future)
    scores: np.ndarray | None = None
    remaining: int = 0

    def fail(self, error: Exception) -> None:
        # Answered once: a later failure of another of its texts changes nothing.
        with suppress(InvalidStateError):
            self.future.set_exception(error)

    def succeed(self, scores: np.ndarray) -> None:
        with suppress(InvalidStateError):  # the client went away and its future was cancelled
            self.future.set_result(scores)


class Batcher:
    """The queue and its model thread. `submit(texts) -> Future[np.ndarray (N, 3)]`."""

    def __init__(self, predictor: Predictor, settings: BatchSettings, observer: Observer | None = None):
        self.predictor = predictor
        self.settings = settings
        self.observer = observer or Observer()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # texts accepted and not yet answered
        self._closed = False
        overhead = settings.call_overhead_tokens
        self._call_overhead = CALL_OVERHEAD_TOKENS if overhead is None else overhead
        self._thread = threading.Thread(target=self._run, name="fincompress-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, texts: Sequence[str], raw_scores: bool = False, truncate: bool = True) -> Future:
        """Queue one request's texts; its future gets their scores (probabilities, or logits with raw_scores)."""
        request = _Request(list(texts), raw_scores, truncate, remaining=len(texts))
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if self._pending + len(texts) > self.settings.max_queue:
                raise QueueFull(f"{self._pending} texts are waiting (at most {self.settings.max_queue}); "
                                "retry later")
            self._pending += len(texts)
            # Released the moment the request is answered (or cancelled), before its caller sees the answer:
            # a client that sends its next request at once finds its texts no longer counted.
            request.future.add_done_callback(lambda _: self._release(len(request.texts)))
            self._queue.put(request)
        self._report_queue()
        return request.future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting; answer everything already accepted, then stop the model thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------------- the model thread

    def _run(self) -> None:
        while True:
            requests, stop = self._collect()
            try:
                if requests:
                    self._answer(requests)
            except Exception as exc:  # never leave a request unanswered, never stop the thread
                log.exception("answering %d requests failed", len(requests))
                for request in requests:
                    request.fail(ModelError(f"the batch failed: {type(exc).__name__}"))
            if stop:
                return

    def _collect(self) -> tuple[list[_Request], bool]:
        """The requests that arrived by `max_wait_ms` after the first one (blocks for the first)."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        requests, texts = [first], len(first.texts)
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        cap = self.settings.max_batch_size
        while cap is None or texts < cap:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return requests, True
            requests.append(item)
            texts += len(item.texts)
        return requests, False

    def _answer(self, requests: list[_Request]) -> None:
        try:
            owners, encoded = self._encode(requests)
        except Exception as exc:  # a tokenizer failure must not stop the thread
            log.exception("tokenizing a batch failed")
            owners, encoded = [], []
            for request in requests:
                request.fail(ModelError(f"tokenizing failed: {exc}"))
        try:
            self._score(requests, owners, encoded)
        finally:
            for request in requests:  # never left waiting: a request not answered by now never will be
                request.fail(ModelError("the request was not answered"))

    def _encode(self, requests: list[_Request]) -> tuple[list[tuple[_Request, int]], list[EncodedText]]:
        """Each text's (request, row) and its tokens; one tokenizer call for the whole collection.

        Tokenized to one token more than the model reads, so a too-long text is seen without a second pass.
        """
        limit = self.predictor.max_length
        owners = [(request, row) for request in requests for row in range(len(request.texts))]
        encoded = encode_unpadded(self.predictor.tokenizer, [r.texts[row] for r, row in owners], limit + 1)
        sep_id = self.predictor.tokenizer.sep_token_id
        for index, (request, _) in enumerate(owners):
            if len(encoded[index]) <= limit:
                continue
            if not request.truncate:
                request.fail(TextTooLong(f"a text is longer than the {limit} tokens the model reads "
                                         "(send truncate: true to cut it)"))
            encoded[index] = truncated(encoded[index], limit, sep_id)
        for request in requests:
            if not request.future.done():
                request.scores = np.zeros((len(request.texts), len(LABELS)), dtype=np.float32)
        return owners, encoded

    def _score(self, requests: list[_Request], owners: list[tuple[_Request, int]],
               encoded: list[EncodedText]) -> None:
        live = [i for i, (request, _) in enumerate(owners) if not request.future.done()]
        pad_id = self.predictor.tokenizer.pad_token_id or 0
        plan = plan_batches([len(encoded[i]) for i in live], self.settings.max_batch_tokens,
                            self.settings.max_batch_size, self._call_overhead)
        for batch in plan:
            indices = [live[i] for i in batch]
            batch_requests = {id(owners[i][0]): owners[i][0] for i in indices}.values()
            if all(r.future.done() for r in batch_requests):
                continue  # every request in it already failed: no model call for nothing
            try:
                logits = self._call_model([encoded[i] for i in indices], pad_id)
            except Exception as exc:
                log.exception("model call on %d texts failed", len(indices))
                for request in batch_requests:
                    request.fail(ModelError(f"the model call failed: {type(exc).__name__}"))
                continue
            self._deliver(indices, owners, logits)

    def _call_model(self, texts: list[EncodedText], pad_id: int) -> np.ndarray:
        inputs = pad_batch(texts, pad_id)
        start = time.perf_counter()
        logits = self.predictor.logits(inputs)
        if self.observer.on_model_call:
            self.observer.on_model_call(len(texts), int(inputs["input_ids"].size), time.perf_counter() - start)
        return np.asarray(logits, dtype=np.float32)

    def _deliver(self, indices: list[int], owners: list[tuple[_Request, int]], logits: np.ndarray) -> None:
        for position, index in enumerate(indices):
            request, row = owners[index]
            if request.future.done():
                continue
            request.scores[row] = logits[position]
            request.remaining -= 1
            if request.remaining == 0:
                scores = request.scores if request.raw_scores else self.predictor.probabilities(request.scores)
                request.succeed(scores)

    def _release(self, texts: int) -> None:
        with self._lock:
            self._pending -= texts
        self._report_queue()

    def _report_queue(self) -> None:
        if self.observer.on_queue_size:
            self.observer.on_queue_size(self._pending)


def truncated(text: EncodedText, max_length: int, sep_id: int | None) -> EncodedText:
    """A text cut to `max_length` tokens the way the tokenizer truncates one sequence: its final [SEP] kept."""
    ids = list(text.input_ids[:max_length])
    if sep_id is not None and text.input_ids[-1] == sep_id:
        ids[-1] = sep_id
    return EncodedText(ids, list(text.token_type_ids[:max_length]))
