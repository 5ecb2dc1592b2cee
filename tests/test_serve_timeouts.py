"""Issue 30: time limits of the web server, on 127.0.0.1 only.

- request headers that stall or trickle in get 408 and a closed connection after
  `header_timeout_s` (uvicorn alone kept them open for as long as the client liked);
- a request body that stalls or trickles in gets 408 after `body_grace_s`;
- a model call past `compute_timeout_s` gets 503 with a one-line JSON error, and while it
  is stuck other model requests get 503 at once; /health keeps answering;
- `serve` stops within a few seconds of SIGTERM or Ctrl+C with a request stuck in the model.
Deadlines here are half a second, so every test takes a few seconds at most.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from _serve_fixture import build_serve_model, free_port, live_server

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from thumbview.serve.app import create_app  # noqa: E402
from thumbview.serve.server import uvicorn_config  # noqa: E402
from thumbview.serve.uploads import Limits  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = Limits(header_timeout_s=0.5, body_grace_s=0.5, min_body_bytes_per_s=1000)
BOUNDARY = "thumbviewboundary"


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory) -> dict:
    return build_serve_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def jpeg(serve_model) -> bytes:
    buf = io.BytesIO()
    Image.open(serve_model["paths"][0]).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def port(serve_model):
    """A live uvicorn (thumbview's config) in a thread, with half-second deadlines."""
    port = free_port()
    app = create_app(serve_model["model"], limits=FAST)
    config = uvicorn_config(app, "127.0.0.1", port, FAST.header_timeout_s, 1.0, log_level="warning")
    for _ in live_server(config):
        yield port


def _until_closed(sock: socket.socket, limit: float, trickle: bytes = b"") -> tuple[bytes, float]:
    """(everything the server sent, seconds until it closed), sending `trickle` a byte every
    50 ms meanwhile; fails if the connection is still open after `limit` seconds."""
    start, got = time.monotonic(), b""
    while time.monotonic() - start < limit:
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            chunk = sock.recv(65536)
            if not chunk:
                return got, time.monotonic() - start
            got += chunk
        elif trickle:
            try:
                sock.sendall(trickle[:1])
            except OSError:  # closed under us: read what came before
                continue
            trickle = trickle[1:] or b" "
    pytest.fail(f"connection still open after {limit} s (received {got[:80]!r})")


def _wait_listening(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.1)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _headers(path: str, length: int, content_type: str = "application/octet-stream") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _json_error(response: bytes, status: int) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head[:80]
    assert b"connection: close" in head.lower()
    message = json.loads(body)["error"]
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- headers
def test_half_sent_headers_get_408_and_a_closed_connection(port):
    with _connect(port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        got, seconds = _until_closed(sock, 5)
    assert "headers did not arrive" in _json_error(got, 408) and seconds < 3


def test_headers_trickled_a_byte_at_a_time_are_cut_off(port):
    with _connect(port) as sock:
        got, seconds = _until_closed(
            sock, 5, trickle=b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 200
        )
    assert got.startswith(b"HTTP/1.1 408") and seconds < 3


def test_many_silent_connections_are_closed_and_the_server_still_answers(port):
    socks = [_connect(port) for _ in range(20)]
    try:
        with _connect(port) as sock:  # a real request meanwhile is served at once
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        for sock in socks:
            got, seconds = _until_closed(sock, 5)
            assert got == b"" and seconds < 3  # nothing was asked: closed without a word
    finally:
        for sock in socks:
            sock.close()


def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_request(port):
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.1)  # the rest of the first response
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 12")  # and never the rest
        got, seconds = _until_closed(sock, 5)
    assert got.count(b"HTTP/1.1 ") == 1 and b"HTTP/1.1 408" in got and seconds < 3


# ----------------------------------------------------------------------------- bodies
@pytest.mark.parametrize("trickle", [b"", b"x" * 10_000], ids=["stalled", "trickled"])
def test_a_slow_body_gets_408_and_a_closed_connection(port, trickle):
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    with _connect(port) as sock:
        sock.sendall(_headers("/predict", 100_000, content_type) + f"--{BOUNDARY}\r\n".encode())
        got, seconds = _until_closed(sock, 6, trickle=trickle)
    assert "request body too slow" in _json_error(got, 408) and seconds < 4


def test_a_body_at_a_normal_pace_is_served(port, jpeg):
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = part + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
    with _connect(port) as sock:
        sock.sendall(_headers("/predict", len(body), f"multipart/form-data; boundary={BOUNDARY}"))
        for i in range(0, len(body), 1000):  # 1 KB every 10 ms: well within the pace
            sock.sendall(body[i : i + 1000])
            time.sleep(0.01)
        sock.settimeout(60)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


# ----------------------------------------------------------------------------- compute
def test_a_model_call_past_the_deadline_is_503_and_the_server_recovers(serve_model, jpeg):
    app = create_app(serve_model["model"], limits=Limits(compute_timeout_s=0.5))
    engine, release = app.state.engine, threading.Event()
    real = engine.predictor.predict_rows
    engine.predictor.predict_rows = lambda *a, **k: (release.wait(30), real(*a, **k))[1]
    files = {"image": ("a.jpg", jpeg, "image/jpeg")}
    try:
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            start = time.monotonic()
            resp = client.post("/predict", files=files)
            assert resp.status_code == 503 and time.monotonic() - start < 5
            assert "did not answer within 0.5 s" in resp.json()["error"]
            time.sleep(0.6)  # the stuck call is now older than the deadline: refused at once
            start = time.monotonic()
            again = client.post("/predict", files=files)
            assert again.status_code == 503 and "busy" in again.json()["error"]
            assert time.monotonic() - start < 0.4
            both = [("images", (f"{n}.jpg", jpeg, "image/jpeg")) for n in "ab"]
            compared = client.post("/compare", files=both)  # its worker waits for the lock
            assert compared.status_code == 503, compared.text
            assert client.get("/health").status_code == 200
            release.set()  # the stuck call ends; a slow machine gets time for the real one
            engine.compute_timeout_s = 60
            assert client.post("/predict", files=files).status_code == 200
    finally:
        release.set()


# ----------------------------------------------------------------------------- shutdown
STUCK_SERVER = """
import sys, threading
from thumbview.inference import LoadedPredictor
from thumbview.serve.app import run
from thumbview.serve.uploads import Limits

LoadedPredictor.predict_rows = lambda self, *a, **k: threading.Event().wait()  # never returns
limits = Limits(compute_timeout_s=600, shutdown_grace_s=1)
run(sys.argv[1], port=int(sys.argv[2]), limits=limits, announce=lambda s: print(s, flush=True))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_promptly_with_a_request_stuck_in_the_model(serve_model, jpeg, sig):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STUCK_SERVER), str(serve_model["model"]), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert b"thumbview on" in proc.stdout.readline()  # said just before it listens
        _wait_listening(port)
        part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        body = part.encode() + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
        with _connect(port) as sock:
            sock.sendall(
                _headers("/predict", len(body), f"multipart/form-data; boundary={BOUNDARY}")
            )
            sock.sendall(body)
            time.sleep(1.0)  # the request is now in the model, which never returns
            start = time.monotonic()
            proc.send_signal(sig)
            proc.wait(timeout=15)
            seconds = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode()
    assert seconds < 6, (seconds, stderr[-2000:])
    # SIGTERM: uvicorn re-raises it once stopped, which ends the process (-15). Ctrl+C:
    # the interpreter would then join the stuck request thread; serve leaves with 130.
    assert proc.returncode == (-signal.SIGTERM if sig == signal.SIGTERM else 130), stderr[-2000:]
    assert "timeout graceful shutdown exceeded" in stderr
