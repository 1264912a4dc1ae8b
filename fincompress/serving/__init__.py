"""The model server's parts: the HTTP app (app.py), dynamic batching (batcher.py), Prometheus metrics (metrics.py).

The entry point is `python -m fincompress.serve`.
"""
