"""Data API backend against a fake API + thumbnail host on 127.0.0.1 (no network).

The server injects the failures a real collection meets: 429 with Retry-After, 500s,
bodies cut short, slow answers, missing thumbnail sizes, deleted videos.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from thumbview.collect import (
    CollectConfig,
    DataApiBackend,
    FilterConfig,
    HttpClient,
    QuotaTracker,
    RetryPolicy,
    Store,
    collect_ids,
    collect_search,
    refresh,
)
from thumbview.collect.store import utc_now
from thumbview.collect.thumbs import THUMB_HOSTS
from thumbview.data.images import load_image

SIZES = {"maxres": (128, 72), "standard": (64, 48), "high": (48, 36), "medium": (32, 18), "default": (24, 18)}  # fmt: skip
TITLES = ["Café ☕ \"quoted\", comma", "日本語のタイトル 🎉", "العربية 😀 Ελληνικά", "  spaces  ", "emoji 👩‍👩‍👧‍👦"]  # fmt: skip
# The fake serves thumbnails from 127.0.0.1: allowed here, on top of YouTube's image hosts.
LOCAL_HOSTS = THUMB_HOSTS | {"127.0.0.1"}
POLICY = RetryPolicy(
    attempts=4, base_delay=0.001, max_delay=0.01, max_retry_after=0.01, timeout=0.5
)


def vid(i: int) -> str:
    return f"vid{i:08d}"


class FakeYouTube:
    """State of the fake: videos, which sizes exist, and faults queued per path."""

    def __init__(self, n: int) -> None:
        self.videos = {
            vid(i): {
                "title": TITLES[i % len(TITLES)] + f" #{i}",
                "views": 1000 + i,
                "channel": f"UC{i % 3:022d}",
                "duration": "PT45S" if i % 10 == 7 else f"PT{i % 5 + 2}M{i % 60}S",
                "sizes": set(SIZES) - ({"maxres"} if i % 4 == 1 else set()),
                "broken_sizes": {"maxres"} if i % 9 == 2 else set(),  # listed, 404 on the host
            }
            for i in range(n)
        }
        self.deleted: set[str] = set()
        self.faults: dict[str, list[str]] = defaultdict(list)  # path -> actions, popped in order
        self.thumb_delay = 0.0
        self.calls: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.base = ""
        self._jpeg: dict[tuple[int, int], bytes] = {}

    def jpeg(self, size: tuple[int, int]) -> bytes:
        if size not in self._jpeg:
            buffer = io.BytesIO()
            Image.new("RGB", size, (10, 120, 200)).save(buffer, format="JPEG")
            self._jpeg[size] = buffer.getvalue()
        return self._jpeg[size]

    def video_item(self, video_id: str) -> dict:
        v = self.videos[video_id]
        thumbs = {
            k: {
                "url": f"{self.base}/vi/{quote(video_id, safe='')}/{k}.jpg",
                "width": w,
                "height": h,
            }
            for k, (w, h) in SIZES.items()
            if k in v["sizes"]
        }
        return {
            "kind": "youtube#video",
            "id": video_id,
            "snippet": {
                "publishedAt": f"2024-0{int(video_id[-1], 36) % 9 + 1}-15T10:00:00Z",
                "channelId": v["channel"],
                "title": v["title"],
                "thumbnails": thumbs,
                "channelTitle": "Chan " + v["channel"][-1],
                "liveBroadcastContent": "none",
            },
            "contentDetails": {"duration": v["duration"]},
            "statistics": {"viewCount": str(v["views"]), "likeCount": "7", "commentCount": "2"},
        }


class Handler(BaseHTTPRequestHandler):
    fake: FakeYouTube

    def log_message(self, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.fake.lock:
            self.fake.calls[url.path] += 1
            action = self.fake.faults[url.path].pop(0) if self.fake.faults[url.path] else ""
        if action and self._fault(action):
            return
        if url.path.startswith("/vi/"):
            return self._thumb(url.path)
        api = {
            "/v3/search": self._search,
            "/v3/videos": self._videos,
            "/v3/channels": self._channels,
        }
        if url.path not in api or query.get("key") != "test-key":
            return self._send(403, b'{"error": {"errors": [{"reason": "keyInvalid"}]}}')
        self._send(200, json.dumps(api[url.path](query)).encode(), "application/json")

    def _fault(self, action: str) -> bool:
        if action == "slow":
            time.sleep(0.8)  # past the client's timeout
            return False
        if action == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"\xff\xd8\xff" + b"\0" * 100)
            return True
        headers = {"Retry-After": "1"} if action == "429" else {}
        self._send(int(action), b"busy", headers=headers)
        return True

    def _thumb(self, path: str) -> None:
        time.sleep(self.fake.thumb_delay)
        _, _, video_id, name = path.split("/")
        v = self.fake.videos.get(unquote(video_id))
        size = name.removesuffix(".jpg")
        if v is None or size not in v["sizes"] or size in v["broken_sizes"]:
            return self._send(404, b"")
        self._send(200, self.fake.jpeg(SIZES[size]), "image/jpeg")

    def _search(self, q: dict) -> dict:
        start = int(q.get("pageToken", 0))
        ids = [v for i, v in enumerate(self.fake.videos) if i % 2 == (q["q"] == "Tech")]
        ids = ids + ids[:5]  # the two queries share nothing, but each repeats some ids
        end = start + int(q["maxResults"])
        page = {"items": [{"id": {"kind": "youtube#video", "videoId": v}} for v in ids[start:end]]}
        return page | ({"nextPageToken": str(end)} if end < len(ids) else {})

    def _videos(self, q: dict) -> dict:
        ids = q["id"].split(",")
        assert len(ids) <= 50
        ok = [v for v in ids if v in self.fake.videos and v not in self.fake.deleted]
        return {"items": [self.fake.video_item(v) for v in ok]}

    def _channels(self, q: dict) -> dict:
        items = [{"id": c, "statistics": {"subscriberCount": str(int(c[2:]) * 100 + 5)}} for c in q["id"].split(",")]  # fmt: skip
        return {"items": items}

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", headers: dict | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake() -> Iterator[FakeYouTube]:
    with serve_fake(60) as state:
        yield state


@contextmanager
def serve_fake(n: int, handler_class: type[Handler] | None = None) -> Iterator[FakeYouTube]:
    """A FakeYouTube of `n` videos served on 127.0.0.1 for the duration of the block."""
    state = FakeYouTube(n)
    handler = type("BoundHandler", (handler_class or Handler,), {"fake": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *args: None  # clients that timed out close early: expected
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def cfg(**settings: object) -> CollectConfig:
    """A CollectConfig that accepts the fake's thumbnail host."""
    return CollectConfig(thumb_hosts=LOCAL_HOSTS, **settings)


def backend(fake: FakeYouTube, limit: int = 10_000) -> DataApiBackend:
    http = HttpClient(POLICY, seed=0)
    return DataApiBackend(
        "test-key", http=http, quota=QuotaTracker(limit), base_url=fake.base + "/v3"
    )


def check_dataset(root: Path) -> pd.DataFrame:
    """The invariants: every row has a whole image, no duplicates, no temp files left."""
    table = pd.read_csv(root / "metadata.csv", keep_default_na=False)
    assert table["video_id"].is_unique and table["file_name"].is_unique
    for name, w, h in zip(table["file_name"], table["width"], table["height"], strict=True):
        assert load_image(root / name).size == (w, h)
    assert not list(root.rglob("*.tmp"))
    return table


def test_search_end_to_end_with_faults(fake: FakeYouTube, tmp_path: Path) -> None:
    fake.deleted = {vid(4)}
    fake.videos[vid(6)]["sizes"] = set()  # no thumbnail at all
    fake.videos[vid(8)]["views"] = 3  # below --min-views
    fake.faults["/v3/videos"] = ["500", "slow"]
    fake.faults["/v3/search"] = ["429"]
    fake.faults[f"/vi/{vid(0)}/maxres.jpg"] = ["429", "truncate", "500"]
    fake.faults[f"/vi/{vid(2)}/standard.jpg"] = ["slow"]
    api = backend(fake)
    config = cfg(filters=FilterConfig(min_views=100), workers=4)
    summary = collect_search(tmp_path, ["AI", "Tech"], backend=api, per_query=35, config=config)

    shorts = {vid(i) for i in range(60) if i % 10 == 7}
    assert dict(summary.skipped) == {"unavailable": 1, "no thumbnail": 1, "below min views": 1, "short": len(shorts)}  # fmt: skip
    assert summary.collected == 60 - 3 - len(shorts) and summary.stopped is None
    # 2 queries x 1 page... 30 ids + 5 repeats = 35 results in pages of 35 (maxResults<=50).
    videos_calls = 2  # 60 unique ids -> 2 batches of 50 at most
    assert summary.quota_used == 2 * 100 + videos_calls + 1  # 3 channels: one channels.list
    assert api.http.retries >= 6

    raw = check_dataset(tmp_path)
    table = raw.set_index("video_id")
    assert len(table) == summary.collected == summary.total_rows
    assert table.loc[vid(0), "title"] == TITLES[0] + " #0"
    assert table.loc[vid(3), "title"] == TITLES[3] + " #3"  # leading/trailing spaces kept
    assert (table.loc[vid(0), "width"], table.loc[vid(0), "height"]) == SIZES["maxres"]
    assert (table.loc[vid(1), "width"], table.loc[vid(2), "width"]) == (64, 64)  # sd fallback
    assert table.loc[vid(5), "subscribers"] == 205 and table.loc[vid(5), "duration_s"] == 125.0
    assert table.loc[vid(0), "query"] == "AI" and table.loc[vid(1), "query"] == "Tech"
    assert list(raw.columns) == [
        "file_name", "views", "title", "video_id", "channel_id", "channel_title", "published_at",
        "subscribers", "duration_s", "likes", "comments", "thumbnail_url", "width", "height",
        "query", "collected_at",
    ]  # fmt: skip


def test_datasets_imagefolder_and_thumbview_loader(fake: FakeYouTube, tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    summary = collect_ids(
        tmp_path / "ds", [vid(i) for i in range(12)], backend=backend(fake), config=cfg()
    )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "ds"), cache_dir=str(tmp_path / "hf"))  # fmt: skip
    train = loaded["train"]
    assert train.num_rows == summary.total_rows == 11  # vid(7) is a Short
    assert sorted(train["title"]) == sorted(
        fake.videos[vid(i)]["title"] for i in range(12) if i != 7
    )
    assert train[0]["image"].size[0] > 0
    dataset_mod = pytest.importorskip("thumbview.data.dataset")
    ds = dataset_mod.load_dataset(tmp_path / "ds")
    assert len(ds) == 11 and ds.report.n_kept == 11


def test_quota_stops_cleanly_and_resumes(fake: FakeYouTube, tmp_path: Path) -> None:
    first = collect_search(
        tmp_path, ["AI"], backend=backend(fake, limit=101), per_query=35, config=cfg()
    )
    assert first.stopped == "quota" and first.quota_used == 101  # search + one videos.list
    assert first.collected == 0 and first.remaining == 30
    with Store(tmp_path) as store:
        assert store.count() == 0 and len(store.pending(3)) == 30
    # Same day, same limit: the spent units are remembered, nothing more is spent.
    again = collect_search(
        tmp_path, ["AI"], backend=backend(fake, limit=101), per_query=35, config=cfg()
    )
    assert again.quota_used == 0 and again.stopped == "quota"
    done = collect_search(
        tmp_path, ["AI"], backend=backend(fake, limit=200), per_query=35, config=cfg()
    )
    assert done.stopped is None and done.quota_used == 2  # no second search.list
    assert done.total_rows == 30  # 35 results, 5 of them repeats
    check_dataset(tmp_path)


def test_refresh_keeps_history(fake: FakeYouTube, tmp_path: Path) -> None:
    collect_ids(tmp_path, [vid(i) for i in range(5)], backend=backend(fake), config=cfg())
    before = pd.read_csv(tmp_path / "metadata.csv").set_index("video_id")
    for i in range(5):
        fake.videos[vid(i)]["views"] += 500
    fake.deleted = {vid(4)}
    summary = refresh(tmp_path, backend=backend(fake), older_than=timedelta(0))
    assert (summary.refreshed, summary.unavailable, summary.quota_used) == (4, 1, 1)
    after = pd.read_csv(tmp_path / "metadata.csv").set_index("video_id")
    assert after.loc[vid(0), "views"] == before.loc[vid(0), "views"] + 500
    assert after.loc[vid(4), "views"] == before.loc[vid(4), "views"]  # deleted: last known kept
    assert after.loc[vid(0), "collected_at"] > before.loc[vid(0), "collected_at"]
    with Store(tmp_path) as store:
        history = store.history(vid(0))
        assert [n for n, _ in history] == [1000, 1500] and history[0][1] < history[1][1]
    # A second refresh right away skips rows refreshed within `older_than`.
    assert refresh(tmp_path, backend=backend(fake), older_than=timedelta(hours=1)).refreshed == 0


def test_transient_failures_are_not_retried_forever(fake: FakeYouTube, tmp_path: Path) -> None:
    fake.faults[f"/vi/{vid(0)}/maxres.jpg"] = ["500"] * 100
    config = cfg(max_attempts=2)
    for _ in range(3):
        summary = collect_ids(tmp_path, [vid(0), vid(1)], backend=backend(fake), config=config)
    assert summary.remaining == 0 and summary.total_rows == 1
    with Store(tmp_path) as store:
        skipped = store.skipped().set_index("video_id")
    assert skipped.loc[vid(0), "reason"] == "thumbnail fetch failed"
    assert skipped.loc[vid(0), "attempts"] == 2  # two runs tried, the third left it alone


CRASH_SCRIPT = """
import sys
from thumbview.collect import CollectConfig, DataApiBackend, HttpClient, RetryPolicy, collect_ids
http = HttpClient(RetryPolicy(attempts=3, base_delay=0.001, timeout=2.0))
api = DataApiBackend("test-key", http=http, base_url=sys.argv[2])
ids = ["vid%08d" % i for i in range(60)]
collect_ids(sys.argv[1], ids, backend=api, config=CollectConfig(workers=4, export_every=5, thumb_hosts=frozenset({"127.0.0.1"})))
"""


def test_sigkill_mid_run_then_resume(fake: FakeYouTube, tmp_path: Path) -> None:
    out = tmp_path / "crash"
    fake.thumb_delay = 0.05
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(out), fake.base + "/v3"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _rows(out) < 10:
            time.sleep(0.02)
        assert proc.poll() is None, "the collector finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = _rows(out)
    assert 10 <= killed_at < 54
    fake.thumb_delay = 0.0
    summary = collect_ids(out, [vid(i) for i in range(60)], backend=backend(fake), config=cfg())
    assert summary.collected == 54 - killed_at and summary.total_rows == 54
    table = check_dataset(out)
    assert sorted(table["video_id"]) == sorted(vid(i) for i in range(60) if i % 10 != 7)
    images = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.jpg")}
    assert images == set(table["file_name"])  # no orphans left behind


def _rows(root: Path) -> int:
    if not (root / "collect.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(f"file:{root / 'collect.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_cli_ids_with_shard(fake: FakeYouTube, tmp_path: Path) -> None:
    from thumbview.cli.collect import app

    ids_file = tmp_path / "ids.txt"
    lines = [f"https://www.youtube.com/watch?v={vid(i)}&t=3" for i in range(10)] + ["junk", ""]
    ids_file.write_text("\n".join(lines), encoding="utf-8")
    env = {"YOUTUBE_API_KEY": "test-key", "YOUTUBE_API_BASE_URL": fake.base + "/v3"}
    env["THUMBVIEW_THUMB_HOSTS"] = "127.0.0.1"
    totals = 0
    for shard in ("0/2", "1/2"):
        args = ["ids", str(tmp_path / shard[0]), str(ids_file), "--backend", "api", "--shard", shard, "--include-shorts"]  # fmt: skip
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "collected" in result.output
        totals += len(pd.read_csv(tmp_path / shard[0] / "metadata.csv"))
    assert totals == 10
    bad = CliRunner().invoke(app, ["ids", str(tmp_path / "x"), str(ids_file), "--shard", "2/2"])
    assert bad.exit_code == 2 and "--shard" in bad.output


def test_bad_key_is_a_clear_error(fake: FakeYouTube, tmp_path: Path) -> None:
    from thumbview.collect import CollectError

    api = DataApiBackend("wrong", http=HttpClient(POLICY), base_url=fake.base + "/v3")
    with pytest.raises(CollectError, match="refused videos.list"):
        collect_ids(tmp_path, [vid(0)], backend=api, config=cfg())
    assert os.path.exists(tmp_path / "metadata.csv")  # exported even on the way out


def _thumb_calls(fake: FakeYouTube) -> int:
    return sum(n for path, n in fake.calls.items() if path.startswith("/vi/"))


def test_looser_filters_collect_earlier_filter_skips(fake: FakeYouTube, tmp_path: Path) -> None:
    ids = [vid(i) for i in range(40)]  # views are 1000 + i; i % 10 == 7 is a Short
    strict = cfg(filters=FilterConfig(min_views=1030))
    first = collect_ids(tmp_path, ids, backend=backend(fake), config=strict)
    assert first.collected == 9 and dict(first.skipped) == {"below min views": 30, "short": 1}
    videos_calls, thumb_calls = fake.calls["/v3/videos"], _thumb_calls(fake)

    loose = cfg(filters=FilterConfig(min_views=1010))
    before_second = utc_now()
    second = collect_ids(tmp_path, ids, backend=backend(fake), config=loose)
    # 10..29 now pass, except the Shorts 17 and 27, whose reason changes to "short".
    assert second.collected == 18 and second.total_rows == 27 and second.rechecked == 31
    assert dict(second.skipped) == {"below min views": 10, "short": 3}
    assert second.quota_used == 0 and fake.calls["/v3/videos"] == videos_calls  # offline check
    assert _thumb_calls(fake) > thumb_calls
    table = check_dataset(tmp_path).set_index("video_id")
    assert sorted(table.index) == sorted(vid(i) for i in range(10, 40) if i % 10 != 7)
    assert table.loc[vid(10), "views"] == 1010 and table.loc[vid(10), "subscribers"] == 105
    assert table.loc[vid(10), "collected_at"] < before_second  # when its views were read
    with Store(tmp_path) as store:
        skipped = store.skipped().set_index("video_id")
        assert len(store.history(vid(10))) == 1
    assert skipped.loc[vid(17), "reason"] == "short" and vid(10) not in skipped.index
    assert json.loads(skipped.loc[vid(5), "filters"])["min_views"] == 1010
    assert ds_len(tmp_path) == 27

    thumb_calls = _thumb_calls(fake)
    third = collect_ids(tmp_path, ids, backend=backend(fake), config=strict)
    assert third.collected == 0 and third.total_rows == 27  # a stricter filter removes nothing
    assert fake.calls["/v3/videos"] == videos_calls and _thumb_calls(fake) == thumb_calls
    assert third.quota_used == 0 and third.remaining == 0
    fourth = collect_ids(tmp_path, ids, backend=backend(fake), config=strict)
    assert fourth.rechecked == 0 and fourth.collected == 0  # same filters: not even re-read
    assert check_dataset(tmp_path)["video_id"].is_unique


def ds_len(root: Path) -> int:
    dataset_mod = pytest.importorskip("thumbview.data.dataset")
    return len(dataset_mod.load_dataset(root))


OLD_SKIPPED = """CREATE TABLE skipped (
    video_id TEXT PRIMARY KEY, reason TEXT NOT NULL, detail TEXT, attempts INTEGER NOT NULL,
    permanent INTEGER NOT NULL, at TEXT NOT NULL);"""


def test_database_without_filter_columns_is_upgraded(fake: FakeYouTube, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "collect.sqlite") as db:  # as the first release left it
        db.executescript(OLD_SKIPPED)
        db.executemany(
            "INSERT INTO skipped VALUES (?, ?, '', 1, 1, '2024-01-01T00:00:00Z')",
            [(vid(4), "unavailable"), (vid(5), "below min views"), (vid(7), "short")],
        )
    db.close()
    ids = [vid(4), vid(5), vid(6), vid(7)]
    summary = collect_ids(tmp_path, ids, backend=backend(fake), config=cfg())
    # The old filter skips are described again (no metadata was kept); "unavailable" stays.
    assert summary.collected == 2 and dict(summary.skipped) == {"short": 1}
    with Store(tmp_path) as store:
        skipped = store.skipped().set_index("video_id")
    assert list(skipped.index) == [vid(4), vid(7)]
    assert skipped.loc[vid(4), "permanent"] == 1 and pd.isna(skipped.loc[vid(4), "filters"])
    assert isinstance(skipped.loc[vid(7), "info"], str)  # now re-checkable offline
    calls = fake.calls["/v3/videos"]
    shorts_too = cfg(filters=FilterConfig(include_shorts=True))
    again = collect_ids(tmp_path, ids, backend=backend(fake), config=shorts_too)
    assert again.collected == 1 and fake.calls["/v3/videos"] == calls
