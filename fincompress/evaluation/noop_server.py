"""A server with the serving routes and no model: `python -m fincompress.evaluation.noop_server --port P`.

Reads  nothing. Writes nothing.

POST /predict answers a fixed score list at once, so a load test against it measures the client's own
ceiling (what the load generator can send on this machine), not a model. GET /health, GET /info and
GET /metrics (with `fincompress_batch_texts`, one text per call) have the shapes of `fincompress.serve`.
`--statuses 200,429,200,500` answers /predict with those status codes in rotation (to check error counting).
"""

from __future__ import annotations

import argparse
import itertools
import json

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fincompress.common import cli
from fincompress.common.paths import LABELS

HOST = "127.0.0.1"  # loopback only: this is a measuring aid, never a service
VARIANT = "noop"
SCORES = [{"label": label, "score": round(1 / len(LABELS), 6)} for label in LABELS]


def valid_body(body: bytes) -> bool:
    """A JSON object whose `inputs` is a non-empty string (what the load tester sends)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("inputs"), str) and bool(payload["inputs"])


def create_app(statuses: list[int] | None = None) -> FastAPI:
    """The no-op app; `statuses` (default: all 200) are the /predict answers in rotation."""
    app = FastAPI(title="FinCompress no-op", docs_url=None, redoc_url=None)
    registry = CollectorRegistry()
    requests_total = Counter("fincompress_requests_total", "HTTP requests by route and status code",
                             ["route", "status"], registry=registry)
    batch_texts = Histogram("fincompress_batch_texts", "Texts per model call", buckets=(1, 2, 4, 8),
                            registry=registry)
    cycle = itertools.cycle(statuses or [200])

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        if not valid_body(await request.body()):  # so a load generator sending empty bodies is caught
            requests_total.labels("/predict", "422").inc()
            return JSONResponse({"error": "expected {\"inputs\": text}", "error_type": "Validation"}, 422)
        status = next(cycle)
        requests_total.labels("/predict", str(status)).inc()
        if status != 200:
            return JSONResponse({"error": "no-op failure", "error_type": "NoOp"}, status_code=status)
        batch_texts.observe(1)
        return JSONResponse(SCORES)

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> Response:
        return JSONResponse({"variant": VARIANT, "runtime": "none", "threads": 1, "workers": 1})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def status_list(text: str) -> list[int]:
    """Comma-separated HTTP status codes, repeats kept (they set the rotation's proportions)."""
    codes = [cli.positive_int(item.strip()) for item in text.split(",") if item.strip()]
    if not codes or any(not 200 <= code <= 599 for code in codes):
        raise argparse.ArgumentTypeError(f"expected comma-separated HTTP status codes, got {text!r}")
    return codes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.noop_server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=cli.positive_int, required=True, help="loopback port to listen on")
    parser.add_argument("--statuses", type=status_list, default=None,
                        help="status codes /predict answers in rotation (default: always 200)")
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    uvicorn.run(create_app(args.statuses), host=HOST, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
