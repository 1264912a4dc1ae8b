"""The server's Prometheus metrics (prometheus_client), one set per app; rendered by `GET /metrics`.

Reads and writes nothing itself. With several uvicorn workers, `PROMETHEUS_MULTIPROC_DIR` is set (by
`fincompress.serve`) before prometheus_client is imported: every worker then writes its values to files
there and `/metrics` sums them over the workers (prometheus_client's multiprocess mode).

The names are a contract (the load tester reads them): keep them exactly.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
TEXTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKENS_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class ServerMetrics:
    """The seven metrics of one server process, in a registry of their own (several apps in one test process
    do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("fincompress_requests_total", "HTTP requests by route and status code",
                                ["route", "status"], registry=reg)
        self.request_seconds = Histogram("fincompress_request_seconds", "Time to answer a request, by route and "
                                         "status code", ["route", "status"], buckets=SECONDS_BUCKETS, registry=reg)
        self.batch_texts = Histogram("fincompress_batch_texts", "Texts per model call", buckets=TEXTS_BUCKETS,
                                     registry=reg)
        self.batch_tokens = Histogram("fincompress_batch_tokens", "Padded tokens (texts x longest) per model call",
                                      buckets=TOKENS_BUCKETS, registry=reg)
        # livesum: the texts waiting in every live worker, added up.
        self.queue_texts = Gauge("fincompress_queue_texts", "Texts accepted and not yet answered",
                                 registry=reg, multiprocess_mode="livesum")
        self.model_seconds = Histogram("fincompress_model_seconds", "Time of one model call",
                                       buckets=SECONDS_BUCKETS, registry=reg)
        # livesum: the resident memory of every live worker, added up (a soak test watches it stay flat).
        self.resident_bytes = Gauge("fincompress_resident_memory_bytes", "Resident memory of the server processes",
                                    registry=reg, multiprocess_mode="livesum")
        self.resident_bytes.set(resident_memory_bytes())

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_seconds.labels(route=route, status=str(status)).observe(seconds)

    def observe_model_call(self, texts: int, tokens: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.model_seconds.observe(seconds)
        self.resident_bytes.set(resident_memory_bytes())

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (summed over workers in multiprocess mode) and its content type."""
        if multiprocess_mode():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def resident_memory_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where the OS has no such file)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def mark_worker_dead() -> None:
    """Drop this worker's live gauge values (called when a worker stops in multiprocess mode)."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
