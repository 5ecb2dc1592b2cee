"""Web probes: host allow-list, same-origin POSTs, streamed body caps, form checks, headers,
video frame-size cap, and `serve` refusing a bad model before it announces its address."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from _serve_fixture import build_serve_model

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from thumbview.serve import app as serve_app  # noqa: E402
from thumbview.serve.security import LOOPBACK_HOSTS, Security  # noqa: E402
from thumbview.serve.uploads import Limits  # noqa: E402

BASE = "http://127.0.0.1:8000"
SMALL = Limits(max_image_bytes=100_000, max_images=2, max_video_bytes=200_000)


@pytest.fixture(scope="session")
def serve_model(tmp_path_factory) -> dict:
    return build_serve_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def app(serve_model):
    return serve_app.create_app(serve_model["model"], limits=SMALL)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def jpeg(serve_model) -> bytes:
    buf = io.BytesIO()
    Image.open(serve_model["paths"][0]).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def _status(resp, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    if status >= 400:
        body = resp.json()
        assert set(body) == {"error"}, body
        assert all(w in body["error"] for w in words), body["error"]


# ----------------------------------------------------------------------------- headers
@pytest.mark.parametrize("path", ["/", "/health", "/static/app.js", "/docs", "/no-such-page"])
def test_every_response_carries_the_security_headers(client, path):
    resp = client.get(path)
    assert resp.headers["x-content-type-options"] == "nosniff"
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


# ----------------------------------------------------------------------------- host
@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("LOCALHOST:8000", 200),
        ("[::1]:8000", 200),
        ("evil.example", 400),  # a rebound DNS name pointing at 127.0.0.1
        ("127.0.0.1.evil.example:8000", 400),
        ("evil.example:8000@127.0.0.1", 400),
        ("", 400),
    ],
)
def test_host_allow_list(client, host, status):
    _status(client.get("/health", headers={"host": host}), status)


def test_host_allow_list_is_configurable(serve_model):
    assert Security().with_host("0.0.0.0").allowed_hosts == LOOPBACK_HOSTS
    extra = Security(allowed_hosts=LOOPBACK_HOSTS + ("thumbs.lan",)).with_host("10.0.0.5")
    app = serve_app.create_app(serve_model["model"], security=extra)
    with TestClient(app, base_url=BASE) as c:
        for host in ("thumbs.lan:8000", "10.0.0.5", "127.0.0.1"):
            _status(c.get("/health", headers={"host": host}), 200)
        _status(c.get("/health", headers={"host": "evil.example"}), 400, "not served here")


# ----------------------------------------------------------------------------- origin
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 200),  # curl, scripts: no browser page involved
        ({"origin": BASE}, 200),  # the page itself
        ({"referer": BASE + "/"}, 200),
        ({"origin": BASE, "sec-fetch-site": "same-origin"}, 200),
        ({"origin": "http://evil.example"}, 403),
        ({"origin": "null"}, 403),  # sandboxed frame, file:// page
        ({"origin": "http://127.0.0.1:9999"}, 403),  # another local app
        ({"origin": "https://127.0.0.1:8000"}, 403),
        ({"referer": "http://evil.example/page"}, 403),
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"sec-fetch-site": "same-site", "origin": BASE}, 403),
    ],
)
def test_state_changing_posts_come_from_the_page(client, jpeg, headers, status):
    resp = client.post("/predict", files={"image": ("a.jpg", jpeg, "image/jpeg")}, headers=headers)
    _status(resp, status)


def test_reads_are_not_origin_checked(client):
    _status(client.get("/health", headers={"origin": "http://evil.example"}), 200)


# ----------------------------------------------------------------------------- form parts
def test_one_image_part_per_request(client, jpeg):
    two = [("image", ("a.jpg", jpeg, "image/jpeg")), ("image", ("b.jpg", jpeg, "image/jpeg"))]
    _status(client.post("/predict", files=two), 400, "'image'")
    titles = client.post(
        "/predict", files={"image": ("a.jpg", jpeg, "image/jpeg")}, data={"title": ["x", "y"]}
    )
    _status(titles, 400, "'title'")
    video_twice = [("video", ("a.mp4", b"x", "video/mp4"))] * 2
    _status(client.post("/frames", files=video_twice), 400, "'video'")


def test_titles_must_be_utf8(client, jpeg):
    image = {"image": ("a.jpg", jpeg, "image/jpeg")}
    _status(client.post("/predict", files=image, data={"title": b"caf\xe9 \xff"}), 422, "UTF-8")
    ok = client.post("/predict", files=image, data={"title": "café 🎉".encode()})
    _status(ok, 200)
    assert ok.json()["prediction"]["title"] == "café 🎉"
    two = [("images", ("a.jpg", jpeg, "image/jpeg")), ("images", ("b.jpg", jpeg, "image/jpeg"))]
    _status(client.post("/compare", files=two, data={"titles": [b"ok", b"\xc3"]}), 422, "UTF-8")


# ----------------------------------------------------------------------------- body cap
HEAD = (
    b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)
CHUNK = 64 * 1024


def _chunked_post(app, path: str) -> tuple[int, int, dict]:
    """POST an endless chunked multipart body (no Content-Length) straight into the ASGI
    app: (status, bytes the app read, JSON body)."""
    read, sent = [0], []

    async def receive() -> dict:
        body = HEAD if read[0] == 0 else b"\0" * CHUNK
        read[0] += len(body)
        assert read[0] < 20 * 2**20, "the app kept reading far past the cap"
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"multipart/form-data; boundary=x"),
        (b"transfer-encoding", b"chunked"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], read[0], json.loads(body)


@pytest.mark.parametrize("path", ["/predict", "/compare", "/explain", "/frames"])
def test_chunked_uploads_stop_at_the_cap(app, path):
    cap = SMALL.max_request_bytes(video=path == "/frames")
    status, read, body = _chunked_post(app, path)
    assert status == 413 and "limit" in body["error"]
    assert read <= cap + CHUNK + len(HEAD)  # nothing read (or spooled) beyond the cap


def test_chunked_upload_through_the_client(client):
    def endless():
        yield HEAD
        for _ in range(400):  # 25 MB: far above the cap
            yield b"\0" * CHUNK

    headers = {"content-type": "multipart/form-data; boundary=x"}
    _status(client.post("/predict", content=endless(), headers=headers), 413, "limit")


# ----------------------------------------------------------------------------- video bomb
def test_video_frames_above_the_cap_are_refused_at_upload(serve_model, tmp_path):
    import av

    path = tmp_path / "big.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    app = serve_app.create_app(serve_model["model"], limits=Limits(max_frame_pixels=50_000))
    with TestClient(app, base_url=BASE) as c:
        video = {"video": ("big.mp4", path.read_bytes(), "video/mp4")}
        _status(c.post("/frames", files=video), 413, "big.mp4", "320x240", "0.05 MP limit")


# ----------------------------------------------------------------------------- start-up
def test_serve_refuses_a_bad_model_before_announcing(tmp_path):
    from typer.testing import CliRunner

    from thumbview.cli import app as cli

    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "nomodel")])
    assert result.exit_code == 2, result.output
    assert "http://" not in result.output and "Traceback" not in result.output
    announced: list[str] = []
    with pytest.raises(ValueError):
        serve_app.run(tmp_path / "nomodel", announce=announced.append)
    assert announced == []
