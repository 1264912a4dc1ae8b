"""The HTTP API (FastAPI) in text-embeddings-inference's shape, over one variant and its batcher.

Reads  <root>/checkpoints/<variant>/ through the one loader (unless a Predictor is handed in), and for
       GET /info its checkpoint_info.json and <root>/results/benchmark_results.csv (if present).
Writes nothing (with --runtime onnxruntime the loader caches an FP32 variant's ONNX export in its folder).

Routes: POST /predict, GET /health, GET /info, GET /metrics. Every error is one JSON line
`{"error": "...", "error_type": "..."}` (TEI's error shape).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fincompress.common.batching import SAMPLE_TEXT, measure_call_overhead, score_texts
from fincompress.common.hardware import cpu_metadata
from fincompress.common.loader import Predictor, load_variant
from fincompress.common.paths import LABELS, FinCompressError, results_dir, variant_dir
from fincompress.common.raw_data import is_visible_text
from fincompress.evaluation.reporting import DEFAULT_OUTPUT, check_results_set
from fincompress.serving.batcher import (
    Batcher,
    BatchSettings,
    ModelError,
    Observer,
    QueueFull,
    ShuttingDown,
    TextTooLong,
)
from fincompress.serving.metrics import ServerMetrics, mark_worker_dead

log = logging.getLogger("fincompress.serving")

SETTINGS_ENV = "FINCOMPRESS_SERVE_SETTINGS"  # how `fincompress.serve` hands its settings to worker processes
ROUTES = ("/predict", "/health", "/info", "/metrics")
RETRY_AFTER_SECONDS = 1
BENCHMARK_CSV = f"{DEFAULT_OUTPUT}.csv"  # the benchmark's default results set


@dataclass
class ServeSettings:
    """Everything a server process needs; JSON-serialisable so worker processes get the same settings."""

    root: str
    variant: str
    runtime: str | None = None
    threads: int = 1
    workers: int = 1
    max_texts_per_request: int = 64
    max_body_bytes: int = 1_000_000
    batch: BatchSettings = field(default_factory=BatchSettings)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values = json.loads(text)
        return cls(**{**values, "batch": BatchSettings(**values["batch"])})

    @property
    def folder(self) -> Path:
        return variant_dir(Path(self.root), self.variant)


class ApiError(Exception):
    """An answer other than 200: status, message and TEI's error type."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers


def error_json(message: str, error_type: str) -> bytes:
    """TEI's one-line error body."""
    return orjson.dumps({"error": message, "error_type": error_type})


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_json(message, error_type), status_code=status, headers=headers,
                    media_type="application/json")


def load_predictor(settings: ServeSettings) -> Predictor:
    """The variant through the one loader, with this process's intra-op thread count."""
    import torch

    torch.set_num_threads(settings.threads)  # process-wide: the server process is the entry point that owns it
    return load_variant(settings.folder, runtime=settings.runtime, threads=settings.threads)


# ----------------------------------------------------------------------------- the request body

async def read_body(scope: dict, receive, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes; at most {limit} are accepted", "Validation")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        size += len(message.get("body", b""))
        if size > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes", "Validation")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_predict(body: bytes, max_texts: int) -> tuple[list[str], bool, bool, bool]:
    """(texts, single text?, raw_scores, truncate) of a /predict body, or a 413/422 ApiError."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(422, "the body is not valid JSON", "Validation") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise ApiError(422, 'the body must be a JSON object {"inputs": text or [texts]}', "Validation")
    inputs = payload["inputs"]
    single = isinstance(inputs, str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not texts:
        raise ApiError(422, "inputs must be a text or a non-empty list of texts", "Validation")
    if len(texts) > max_texts:
        raise ApiError(413, f"{len(texts)} texts in one request; at most {max_texts}", "Validation")
    for index, text in enumerate(texts):
        if not is_visible_text(text):
            where = "inputs" if single else f"inputs[{index}]"
            raise ApiError(422, f"{where} must be a non-empty string with a visible character", "Validation")
    options = {}
    for name, default in (("raw_scores", False), ("truncate", True)):
        options[name] = payload.get(name, default)
        if not isinstance(options[name], bool):
            raise ApiError(422, f"{name} must be true or false", "Validation")
    return texts, single, options["raw_scores"], options["truncate"]


def label_scores(row: np.ndarray) -> list[dict]:
    """Every label with its score, highest first (TEI's shape)."""
    pairs = [{"label": label, "score": float(score)} for label, score in zip(LABELS, row)]
    return sorted(pairs, key=lambda pair: pair["score"], reverse=True)


async def predict(state, scope: dict, receive) -> bytes:
    """The JSON answer of one POST /predict, or an ApiError."""
    if not state.ready:
        raise ApiError(503, "the model is not ready", "Unhealthy")
    body = await read_body(scope, receive, state.settings.max_body_bytes)
    texts, single, raw_scores, truncate = parse_predict(body, state.settings.max_texts_per_request)
    try:
        future = state.batcher.submit(texts, raw_scores=raw_scores, truncate=truncate)
    except QueueFull as exc:
        raise ApiError(429, str(exc), "Overloaded", {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    except ShuttingDown as exc:
        raise ApiError(503, str(exc), "Unhealthy") from None
    try:
        scores = await asyncio.wrap_future(future)
    except TextTooLong as exc:
        raise ApiError(413, str(exc), "Validation") from None
    except ModelError as exc:
        raise ApiError(500, str(exc), "Backend") from None
    answers = [label_scores(row) for row in scores]
    return orjson.dumps(answers[0] if single else answers)


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


class PredictRoute:
    """POST /predict in plain ASGI; every other request goes on to the FastAPI app.

    The route the server exists for skips the framework's per-request machinery (request objects,
    dependency resolution, response classes): on 2 cores that CPU is the model's. Same answers and
    errors as the other routes (`ApiError` -> one JSON line)."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json")]
        try:
            if scope["method"] != "POST":
                raise ApiError(405, "use POST", "Http", {"Allow": "POST"})
            status, body = 200, await predict(self.state, scope, receive)
        except ApiError as exc:
            status, body = exc.status, error_json(exc.message, exc.error_type)
            headers += [(name.lower().encode(), value.encode()) for name, value in (exc.headers or {}).items()]
        except ClientGone:
            return
        except Exception as exc:  # a bug, not the client's fault: one JSON line, and the log has the traceback
            log.exception("POST /predict failed")
            status = 500
            body = error_json(f"internal error: {type(exc).__name__}", "Backend")
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- /info

def benchmark_f1(root: Path, variant: str, runtime: str) -> dict | None:
    """Test macro F1 and its interval from results/benchmark_results.csv (this variant and runtime), if any."""
    path = results_dir(root) / BENCHMARK_CSV
    if not path.is_file():
        return None
    try:
        check = check_results_set(root)
        problem = check.message if check.state == "mixed" else None
    except FinCompressError as exc:  # a damaged record
        problem = str(exc)
    if problem:  # files of two runs: no F1 from them, and /info says why
        log.warning("%s", problem)
        return {"macro_f1": None, "ci_low": None, "ci_high": None, "from": f"results/{BENCHMARK_CSV}",
                "problem": problem}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("model_name") == variant and row.get("runtime") == runtime:
                return {"macro_f1": _number(row.get("macro_f1")), "ci_low": _number(row.get("macro_f1_ci_low")),
                        "ci_high": _number(row.get("macro_f1_ci_high")), "from": f"results/{BENCHMARK_CSV}"}
    return None


def _number(value: object) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def measured_f1(settings: ServeSettings, predictor: Predictor) -> dict | None:
    measured = benchmark_f1(Path(settings.root), predictor.name, predictor.runtime)
    if measured:
        return measured
    metrics = predictor.info.get("test_metrics") or {}
    if "macro_f1" not in metrics:
        return None
    return {"macro_f1": metrics["macro_f1"], "ci_low": metrics.get("macro_f1_ci_low"),
            "ci_high": metrics.get("macro_f1_ci_high"), "from": "checkpoint_info.json"}


def describe(settings: ServeSettings, predictor: Predictor) -> dict:
    info = predictor.info
    calibration = info.get("calibration") if isinstance(info.get("calibration"), dict) else None
    return {
        "variant": predictor.name, "technique": info.get("technique"), "source": info.get("source_checkpoint"),
        "data_fingerprint": info.get("data_fingerprint"), "test_macro_f1": measured_f1(settings, predictor),
        "runtime": predictor.runtime, "threads": settings.threads, "workers": settings.workers,
        "labels": list(LABELS), "max_length": predictor.max_length,
        "batching": asdict(settings.batch), "max_texts_per_request": settings.max_texts_per_request,
        "max_body_bytes": settings.max_body_bytes, "cpu": cpu_metadata(),
        "calibration_temperature": predictor.temperature if calibration else None,
    }


# ----------------------------------------------------------------------------- the app

def _observer(metrics: ServerMetrics) -> Observer:
    return Observer(on_model_call=metrics.observe_model_call, on_queue_size=metrics.queue_texts.set)


def _lifespan(settings: ServeSettings, given: Predictor | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predictor = given or await asyncio.to_thread(load_predictor, settings)
        # One real call before /health says yes: a model that cannot run is found before traffic.
        await asyncio.to_thread(score_texts, predictor, [SAMPLE_TEXT], settings.batch.max_batch_tokens)
        batch = settings.batch
        if batch.call_overhead_tokens is None:  # measured for this variant on this CPU; /info shows the value
            overhead = await asyncio.to_thread(measure_call_overhead, predictor)
            batch = replace(batch, call_overhead_tokens=round(overhead, 1))
        serving = replace(settings, batch=batch)
        app.state.predictor, app.state.settings = predictor, serving
        app.state.description = describe(serving, predictor)
        app.state.batcher = Batcher(predictor, batch, _observer(app.state.metrics))
        app.state.ready = True
        log.info("serving %s (%s, %d threads) in process %d", predictor.name, predictor.runtime,
                 settings.threads, os.getpid())
        try:
            yield
        finally:
            app.state.ready = False
            await asyncio.to_thread(app.state.batcher.close)  # answers what was accepted, then stops
            mark_worker_dead()

    return lifespan


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.error_type, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "NotFound" if exc.status_code == 404 else "Http")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid request", "Validation")


class RequestMetrics:
    """Pure ASGI middleware counting every HTTP answer by route and status, with its seconds.

    Not Starlette's `BaseHTTPMiddleware`: that one runs each request through an extra task and stream,
    a cost paid on every /predict call."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label values
        status = [500]  # an app that raises before it answers is counted as a 500

        async def send_with_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(route, status[0], time.perf_counter() - start)


def create_app(settings: ServeSettings, predictor: Predictor | None = None) -> FastAPI:
    """The server app; the variant is loaded (unless `predictor` is given) and warmed up at start-up."""
    app = FastAPI(title="FinCompress", lifespan=_lifespan(settings, predictor), docs_url=None, redoc_url=None)
    app.state.settings, app.state.ready, app.state.metrics = settings, False, ServerMetrics()
    _add_handlers(app)
    app.add_middleware(PredictRoute, state=app.state)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)  # added last: outermost, counts /predict too

    @app.get("/health")
    async def health() -> Response:
        if app.state.ready and app.state.batcher.alive:
            return JSONResponse({"status": "ok"})
        return error_response(503, "the model is not ready", "Unhealthy")

    @app.get("/info")
    async def info() -> Response:
        if not app.state.ready:
            return error_response(503, "the model is not ready", "Unhealthy")
        return JSONResponse(app.state.description)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = app.state.metrics.render()
        return Response(body, media_type=content_type)

    return app


def create_app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (`--workers` > 1): settings from `SETTINGS_ENV`."""
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))
