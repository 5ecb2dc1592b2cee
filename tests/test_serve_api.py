"""The web API: every endpoint, and every way a request can be refused with a JSON error."""

from __future__ import annotations

import importlib.util
import io
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _serve_fixture import COVERAGE, build_serve_model

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from thumbview.inference import LoadedPredictor  # noqa: E402
from thumbview.serve import app as serve_app  # noqa: E402
from thumbview.serve.jobs import to_jsonable  # noqa: E402
from thumbview.serve.uploads import Limits, display_name  # noqa: E402


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def serve_model(tmp_path_factory) -> dict:
    return build_serve_model(tmp_path_factory.mktemp("serve"))


BASE = "http://127.0.0.1:8000"  # a loopback Host: the only kind the app serves by default


def _client(app, **kwargs) -> TestClient:
    return TestClient(app, base_url=BASE, **kwargs)


@pytest.fixture(scope="module")
def client(serve_model):
    with _client(serve_app.create_app(serve_model["model"])) as c:
        yield c


def _jpeg(path_or_array, size=None) -> bytes:
    img = Image.open(path_or_array) if isinstance(path_or_array, Path) else path_or_array
    if size:
        img = img.resize(size)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _file(data: bytes, name: str = "thumb.jpg", ctype: str = "image/jpeg"):
    return (name, data, ctype)


def _error(resp, status: int, *words: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]
    return body["error"]


# ----------------------------------------------------------------------------- page, health
def test_health_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["encoders"] == ["visual"]
    assert health["explain"] is False and health["target"] == "log10"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    _error(client.get("/no-such-page"), 404)
    _error(client.get("/static/../app.py"), 404)


# ----------------------------------------------------------------------------- predict
def test_api_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/static/swagger-ui/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    bundle = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "OAS31" in bundle.text  # Swagger UI 5 reads 3.1
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_predict_matches_the_library(client, serve_model):
    path = serve_model["paths"][0]
    data = _jpeg(path)
    resp = client.post("/predict", files={"image": _file(data)}, data={"title": "My video"})
    assert resp.status_code == 200, resp.text
    got = resp.json()["prediction"]
    loaded = LoadedPredictor.load(serve_model["model"])
    want = loaded.predict_images(
        [Image.open(io.BytesIO(data)).convert("RGB")], ["x"], ["My video"]
    )[0]
    assert got["image"] == "thumb.jpg" and got["title"] == "My video"
    assert got["coverage"] == resp.json()["coverage"] == COVERAGE  # the model's own coverage
    assert got["views"] == pytest.approx(want.views) and got["low"] <= got["views"] <= got["high"]
    no_title = client.post("/predict", files={"image": _file(data)}).json()["prediction"]
    assert no_title["title"] == ""


def test_predict_says_when_an_upload_lies_outside_the_training_range(client, serve_model):
    """The same check as `thumbview predict`: a training thumbnail is inside, a flat
    magenta frame is not, and the line names the descriptors that left the range."""
    inside = client.post("/predict", files={"image": _file(_jpeg(serve_model["paths"][0]))})
    assert inside.json()["prediction"]["warning"] == ""
    flat = _jpeg(Image.new("RGB", (320, 180), (255, 0, 255)))
    said = client.post("/predict", files={"image": _file(flat)}).json()["prediction"]["warning"]
    assert "outside the training range" in said and "hue: magenta" in said


def test_predict_bad_inputs(client, serve_model):
    good = _jpeg(serve_model["paths"][0])
    _error(client.post("/predict", data={"title": "x"}), 422, "missing field 'image'")
    not_image = _file(b"this is plain text, not a JPEG", "holiday.jpg")
    _error(client.post("/predict", files={"image": not_image}), 422, "holiday.jpg", "not an image")
    truncated = _file(good[: len(good) // 2])
    _error(client.post("/predict", files={"image": truncated}), 422, "thumb.jpg")
    _error(client.post("/predict", files={"image": _file(b"")}), 422, "empty")
    _error(
        client.post("/predict", files={"image": _file(good)}, data={"title": "t" * 301}), 422, "300"
    )
    sneaky = _file(good, "../../etc/passwd")
    assert (
        client.post("/predict", files={"image": sneaky}).json()["prediction"]["image"] == "passwd"
    )


def test_upload_caps(serve_model):
    path = serve_model["paths"][0]
    app = serve_app.create_app(
        serve_model["model"], limits=Limits(max_image_bytes=2000, max_image_pixels=10_000)
    )
    with _client(app) as c:
        big = _jpeg(path, (320, 180))  # > 2000 bytes
        _error(c.post("/predict", files={"image": _file(big)}), 413, "limit")
        small = _jpeg(Image.new("RGB", (200, 100), (200, 30, 30)))  # 20,000 px, few bytes
        assert len(small) < 2000
        _error(c.post("/predict", files={"image": _file(small)}), 413, "pixel")
        huge = {
            "content-length": str(50 * 2**20),
            "content-type": "multipart/form-data; boundary=x",
        }
        _error(c.post("/predict", content=b"--x--", headers=huge), 413, "request body")


# ----------------------------------------------------------------------------- compare
def test_compare_two_images_two_titles(client, serve_model):
    files = [
        ("images", _file(_jpeg(p), f"{n}.jpg"))
        for p, n in zip(serve_model["paths"][:2], "ab", strict=True)
    ]
    resp = client.post("/compare", files=files, data={"titles": ["First", "Second"]})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["images"] == ["a.jpg", "b.jpg"]
    assert len(out["candidates"]) == 4
    assert {(c["image"], c["title"]) for c in out["candidates"]} == {
        (i, t) for i in ("a.jpg", "b.jpg") for t in ("First", "Second")
    }
    # the one verdict the page renders, with its rank labels and the cross-product summaries
    assert isinstance(out["reliable"], bool) and out["verdict"] and len(out["rank_labels"]) == 4
    assert (out["rank_labels"][0] == "=1") == (out["reliable"] is False)
    assert len(out["by_image"]) == 2 and len(out["by_title"]) == 2 and out["chance_best"]
    same = [("images", _file(_jpeg(serve_model["paths"][0]), "x.jpg"))] * 2
    tie = client.post("/compare", files=same).json()
    assert tie["images"] == ["x.jpg", "x.jpg (2)"]
    assert tie["reliable"] is False and tie["rank_labels"] == ["=1", "=1"]
    # every candidate "=1": chance best is flagged as no ranking, said why; numbers kept
    from thumbview.compare import NO_CHANCE_BEST

    assert tie["chance_best_shown"] is False and tie["chance_best_note"] == NO_CHANCE_BEST
    assert sum(c["p_best"] for c in tie["candidates"]) == pytest.approx(1.0)
    assert out["chance_best_shown"] is (set(out["rank_labels"]) != {"=1"})
    described = client.get("/openapi.json").json()["paths"]["/compare"]["post"]["description"]
    assert "chance_best_shown" in described and "chance_best_note" in described


def test_compare_bad_inputs(client, serve_model):
    one = [("images", _file(_jpeg(serve_model["paths"][0])))]
    _error(client.post("/compare", files=one), 422, "between 2 and 6")
    _error(client.post("/compare", files=one * 7), 422, "between 2 and 6")
    _error(
        client.post("/compare", files=one * 2, data={"titles": list("abcd")}),
        422,
        "at most 3 titles",
    )
    _error(client.post("/compare", data={"titles": "x"}), 422, "missing field 'images'")
    bad = one + [("images", _file(b"GIF89a-but-not-really", "b.gif", "image/gif"))]
    _error(client.post("/compare", files=bad), 422, "b.gif")


# ----------------------------------------------------------------------------- errors, batching
def test_unexpected_errors_are_generic_500s(serve_model, monkeypatch):
    app = serve_app.create_app(serve_model["model"])

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail /home/user/model")

    monkeypatch.setattr(app.state.engine.predictor, "blocks", boom)
    with _client(app, raise_server_exceptions=False) as c:
        msg = _error(
            c.post("/predict", files={"image": _file(_jpeg(serve_model["paths"][0]))}), 500
        )
    assert "secret" not in msg and "server log" in msg


def test_concurrent_predictions_are_batched_and_each_gets_its_own(serve_model, monkeypatch):
    """Concurrent /predict requests share encoder calls, never run the model at the same
    time, and each gets the answer a request alone would get (image and title its own)."""
    app = serve_app.create_app(serve_model["model"], batching=serve_app.Batching(0.5, 8))
    engine = app.state.engine
    active, peak, guard = [0], [0], threading.Lock()
    real = engine.predictor.blocks

    def counting(images, titles, context=None):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(images, titles, context)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(engine.predictor, "blocks", counting)
    paths = serve_model["paths"][:6]
    data = [_jpeg(p) for p in paths]
    got: dict[int, dict] = {}

    def one(i: int) -> None:
        form = {"title": f"video {i}"}
        resp = c.post("/predict", files={"image": _file(data[i], f"{i}.jpg")}, data=form)
        got[i] = resp.json()["prediction"]

    with _client(app) as c:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(data))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert peak[0] == 1 and sum(engine.batcher.batch_sizes) == len(data)
    assert len(engine.batcher.batch_sizes) < len(data)  # at least two requests shared a call
    loaded = LoadedPredictor.load(serve_model["model"])
    for i, d in enumerate(data):
        image = Image.open(io.BytesIO(d)).convert("RGB")
        want = loaded.predict_images([image], [f"{i}.jpg"], [f"video {i}"])[0]
        assert got[i]["image"] == f"{i}.jpg" and got[i]["title"] == f"video {i}"
        for key in ("views", "low", "high", "log10"):
            assert got[i][key] == pytest.approx(getattr(want, key), rel=1e-6)


def test_a_failing_row_fails_only_its_own_request():
    from thumbview.serve.engine import Batching, MicroBatcher

    def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return [2 * x for x in items]

    batcher = MicroBatcher(run, Batching(window_s=1.0, max_batch=4))
    out: dict[int, object] = {}

    def call(x: int) -> None:
        try:
            out[x] = batcher.submit(x)
        except ValueError as e:
            out[x] = str(e)

    threads = [threading.Thread(target=call, args=(x,)) for x in (1, 13, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert out == {1: 2, 13: "unlucky", 3: 6} and batcher.batch_sizes[0] == 3


# After a block of 3x the threshold is freed, is one of 1.5x still mmapped (so freeing it
# returns it to the system)? glibc's sliding threshold tops out at 32 MiB, so 3x <= 32 MiB.
_HEAP_PROBE = """
import ctypes, sys
from thumbview.serve.engine import MMAP_THRESHOLD_BYTES as T, steady_heap
fields = ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost").split()
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.mallinfo2.restype = [ctypes.c_void_p], Info
if sys.argv[1] == "steady":
    assert steady_heap()
libc.free(libc.malloc(3 * T))
block = libc.malloc(3 * T // 2)
print(libc.mallinfo2().hblkhd >= 3 * T // 2)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_steady_heap_keeps_large_blocks_returnable():
    """Without it glibc's threshold rises after a large free and later blocks stay in the heap
    (the micro-batched server's memory doubled that way); with it they stay mmapped."""

    def probe(mode: str) -> str:
        cmd = [sys.executable, "-c", _HEAP_PROBE, mode]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()

    assert probe("default") == "False" and probe("steady") == "True"


def test_steady_heap_without_glibc_says_false(monkeypatch):
    import ctypes.util

    from thumbview.serve.engine import steady_heap

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert steady_heap() is False


# ----------------------------------------------------------------------------- explain
def test_explain_without_a_study_is_409(client, serve_model):
    resp = client.post("/explain", files={"image": _file(_jpeg(serve_model["paths"][0]))})
    _error(resp, 409, "--sae")
    _error(client.get("/explain/examples/0/0"), 404)


@pytest.fixture(scope="module")
def sae_study(tiny_clip_dir, tmp_path_factory) -> dict:
    """A random SAE over the tiny CLIP, and a hand-written study covering all its latents."""
    pytest.importorskip("thumbview.sae.train")
    from thumbview.sae.architectures import build_sae
    from thumbview.sae.folder import save_sae
    from thumbview.sae.model import SaeConfig

    root = tmp_path_factory.mktemp("sae-study")
    sae = build_sae(SaeConfig(d_in=32, expansion_factor=2, arch="relu-l1"), seed=3)
    extra = {"clip_model": str(tiny_clip_dir), "clip_layer": -2, "clip_tokens": "cls"}
    sae_dir = save_sae(sae, root / "sae", extra)
    (root / "ex").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 18), (40 * i, 90, 160)).save(root / "ex" / f"e{i}.png")
    study = root / "study"
    study.mkdir()
    table = pd.DataFrame(
        {
            "latent_feature_index": range(64),
            "ratio": np.linspace(0.5, 2.0, 64),
            "q": 0.01,
            "group_top_views": 1e4,
        }
    )
    table.to_csv(study / "all_features.csv", index=False)
    examples = {str(k): ["e0.png", "e1.png"] for k in range(64)}
    (study / "examples.json").write_text(
        json.dumps({"examples": examples, "dataset_root": str(root / "ex")})
    )
    (study / "summary.json").write_text(json.dumps({"n_latents": 64}))
    return {"sae": sae_dir, "study": study}


def test_explain_with_a_study(serve_model, sae_study, monkeypatch):
    app = serve_app.create_app(serve_model["model"], sae_study["sae"], sae_study["study"])

    def no_reload(*args, **kwargs):
        raise AssertionError("the SAE must be loaded once, at start-up")

    monkeypatch.setattr("thumbview.inference.sae.load_sae_encoder", no_reload)
    with _client(app) as c:
        assert c.get("/health").json()["explain"] is True
        resp = c.post(
            "/explain", files={"image": _file(_jpeg(serve_model["paths"][0]))}, data={"top": "4"}
        )
        assert resp.status_code == 200, resp.text
        feats = resp.json()["features"]
        assert 1 <= len(feats) <= 4
        acts = [f["activation"] for f in feats]
        assert acts == sorted(acts, reverse=True) and all(f["ratio"] is not None for f in feats)
        url = feats[0]["examples"][1]
        assert url == f"/explain/examples/{feats[0]['latent']}/1"
        img = c.get(url)
        assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (32, 18)
        _error(c.get(f"/explain/examples/{feats[0]['latent']}/2"), 404)
        _error(c.get("/explain/examples/9999/0"), 404)
        two = [
            ("images", _file(_jpeg(p), f"{i}.jpg")) for i, p in enumerate(serve_model["paths"][:2])
        ]
        sae = c.post("/compare", files=two).json()["sae"]
        assert sae and all(len(d["activations"]) == 2 for d in sae)
        _error(c.post("/explain", files={"image": _file(b"nope")}), 422, "not an image")
        _error(
            c.post(
                "/explain",
                files={"image": _file(_jpeg(serve_model["paths"][0]))},
                data={"top": "0"},
            ),
            422,
            "top",
        )


# ----------------------------------------------------------------------------- frames
def _video(path: Path, seconds: float = 3.0, fps: int = 10) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 90))
    for i in range(int(seconds * fps)):
        frame = np.zeros((90, 160, 3), np.uint8)
        frame[:] = (30, 60 + 60 * (i // 10), 200 - 50 * (i // 10))  # three "shots"
        cv2.rectangle(frame, (20 + i, 20), (60 + i, 60), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def _wait(c, job_id: str, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = c.get(f"/frames/{job_id}").json()
        assert 0.0 <= job["progress"] <= 1.0
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError("frames job did not finish")


@pytest.mark.skipif(
    importlib.util.find_spec("thumbview.frames.rank") is None, reason="frames.rank not written yet"
)
def test_frames_job_end_to_end(client, tmp_path, monkeypatch):
    def no_reload(*args, **kwargs):
        raise AssertionError("frame jobs must use the model loaded at start-up")

    monkeypatch.setattr(LoadedPredictor, "load", no_reload)
    video = _video(tmp_path / "clip.mp4").read_bytes()
    resp = client.post(
        "/frames",
        files={"video": ("my clip.mp4", video, "video/mp4")},
        data={"title": "T", "top": "2"},
    )
    assert resp.status_code == 202, resp.text
    job = _wait(client, resp.json()["job_id"])
    assert job["status"] == "done" and job["progress"] == 1.0, job["error"]
    assert job["stage"] == "ranking frames"  # the last task of rank_frames reached the page
    choices = job["result"]["choices"]
    assert 1 <= len(choices) <= 2
    text = json.dumps(job["result"])
    assert "/tmp" not in text and str(tmp_path) not in text  # no server paths leak
    still = client.get(choices[0]["path"])
    assert still.status_code == 200 and Image.open(io.BytesIO(still.content)).format == "JPEG"
    _error(client.get(f"/frames/{job['job_id']}/stills/../../etc/passwd"), 404)
    _error(client.get(f"/frames/{job['job_id']}/stills/frames.json"), 404)


def test_frames_bad_inputs(client):
    _error(client.get("/frames/0123456789abcdef01234567"), 404, "no frames job")
    _error(client.get("/frames/nope/stills/x.jpg"), 404)
    _error(
        client.post("/frames", files={"video": ("v.mp4", b"not a video at all", "video/mp4")}),
        422,
        "v.mp4: not a video",
    )
    _error(client.post("/frames", data={"title": "x"}), 422, "missing field 'video'")


def test_frames_upload_cap_and_busy_queue(serve_model, tmp_path):
    gate = threading.Event()
    app = serve_app.create_app(
        serve_model["model"], limits=Limits(max_video_bytes=50_000, max_frame_jobs=1)
    )
    app.state.jobs._rank = lambda video, out_dir, progress, **kw: gate.wait(10) and {"choices": []}
    video = _video(tmp_path / "v.mp4", seconds=1.0)
    with _client(app) as c:
        big = ("v.avi", b"\0" * 60_000, "video/x-msvideo")
        _error(c.post("/frames", files={"video": big}), 413, "limit")
        first = c.post("/frames", files={"video": ("v.mp4", video.read_bytes(), "video/mp4")})
        assert first.status_code == 202
        second = c.post("/frames", files={"video": ("v.mp4", video.read_bytes(), "video/mp4")})
        _error(second, 429, "already being ranked")
        gate.set()
        assert _wait(c, first.json()["job_id"])["status"] == "done"


# ----------------------------------------------------------------------------- helpers
def test_results_never_carry_server_paths(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    stills: dict = {}
    got = to_jsonable(
        {
            "still": str(tmp_path / "a.jpg"),
            "other": Path("/etc/passwd"),
            "n": np.float32(2.5),
            "bad": float("nan"),
        },
        tmp_path,
        "/frames/j/stills/",
        stills,
    )
    assert got == {"still": "/frames/j/stills/a.jpg", "other": "passwd", "n": 2.5, "bad": None}
    assert stills == {"a.jpg": (tmp_path / "a.jpg").resolve()}
    assert display_name("C:\\Users\\me\\..\\x<y>.png", 0) == "x_y_.png"
    assert display_name("../..", 3) == "image 4"


# ----------------------------------------------------------------------------- context (issue 28)
@pytest.fixture(scope="module")
def context_client(tmp_path_factory):
    from _serve_fixture import build_context_model

    model = build_context_model(tmp_path_factory.mktemp("ctx"))
    with _client(serve_app.create_app(model["model"])) as c:
        yield c, model["paths"]


def test_context_fields_are_used_and_what_was_assumed_is_said(context_client, tmp_path):
    """Without a date the page's prediction is for the training data's median video, inside
    its 2005-2015 range; a given date is used (and not said to be assumed); an input the
    model never learned from is said to be ignored; every answer says what it predicts."""
    c, paths = context_client
    files = {"image": _file(_jpeg(paths[0]))}
    plain = c.post("/predict", files=files).json()
    year = int(plain["assumed"].removeprefix("assumed: published ")[:4])
    assert 2005 <= year <= 2015 and plain["prediction"]["warning"] == ""
    assert "after upload" in plain["predicts"] and plain["ignored"] == ""
    dated = c.post("/predict", files=files, data={"published": "2014-06-01"}).json()
    assert "published" not in dated["assumed"]
    assert dated["prediction"]["views"] != plain["prediction"]["views"]
    subs = c.post("/predict", files=files, data={"subscribers": "5000000"}).json()
    assert subs["ignored"].startswith("ignored: the subscriber count given")
    assert subs["prediction"]["views"] == plain["prediction"]["views"]
    both = [("images", _file(_jpeg(p), f"{i}.jpg")) for i, p in enumerate(paths[:2])]
    compared = c.post("/compare", files=both, data={"published": "2006-01-01"}).json()
    assert "published" not in compared["assumed"] and compared["predicts"]
    assert isinstance(compared["tie"], bool) and "no_skill_note" in compared
    _error(c.post("/predict", files=files, data={"published": "soon"}), 422, "not a date")
    _error(c.post("/compare", files=both, data={"channel_videos": "0"}), 422, "channel videos")
    assert "after upload" in c.get("/health").json()["predicts"]
    video = _video(tmp_path / "clip.mp4").read_bytes()
    resp = c.post("/frames", files={"video": ("v.mp4", video, "video/mp4")},
                  data={"top": "1", "published": "2010-01-01"})  # fmt: skip
    job = _wait(c, resp.json()["job_id"])
    assert job["status"] == "done", job["error"]
    assert "published" not in job["result"]["assumed"] and job["result"]["predicts"]


def test_a_model_without_a_hold_out_says_its_skill_was_never_checked(client, serve_model):
    """The shared serve model was trained with no hold-out: nothing shows it beats the median."""
    files = {"image": _file(_jpeg(serve_model["paths"][0]))}
    got = client.post("/predict", files=files, data={"published": "2020-01-01"}).json()
    assert got["no_skill_note"].startswith("no demonstrated skill: this model was not checked")
    assert got["ignored"].startswith("ignored: the publication date given")


def test_explain_answers_carry_the_latents_names():
    """An imagenet SAE's latents are named by ImageNet classes; the API passes the name on."""
    from types import SimpleNamespace

    from thumbview.serve.engine import _feature_json

    f = SimpleNamespace(latent=3, name="espresso, cup, plate", activation=1.5, ratio=1.2, q=0.01,
                        group_views=3000.0, examples=("a.jpg",))  # fmt: skip
    assert _feature_json(f)["name"] == "espresso, cup, plate"
    assert _feature_json(SimpleNamespace(**{**vars(f), "name": None}))["name"] is None
