"""The contract of results/serving.csv, shared by its writer (`loadtest`) and its reader (`cost`).

Reads and writes nothing itself.
"""

from __future__ import annotations

SERVING_CSV = "serving.csv"
CEILING_VARIANT = "client-ceiling"  # rows measuring the load generator against a no-op server
ERROR_KINDS = ("429", "5xx", "4xx", "connection")  # "connection": no HTTP answer (refused, reset, timed out)
COLUMNS = ["created_at", "variant", "runtime", "threads", "workers", "max_queue", "max_wait_ms", "client", "processes",
           "mode", "concurrency", "rate", "requests", "seconds", "ok", "throughput", "p50_ms", "p95_ms", "p99_ms",
           *(f"errors_{kind}" for kind in ERROR_KINDS), "late_sends", "mean_batch_texts", "server_p99_ms_answered",
           "server_p99_ms_refused", "rss_start_mb", "rss_end_mb", "client_ceiling", "client_bound", "cpu", "isa", "url"]
