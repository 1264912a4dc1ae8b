"""Serve one variant over HTTP: `python -m fincompress.serve --variant NAME`.

Reads  <root>/checkpoints/<NAME>/ through the one loader (FP32 in torch or ONNX Runtime, pruned, INT8 ONNX),
       <root>/results/benchmark_results.csv for GET /info (if present).
Writes nothing (with --runtime onnxruntime the loader caches an FP32 variant's ONNX export in its folder;
       with --workers > 1 Prometheus' per-worker files go to a private temporary folder removed at exit).

Routes (text-embeddings-inference's shape): POST /predict, GET /health, GET /info, GET /metrics; see
docs/SERVING.md. The variant is loaded and checked before the port is bound: a missing or broken variant
is one line on stderr and exit 2. SIGTERM (or Ctrl-C) stops accepting, answers what is in flight, exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
from typing import TYPE_CHECKING

from fincompress.common import cli
from fincompress.common.batching import MAX_BATCH_TOKENS
from fincompress.common.paths import FinCompressError, add_root_argument, project_root, variant_dir

if TYPE_CHECKING:
    from fincompress.serving.app import ServeSettings

log = logging.getLogger("fincompress.serve")

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8080,
    "workers": 1,
    "max_batch_tokens": MAX_BATCH_TOKENS,
    "max_batch_size": None,
    # 0: the model thread takes what has queued. Texts gather while the model runs, so batches form under
    # load without a window; a window only idles the model (measured: docs/SERVING.md).
    "max_wait_ms": 0.0,
    "max_queue": 256,
    "call_overhead_tokens": None,  # measured at start-up for the variant and CPU
    "max_texts_per_request": 64,
    "max_body_bytes": 1_000_000,
    # Longer than a load balancer's idle timeout (60 s on AWS ALB and GCP): a server that closes an idle
    # keep-alive connection first races the client's next request on it (uvicorn's own default is 5 s).
    "keep_alive_seconds": 75,
}
RUNTIMES = ("torch", "onnxruntime")
# Seconds a worker may take to answer uvicorn's liveness ping; loading a model under load takes longer
# than uvicorn's 5 s default, and a worker that misses it is killed and restarted.
WORKER_HEALTHCHECK_SECONDS = 300


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.serve", description=__doc__.split("\n\n")[0])
    d = DEFAULTS
    parser.add_argument("--variant", required=True, help="variant folder name under <root>/checkpoints/")
    add_root_argument(parser)
    parser.add_argument("--host", default=d["host"], help=f"address to listen on (default {d['host']})")
    parser.add_argument("--port", type=cli.non_negative_int, default=d["port"], help=f"port (default {d['port']})")
    parser.add_argument("--workers", type=cli.positive_int, default=d["workers"],
                        help="uvicorn worker processes, each with its own copy of the model (default 1)")
    parser.add_argument("--threads", type=cli.positive_int, default=None,
                        help="intra-op threads of each worker's model (default: cores // workers, at least 1)")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None,
                        help="torch or onnxruntime (default: the variant's own: torch for FP32, "
                        "onnxruntime for INT8 ONNX)")
    parser.add_argument("--max-batch-tokens", type=cli.positive_int, default=d["max_batch_tokens"],
                        help="padded tokens (texts x longest text) per model call (default %(default)s)")
    parser.add_argument("--max-batch-size", type=cli.positive_int, default=d["max_batch_size"],
                        help="texts per model call and per collection from the queue (default: no limit "
                        "but the token budget)")
    parser.add_argument("--max-wait-ms", type=cli.non_negative_float, default=d["max_wait_ms"],
                        help="how long the model thread waits after the first queued text for more "
                        "(default %(default)s: take only what has arrived)")
    parser.add_argument("--call-overhead-tokens", type=cli.non_negative_float, default=d["call_overhead_tokens"],
                        help="the fixed cost of one model call in padded tokens: texts of different lengths "
                        "share a call only when that costs less than another call (default: measured at "
                        "start-up for this variant and CPU; GET /info shows it)")
    parser.add_argument("--max-queue", type=cli.positive_int, default=d["max_queue"],
                        help="texts accepted and not yet answered per worker; beyond it requests get 429 "
                        "(default %(default)s)")
    parser.add_argument("--max-texts-per-request", type=cli.positive_int, default=d["max_texts_per_request"],
                        help="texts in one /predict request; more get 413 (default %(default)s)")
    parser.add_argument("--max-body-bytes", type=cli.positive_int, default=d["max_body_bytes"],
                        help="request body size; larger gets 413 (default %(default)s)")
    parser.add_argument("--keep-alive-seconds", type=cli.positive_int, default=d["keep_alive_seconds"],
                        help="close a keep-alive connection idle this long; keep it above the idle timeout "
                        "of any load balancer in front (default %(default)s)")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    # Imported here, not at the top: each worker process re-imports this module, and torch with it, before
    # it can answer uvicorn's liveness ping.
    from fincompress.serving.app import ServeSettings
    from fincompress.serving.batcher import BatchSettings

    batch = BatchSettings(max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
                          max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                          call_overhead_tokens=args.call_overhead_tokens)
    threads = args.threads or max(1, available_cores() // args.workers)
    return ServeSettings(root=str(project_root(args.root)), variant=args.variant, runtime=args.runtime,
                         threads=threads, workers=args.workers, max_texts_per_request=args.max_texts_per_request,
                         max_body_bytes=args.max_body_bytes, batch=batch)


def serve(settings: ServeSettings, host: str, port: int, keep_alive_seconds: int = DEFAULTS["keep_alive_seconds"]
          ) -> None:
    import uvicorn

    from fincompress.serving.app import SETTINGS_ENV, create_app, load_predictor
    from fincompress.serving.metrics import MULTIPROC_ENV

    # Loaded here, before the port is bound: a missing or broken variant is a one-line error (exit 2).
    predictor = load_predictor(settings)
    options = {"host": host, "port": port, "access_log": False, "timeout_graceful_shutdown": None,
               "timeout_keep_alive": keep_alive_seconds}
    log.info("serving %s (%s, %d threads x %d workers) on http://%s:%d", settings.variant, predictor.runtime,
             settings.threads, settings.workers, host, port)
    if settings.workers == 1:
        # uvicorn re-raises the signal it shut down on; a no-op handler lets a drained server exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        uvicorn.run(create_app(settings, predictor), **options)
        return
    del predictor  # each worker loads its own copy
    with tempfile.TemporaryDirectory(prefix="fincompress-metrics-") as metrics_dir:
        os.environ[MULTIPROC_ENV] = metrics_dir  # read by prometheus_client when a worker imports it
        os.environ[SETTINGS_ENV] = settings.to_json()
        uvicorn.run("fincompress.serving.app:create_app_from_env", factory=True, workers=settings.workers,
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS, **options)


def main(argv: list[str] | None = None) -> None:
    args = cli.parse_args(build_parser(), argv)
    folder = variant_dir(project_root(args.root), args.variant)
    if not folder.is_dir():  # before torch is imported: a typo is answered at once
        raise FinCompressError(f"variant {args.variant!r} not found in {folder.parent}")
    serve(settings_from_args(args), args.host, args.port, args.keep_alive_seconds)


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
