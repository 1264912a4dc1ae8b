"""The model server: a real uvicorn process (`python -m fincompress.serve`) on 127.0.0.1 for the routes, batching,
back-pressure, bad input, concurrency and SIGTERM; the batcher and a failing model in-process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO
from fincompress.common.batching import score_texts
from fincompress.common.data import read_split
from fincompress.common.loader import load_variant
from fincompress.common.paths import LABELS, FinCompressError
from fincompress.serving.app import ServeSettings, create_app
from fincompress.serving.batcher import Batcher, BatchSettings, ModelError, Observer, QueueFull

TOLERANCE = 1e-4
START_TIMEOUT_SECONDS = 300  # a readiness wait (a busy machine loads slowly), not an assertion on speed
METRICS = ("fincompress_requests_total", "fincompress_request_seconds", "fincompress_batch_texts",
           "fincompress_batch_tokens", "fincompress_queue_texts", "fincompress_model_seconds",
           "fincompress_resident_memory_bytes")
LONG_TEXT = " ".join(["profit rose"] * 150)  # well over the 128 tokens the model reads


# ----------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def serve_command(root: Path, *flags: str, variant: str = "teacher", port: int | None = None) -> list[str]:
    return [sys.executable, "-m", "fincompress.serve", "--root", str(root), "--variant", variant,
            "--port", str(port or free_port()), "--threads", "1", *flags]


@contextmanager
def running_server(root: Path, *flags: str, log_dir: Path, env: dict | None = None):
    command = serve_command(root, *flags)
    url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    try:
        wait_until_healthy(process, url, log_path)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)


def wait_until_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server did not become healthy: {log_path.read_text()[-2000:]}")


def as_array(answer: list[dict]) -> np.ndarray:
    """A /predict answer for one text as scores in project label order."""
    by_label = {item["label"]: item["score"] for item in answer}
    assert set(by_label) == set(LABELS)
    return np.array([by_label[label] for label in LABELS])


def metric_value(text: str, name: str) -> float:
    """The sum over every sample line of one metric in Prometheus text."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and (line[len(name)] in " {")]
    assert values, f"{name} not in /metrics"
    return sum(values)


def assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert "\n" not in response.text.strip()
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error"] and body["error_type"]
    return body


def mixed_texts(root: Path, count: int, repeats: int = 3) -> list[str]:
    """Test sentences of varied lengths (up to `repeats` copies), each with its own id."""
    sentences = list(read_split(root, "test")["text"])
    return [f"id {i} " + " ".join([sentences[i % len(sentences)]] * (1 + i % repeats)) for i in range(count)]


@pytest.fixture(scope="module")
def model_root(small_data_root, tmp_path_factory) -> Path:
    """A root whose teacher is a tiny BERT with large random weights: its scores differ clearly from text to
    text (the few-step `trained_root` teacher scores every text almost alike), so a swapped answer shows."""
    from conftest import save_tiny_model
    from fincompress.teacher import train_teacher

    base = tmp_path_factory.mktemp("serve")
    model = save_tiny_model(base / "model", seed=1, initializer_range=0.3)
    shutil.copytree(small_data_root / "data", base / "root" / "data")
    train_teacher.main(["--root", str(base / "root"), "--model", str(model), "--max-steps", "1",
                        "--batch-size", "8", "--lr", "1e-9"])
    return base / "root"


@pytest.fixture(scope="module")
def teacher(model_root):
    return load_variant(model_root / "checkpoints" / "teacher", runtime="torch")


def batch1(predictor, texts: list[str]) -> np.ndarray:
    return np.concatenate([predictor.predict_proba([text], batch_size=1) for text in texts])


# ----------------------------------------------------------------------------- one server for most routes

@pytest.fixture(scope="module")
def server(model_root, tmp_path_factory):
    flags = ("--max-wait-ms", "5", "--max-queue", "1024", "--max-texts-per-request", "8",
             "--max-body-bytes", "4000", "--max-batch-tokens", "512")
    with running_server(model_root, *flags, log_dir=tmp_path_factory.mktemp("logs")) as (_, url):
        with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            yield client


@pytest.mark.slow
def test_predict_answers_every_label_sorted_for_a_text_and_a_list(server, teacher):
    single = server.post("/predict", json={"inputs": "Net profit rose to EUR 5 mn"})
    assert single.status_code == 200
    answer = single.json()
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)
    np.testing.assert_allclose(as_array(answer), batch1(teacher, ["Net profit rose to EUR 5 mn"])[0], atol=TOLERANCE)
    texts = ["shares fell", "the meeting was held on 3 march", "sales increased by 12 %"]
    many = server.post("/predict", json={"inputs": texts}).json()
    assert len(many) == 3
    np.testing.assert_allclose(np.stack([as_array(a) for a in many]), batch1(teacher, texts), atol=TOLERANCE)


@pytest.mark.slow
def test_raw_scores_are_the_logits(server, teacher):
    texts = ["shares fell", "the outlook improved"]
    raw = np.stack([as_array(a) for a in server.post("/predict", json={"inputs": texts, "raw_scores": True}).json()])
    np.testing.assert_allclose(teacher.probabilities(raw), batch1(teacher, texts), atol=TOLERANCE)
    assert not np.allclose(raw.sum(axis=1), 1.0)


@pytest.mark.slow
def test_health_info_and_metrics(server, teacher):
    assert server.get("/health").json() == {"status": "ok"}
    info = server.get("/info").json()
    assert info["variant"] == "teacher" and info["runtime"] == "torch" and info["threads"] == 1
    assert info["technique"] == teacher.info["technique"]
    assert info["data_fingerprint"] == teacher.info["data_fingerprint"]
    assert info["test_macro_f1"]["macro_f1"] == pytest.approx(teacher.info["test_metrics"]["macro_f1"])
    assert info["batching"]["max_batch_tokens"] == 512 and info["max_texts_per_request"] == 8
    assert isinstance(info["cpu"]["isa"], list) and info["labels"] == list(LABELS)
    before = metric_value(server.get("/metrics").text, "fincompress_batch_texts_sum")
    server.post("/predict", json={"inputs": ["a b c", "profit rose"]})
    metrics = server.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in METRICS:
        assert f"\n{name}" in metrics.text
    assert metric_value(metrics.text, "fincompress_batch_texts_sum") == before + 2  # every text scored once
    assert 'fincompress_requests_total{route="/predict",status="200"}' in metrics.text
    assert_error_shape(server.get("/nowhere"), 404)


@pytest.mark.slow
def test_concurrent_texts_of_different_lengths_get_their_batch1_scores(server, teacher, model_root):
    texts = mixed_texts(model_root, 48)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda t: server.post("/predict", json={"inputs": t}), texts))
    assert all(a.status_code == 200 for a in answers)
    scores = np.stack([as_array(a.json()) for a in answers])
    np.testing.assert_allclose(scores, batch1(teacher, texts), atol=TOLERANCE)


@pytest.mark.slow
def test_200_concurrent_clients_each_get_exactly_their_own_answer(server, teacher, model_root):
    texts = mixed_texts(model_root, 200, repeats=2)
    reference = score_texts(teacher, texts, 4096, raw_scores=True)  # grouped = batch-1 (test_batching.py)

    def ask(index: int) -> tuple[int, np.ndarray]:
        response = server.post("/predict", json={"inputs": [texts[index]], "raw_scores": True})
        assert response.status_code == 200, response.text
        return index, as_array(response.json()[0])

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(len(texts))))
    assert sorted(index for index, _ in results) == list(range(len(texts)))  # each answered once
    for index, scores in results:
        nearest = np.abs(reference - scores).max(axis=1).argmin()
        assert nearest == index, f"text {index} got the answer of text {nearest}"
        np.testing.assert_allclose(scores, reference[index], atol=TOLERANCE)


@pytest.mark.slow
def test_too_many_texts_too_big_a_body_or_a_too_long_text_get_413(server, teacher):
    assert_error_shape(server.post("/predict", json={"inputs": ["profit rose"] * 9}), 413)
    assert_error_shape(server.post("/predict", json={"inputs": "x" * 5000}), 413)
    assert_error_shape(server.post("/predict", json={"inputs": LONG_TEXT, "truncate": False}), 413)
    cut = server.post("/predict", json={"inputs": LONG_TEXT})  # truncate defaults to true
    assert cut.status_code == 200
    np.testing.assert_allclose(as_array(cut.json()), batch1(teacher, [LONG_TEXT])[0], atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[]", b"{}", b'{"inputs": ""}', b'{"inputs": "   "}',
                                  b'{"inputs": 5}', b'{"inputs": []}', b'{"inputs": ["ok", 3]}',
                                  b'{"inputs": ["ok", " "]}', b'{"inputs": "\\u200b"}',
                                  b'{"inputs": ["ok", "\\ufeff\\u200d \\u00ad"]}',
                                  b'{"inputs": "ok", "raw_scores": "yes"}',
                                  b'{"inputs": "ok", "truncate": 1}'])
def test_bad_input_gets_422_in_the_error_shape(server, body):
    body = assert_error_shape(server.post("/predict", content=body, headers={"content-type": "application/json"}),
                              422)
    assert body["error_type"] == "Validation"


@pytest.mark.slow
def test_predict_takes_only_post_and_unknown_routes_are_404(server):
    wrong_method = server.get("/predict")
    assert_error_shape(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"
    assert_error_shape(server.get("/no-such-route"), 404)


# ----------------------------------------------------------------------------- back-pressure and shutdown

@pytest.mark.slow
def test_a_full_queue_answers_429_and_sigterm_answers_what_is_in_flight_then_exits_0(model_root, teacher, tmp_path):
    # The model thread waits 3 s after the first text: the queue holds 2 texts while the other requests arrive.
    flags = ("--max-queue", "2", "--max-wait-ms", "3000")
    texts = [f"id {i} sales increased" for i in range(8)]
    with running_server(model_root, *flags, log_dir=tmp_path) as (process, url):
        barrier = threading.Barrier(len(texts))

        def ask(text: str) -> httpx.Response:
            barrier.wait()
            return httpx.post(f"{url}/predict", json={"inputs": text}, timeout=60)

        with ThreadPoolExecutor(len(texts)) as pool:
            futures = [pool.submit(ask, text) for text in texts]
            while sum(f.done() for f in futures) + metric_value(httpx.get(f"{url}/metrics").text,
                                                                 "fincompress_queue_texts") < len(texts):
                time.sleep(0.02)  # until every request is either refused or waiting in the batcher
            process.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert process.wait(60) == 0
    statuses = [r.status_code for r in responses]
    assert statuses.count(429) >= len(texts) - 2 and 200 in statuses
    accepted = [i for i, status in enumerate(statuses) if status == 200]
    np.testing.assert_allclose(np.stack([as_array(responses[i].json()) for i in accepted]),
                               batch1(teacher, [texts[i] for i in accepted]), atol=TOLERANCE)
    for response in responses:
        if response.status_code == 429:
            assert assert_error_shape(response, 429)["error_type"] == "Overloaded"
            assert int(response.headers["retry-after"]) >= 1
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)


@pytest.mark.slow
def test_several_workers_serve_and_sum_their_metrics(model_root, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    with running_server(model_root, "--workers", "2", log_dir=tmp_path, env={"TMPDIR": str(temp)}) as (process, url):
        for _ in range(6):
            assert httpx.post(f"{url}/predict", json={"inputs": "profit rose"}, timeout=60).status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert metric_value(text, "fincompress_batch_texts_sum") >= 6  # summed over both workers' files
        assert httpx.get(f"{url}/info", timeout=10).json()["workers"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert not list(temp.glob("fincompress-metrics-*"))  # the private metrics folder is removed at exit


def health_on(sock: socket.socket) -> bytes:
    """One GET /health on an open keep-alive connection; b"" when the server has closed it."""
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # headers and the JSON body may come in separate reads
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer
    except (ConnectionResetError, BrokenPipeError):
        return b""


@pytest.mark.slow
def test_idle_keep_alive_connections_stay_open_as_long_as_configured(server, model_root, tmp_path):
    # A server that closes an idle connection before the client (or a load balancer) does races the
    # client's next request on it; uvicorn's own default closes after 5 s.
    url = httpx.URL(str(server.base_url))
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        assert health_on(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)
        assert health_on(sock).startswith(b"HTTP/1.1 200")  # still open past uvicorn's 5 s
    with running_server(model_root, "--keep-alive-seconds", "1", log_dir=tmp_path) as (_, short_url):
        parsed = httpx.URL(short_url)
        with socket.create_connection((parsed.host, parsed.port), timeout=10) as sock:
            assert health_on(sock).startswith(b"HTTP/1.1 200")
            time.sleep(2.5)
            assert health_on(sock) == b""  # closed by the server after 1 s idle


# ----------------------------------------------------------------------------- start-up errors

@pytest.mark.slow
def test_a_missing_or_broken_variant_is_one_line_and_exit_2_before_binding(model_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(model_root, root)
    (root / "checkpoints" / "teacher" / "model.safetensors").write_bytes(b"not weights")
    for variant in ("nope", "teacher"):
        port = free_port()
        result = subprocess.run(serve_command(root, variant=variant, port=port), cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and variant in lines[0]
        assert port_is_free(port)


def test_help_explains_every_flag():
    from fincompress.serve import build_parser

    parser = build_parser()
    help_text = parser.format_help()
    for action in parser._actions:
        if action.option_strings:
            assert action.option_strings[-1] in help_text and action.help


# ----------------------------------------------------------------------------- in-process: app and batcher

def test_health_is_503_until_the_model_is_warm(model_root):
    from starlette.testclient import TestClient

    app = create_app(ServeSettings(root=str(model_root), variant="teacher"))
    client = TestClient(app)  # no `with`: start-up (loading, warm-up) has not run
    assert_error_shape(client.get("/health"), 503)
    assert_error_shape(client.post("/predict", json={"inputs": "profit rose"}), 503)


def test_a_failing_model_call_answers_500_and_the_next_request_succeeds(teacher, model_root):
    from starlette.testclient import TestClient

    failing = {"next": False}
    real_logits = teacher.logits

    def logits(encoded):
        if failing["next"]:
            failing["next"] = False
            raise RuntimeError("simulated kernel failure")
        return real_logits(encoded)

    teacher.logits = logits
    try:
        with TestClient(create_app(ServeSettings(root=str(model_root), variant="teacher"), teacher)) as client:
            failing["next"] = True
            assert assert_error_shape(client.post("/predict", json={"inputs": "profit rose"}), 500)["error_type"] \
                == "Backend"
            after = client.post("/predict", json={"inputs": "profit rose"})
            assert after.status_code == 200 and client.get("/health").status_code == 200
            assert 'status="500"' in client.get("/metrics").text
    finally:
        del teacher.logits
    np.testing.assert_allclose(as_array(after.json()), batch1(teacher, ["profit rose"])[0], atol=TOLERANCE)


class BlockingPredictor:
    """A predictor whose model calls wait for `release` (to fill the queue deterministically)."""

    def __init__(self, real):
        self.real, self.release, self.calls = real, threading.Event(), 0
        self.tokenizer, self.max_length, self.probabilities = real.tokenizer, real.max_length, real.probabilities

    def logits(self, encoded):
        self.calls += 1
        self.release.wait(30)
        return self.real.logits(encoded)


def test_the_batcher_refuses_at_once_when_full_and_drains_on_close(teacher):
    blocking = BlockingPredictor(teacher)
    batcher = Batcher(blocking, BatchSettings(max_wait_ms=0, max_queue=3))
    first = batcher.submit(["profit rose", "sales fell"])
    second = batcher.submit(["the meeting was held"])
    with pytest.raises(QueueFull):
        batcher.submit(["one too many"])
    assert batcher.pending == 3
    blocking.release.set()
    batcher.close(timeout=30)
    assert first.result(0).shape == (2, 3) and second.result(0).shape == (1, 3)
    assert batcher.pending == 0 and not batcher.alive


def test_an_answered_request_stops_counting_against_the_queue_before_its_caller_sees_the_answer(teacher):
    # A closed-loop client sends its next request the moment it has its answer: with room for exactly one
    # request, that next request must be accepted, not refused because the last one still counts.
    blocking = BlockingPredictor(teacher)  # held until the callback below is in place
    batcher = Batcher(blocking, BatchSettings(max_wait_ms=0, max_queue=1))
    outcomes: list = []
    sent = threading.Event()

    def send_next(_) -> None:
        try:
            outcomes.append(batcher.submit(["sales fell"]))
        except QueueFull:
            outcomes.append("refused")
        sent.set()

    first = batcher.submit(["profit rose"])
    first.add_done_callback(send_next)  # runs in the model thread, right after the answer is set
    blocking.release.set()
    assert sent.wait(30)
    assert outcomes != ["refused"]
    assert outcomes[0].result(30).shape == (1, 3)
    batcher.close(timeout=30)
    assert batcher.pending == 0


def test_an_unexpected_failure_answers_the_batch_and_the_thread_keeps_serving(teacher):
    def broken_softmax(logits):
        raise ValueError("simulated bug after the model call")

    broken = BlockingPredictor(teacher)
    broken.release.set()
    broken.probabilities = broken_softmax
    batcher = Batcher(broken, BatchSettings(max_wait_ms=0))
    with pytest.raises(ModelError):
        batcher.submit(["profit rose"]).result(30)
    logits = batcher.submit(["profit rose"], raw_scores=True).result(30)  # no softmax: answered
    batcher.close(timeout=30)
    np.testing.assert_allclose(teacher.probabilities(logits), batch1(teacher, ["profit rose"]), atol=TOLERANCE)
    assert batcher.pending == 0


def test_a_config_file_sets_the_flags_and_the_command_line_wins(tmp_path):
    from fincompress.common import cli
    from fincompress.serve import build_parser, settings_from_args

    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"max_wait_ms": 7, "max_queue": 5, "workers": 2, "runtime": "onnxruntime"}))
    args = cli.parse_args(build_parser(), ["--variant", "v", "--root", str(tmp_path), "--config", str(config),
                                           "--max-queue", "9"])
    settings = settings_from_args(args)
    assert (settings.batch.max_wait_ms, settings.batch.max_queue, settings.workers) == (7, 9, 2)
    assert settings.runtime == "onnxruntime" and settings.threads >= 1
    config.write_text(json.dumps({"max_wait": 7}))
    with pytest.raises(FinCompressError, match="unknown setting"):
        cli.parse_args(build_parser(), ["--variant", "v", "--config", str(config)])


@pytest.fixture(scope="module")
def int8_root(model_root, tmp_path_factory):
    from fincompress.quantization import ptq

    root = tmp_path_factory.mktemp("int8") / "root"
    shutil.copytree(model_root, root)
    ptq.main(["--root", str(root), "--calibration-samples", "8", "--recipe", "static"])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("variant,runtime", [("teacher", "torch"), ("teacher", "onnxruntime"),
                                             ("teacher_ptq_int8", "onnxruntime")])
def test_batched_scores_equal_batch1_scores(int8_root, variant, runtime):
    predictor = load_variant(int8_root / "checkpoints" / variant, runtime=runtime)
    texts = mixed_texts(int8_root, 30)
    calls = []
    settings = BatchSettings(max_batch_tokens=200, max_wait_ms=50, max_queue=100)
    batcher = Batcher(predictor, settings, Observer(on_model_call=lambda n, tokens, seconds: calls.append(n)))
    requests = [texts[i:i + 3] for i in range(0, len(texts), 3)]  # 10 requests of 3 texts, submitted together
    futures = [batcher.submit(chunk) for chunk in requests]
    scores = np.concatenate([future.result(60) for future in futures])
    batcher.close(timeout=30)
    np.testing.assert_allclose(scores, batch1(predictor, texts), atol=TOLERANCE)
    assert sum(calls) == len(texts) and len(calls) > 1  # several length groups within the token budget


def test_settings_reach_worker_processes_unchanged():
    settings = ServeSettings(root="r", variant="v", runtime="onnxruntime", threads=3, workers=2,
                             batch=BatchSettings(max_batch_tokens=100, max_batch_size=7, max_wait_ms=0.5, max_queue=9))
    assert ServeSettings.from_json(settings.to_json()) == settings
    assert json.loads(settings.to_json())["batch"]["max_batch_size"] == 7


def test_info_gives_no_f1_from_a_results_set_of_two_runs(tmp_path):
    from fincompress.common.io import publish_file_set
    from fincompress.evaluation.reporting import generation_path
    from fincompress.serving.app import BENCHMARK_CSV, benchmark_f1

    results = tmp_path / "results"
    results.mkdir()
    staged = tmp_path / "staged.csv"
    staged.write_text("model_name,runtime,macro_f1,macro_f1_ci_low,macro_f1_ci_high\nteacher,torch,0.9,0.8,0.95\n")
    publish_file_set({staged: results / BENCHMARK_CSV}, generation_path(tmp_path))
    assert benchmark_f1(tmp_path, "teacher", "torch")["macro_f1"] == 0.9  # one set: its F1
    (results / BENCHMARK_CSV).write_text("model_name,runtime,macro_f1\nteacher,torch,0.1\n")  # another run's CSV
    mixed = benchmark_f1(tmp_path, "teacher", "torch")
    assert mixed["macro_f1"] is None and "not one set" in mixed["problem"]
    generation_path(tmp_path).write_text("{broken")
    assert "generation record" in benchmark_f1(tmp_path, "teacher", "torch")["problem"]
