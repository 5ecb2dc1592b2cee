"""Hostile answers to the collector: crafted video ids, oversized bodies, foreign redirects.

The fakes run on 127.0.0.1 (no network). Every test here failed before the hardening of
issue 10: a crafted id wrote a file outside the dataset folder, a large body was read whole.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
from PIL import Image

from test_collect_api import (
    LOCAL_HOSTS,
    FakeYouTube,
    Handler,
    backend,
    cfg,
    check_dataset,
    serve_fake,
    vid,
)
from thumbview.collect import (
    FilterConfig,
    Store,
    YtDlpBackend,
    collect_ids,
    collect_search,
)
from thumbview.collect.collector import INVALID_ID
from thumbview.collect.filters import InvalidVideoId
from thumbview.collect.store import image_relpath

CRAFTED = "../../../../escaped_by_video_id"
SHORT_CRAFTED = "../../../ab"  # 11 characters, like a real id


def deep_out(tmp_path: Path) -> Path:
    """OUT four levels below tmp_path, so an escape four levels up still lands in tmp_path."""
    return tmp_path / "a" / "b" / "c" / "d" / "out"


def escaped_files(tmp_path: Path, out: Path) -> list[Path]:
    """Files under tmp_path but outside OUT (none may exist)."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]


HUGE = 64 * 2**20  # what a hostile host offers
CAP = 256 * 1024  # the collector's cap in these tests


class HostileHandler(Handler):
    """The fake API, plus thumbnail sizes that are huge (chunked or declared) or redirect away.

    `fake.videos[id]["hostile"]` maps a size name to "chunked", "declared" or "away";
    `fake.sent[path]` counts the body bytes the server managed to send.
    """

    protocol_version = "HTTP/1.1"

    def _thumb(self, path: str) -> None:
        _, _, video_id, name = path.split("/")
        v = self.fake.videos.get(unquote(video_id), {})
        action = v.get("hostile", {}).get(name.removesuffix(".jpg"))
        if action is None:
            return super()._thumb(path)
        if action == "away":  # same server, under a name that is not on the allow-list
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/vi/{video_id}/high.jpg?away")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self._huge(path, declared=action == "declared")

    def _huge(self, path: str, declared: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header(*(("Content-Length", str(HUGE)) if declared else ("Transfer-Encoding", "chunked")))  # fmt: skip
        self.end_headers()
        chunk = b"\xff\xd8\xff" + b"\0" * (64 * 1024 - 3)
        try:
            for _ in range(HUGE // len(chunk)):
                self.wfile.write(chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                with self.fake.lock:
                    self.fake.sent[path] = self.fake.sent.get(path, 0) + len(chunk)
            self.wfile.write(b"" if declared else b"0\r\n\r\n")
        except OSError:  # the client hung up: what a capped download does
            self.close_connection = True


@pytest.fixture
def fake() -> Iterator[FakeYouTube]:
    with serve_fake(60, HostileHandler) as state:
        state.sent = {}
        yield state


def plant(fake: FakeYouTube, video_id: str, like: int = 0) -> None:
    """Make the fake API list and describe `video_id` as if it were a video."""
    fake.videos[video_id] = dict(fake.videos[vid(like)])


def test_image_path_refuses_anything_but_an_id() -> None:
    assert image_relpath("abcdefghijk") == "images/ab/abcdefghijk.jpg"
    for bad in (CRAFTED, SHORT_CRAFTED, "abcdefghijk\n", "abcdefghij/", "abcdéfghijk", ""):
        with pytest.raises(InvalidVideoId):
            image_relpath(bad)


def test_crafted_ids_from_the_data_api_never_become_paths(fake: FakeYouTube, tmp_path: Path) -> None:  # fmt: skip
    for crafted in (CRAFTED, SHORT_CRAFTED):
        plant(fake, crafted)
    out = deep_out(tmp_path)
    config = cfg(filters=FilterConfig(include_shorts=True))
    summary = collect_search(
        out, ["AI", "Tech"], backend=backend(fake), per_query=50, config=config
    )
    assert summary.skipped[INVALID_ID] == 2 and summary.collected == 60
    also = collect_ids(out, [CRAFTED, "x" * 11 + "/", vid(0)], backend=backend(fake), config=config)
    assert also.skipped == {INVALID_ID: 2} and also.collected == 0
    assert escaped_files(tmp_path, out) == []
    table = check_dataset(out)
    assert table["video_id"].str.fullmatch(r"[A-Za-z0-9_-]{11}").all()
    assert not table["file_name"].str.contains(r"\.\.").any()
    with Store(out) as store:
        assert CRAFTED not in {v for v, _, _ in store.pending(99)}


class CraftedYoutubeDL:
    """A yt-dlp stand-in whose listing and extraction answer with crafted ids."""

    def __init__(self, thumb_url: str) -> None:
        self.thumb_url = thumb_url

    def extract_info(self, url: str, download: bool = True, **kwargs) -> dict:
        if url.startswith("ytsearch"):
            ids = [SHORT_CRAFTED, "abcdefghijk", "ABCDEFGHIJK"]
            return {"entries": [{"id": v, "url": f"https://www.youtube.com/watch?v={v}"} for v in ids]}  # fmt: skip
        answered = CRAFTED if "abcdefghijk" in url else "ABCDEFGHIJK"  # one answers for another id
        return {
            "id": answered,
            "title": "t",
            "view_count": 5,
            "duration": 300,
            "thumbnails": [{"url": self.thumb_url, "width": 32, "height": 18}],
        }


def jpeg_transport():
    import httpx

    buffer = io.BytesIO()
    Image.new("RGB", (32, 18), (1, 2, 3)).save(buffer, format="JPEG")
    body = buffer.getvalue()
    return httpx.MockTransport(lambda request: httpx.Response(200, content=body))


def test_crafted_ids_from_ytdlp_never_become_paths(tmp_path: Path) -> None:
    from thumbview.collect import HttpClient, RetryPolicy

    http = HttpClient(RetryPolicy(attempts=1, timeout=1.0), transport=jpeg_transport())
    ytdl = CraftedYoutubeDL("https://i.ytimg.com/vi/x/hqdefault.jpg")
    out = deep_out(tmp_path)
    summary = collect_search(out, ["AI"], backend=YtDlpBackend(ytdl), per_query=3, http=http)
    assert summary.collected == 1 and summary.skipped == {INVALID_ID: 2}
    assert escaped_files(tmp_path, out) == []
    table = pd.read_csv(out / "metadata.csv")
    assert list(table["video_id"]) == ["ABCDEFGHIJK"]
    with Store(out) as store:
        skipped = store.skipped().set_index("video_id")
    assert skipped.loc["abcdefghijk", "reason"] == INVALID_ID  # answered for another id
    assert json.dumps(str(skipped.loc["abcdefghijk", "detail"])).count("escaped") == 1


def wait_sent(fake: FakeYouTube, path: str) -> int:
    """Bytes the server sent on `path`, once its handler has stopped writing."""
    last, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        now = fake.sent.get(path, 0)
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last


@pytest.mark.parametrize("mode", ["chunked", "declared"])
def test_download_stops_at_the_cap(fake: FakeYouTube, tmp_path: Path, mode: str) -> None:
    from thumbview.collect import HttpClient, RetryPolicy
    from thumbview.collect.http import RefusedError

    fake.videos[vid(0)]["hostile"] = {"maxres": mode}
    path = f"/vi/{vid(0)}/maxres.jpg"
    http = HttpClient(RetryPolicy(attempts=3, base_delay=0.0, timeout=5.0))
    sink = (tmp_path / "sink").open("w+b")
    with pytest.raises(RefusedError, match="cap"):
        http.download(fake.base + path, sink, max_bytes=CAP, hosts=LOCAL_HOSTS)
    assert sink.tell() <= CAP  # never more than the cap on disk
    assert fake.calls[path] == 1  # a refusal is not retried
    # The client hung up: the server could not push the 64 MB (socket buffers hold a few MB).
    assert wait_sent(fake, path) < 16 * 2**20
    http.close()


def test_redirect_to_another_host_is_refused(fake: FakeYouTube, tmp_path: Path) -> None:
    from thumbview.collect import HttpClient
    from thumbview.collect.http import RefusedError

    fake.videos[vid(1)]["hostile"] = {"maxres": "away"}
    http = HttpClient()
    with (tmp_path / "sink").open("w+b") as sink, pytest.raises(RefusedError, match="localhost"):
        http.download(f"{fake.base}/vi/{vid(1)}/maxres.jpg", sink, max_bytes=CAP, hosts=LOCAL_HOSTS)  # fmt: skip
    assert fake.calls[f"/vi/{vid(1)}/high.jpg"] == 0  # the redirect target was never asked
    with (tmp_path / "sink").open("w+b") as sink, pytest.raises(RefusedError, match="allowed"):
        http.download(f"{fake.base}/vi/{vid(1)}/high.jpg", sink, max_bytes=CAP, hosts={"i.ytimg.com"})  # fmt: skip
    http.close()


def test_collector_with_crafted_ids_and_oversized_bodies(fake: FakeYouTube, tmp_path: Path) -> None:  # fmt: skip
    """The probe of issue 10 as a test: one run meets every hostile answer at once."""
    plant(fake, CRAFTED)
    fake.videos[vid(0)]["hostile"] = {"maxres": "chunked", "standard": "away"}  # falls to high
    fake.videos[vid(2)]["hostile"] = {k: "declared" for k in ("maxres", "standard", "high", "medium", "default")}  # fmt: skip
    fake.videos[vid(4)]["hostile"] = {"maxres": "chunked", "standard": "chunked", "high": "away", "medium": "chunked", "default": "chunked"}  # fmt: skip
    out = deep_out(tmp_path)
    config = cfg(filters=FilterConfig(include_shorts=True), thumb_max_bytes=CAP, workers=2)
    ids = [CRAFTED] + [vid(i) for i in range(6)]
    summary = collect_ids(out, ids, backend=backend(fake), config=config)
    assert summary.skipped == {INVALID_ID: 1, "thumbnail refused": 2}
    assert summary.collected == 4
    table = check_dataset(out).set_index("video_id")
    assert table.loc[vid(0), "thumbnail_url"].endswith("/high.jpg")
    assert escaped_files(tmp_path, out) == []
    assert max(fake.sent.values()) < 16 * 2**20
    with Store(out) as store:
        skipped = store.skipped().set_index("video_id")
    assert "cap" in skipped.loc[vid(2), "detail"] and skipped.loc[vid(2), "permanent"] == 1


# --- issue 24: hostile view counts skip their video only, by the loader's own rule ----------

HOSTILE_VIEWS = ["1" + "0" * 40, str(2**63), "NaN", "1e400", "", "\u0663\u0664", "1_000", "-5"]


def collected_views(out: Path) -> dict[str, int]:
    return dict(zip(*(check_dataset(out)[c] for c in ("video_id", "views")), strict=True))


def test_hostile_view_counts_skip_only_their_video(fake: FakeYouTube, tmp_path: Path) -> None:
    """Issue 24.1-24.2: all in one videos.list batch; before, 2**63 aborted the run with an
    OverflowError and "NaN" made the whole batch of 50 a "bad response"."""
    for i, views in enumerate(HOSTILE_VIEWS):
        fake.videos[vid(i)]["views"] = views
    config = cfg(filters=FilterConfig(include_shorts=True))
    ids = [vid(i) for i in range(40)]
    summary = collect_ids(tmp_path / "out", ids, backend=backend(fake), config=config)
    assert summary.skipped == {"invalid views": len(HOSTILE_VIEWS)}
    assert summary.collected == 40 - len(HOSTILE_VIEWS) and summary.stopped is None
    views = collected_views(tmp_path / "out")
    assert views == {vid(i): 1000 + i for i in range(len(HOSTILE_VIEWS), 40)}
    with Store(tmp_path / "out") as store:
        skipped = store.skipped().set_index("video_id")
    assert skipped.loc[vid(0), "detail"].endswith("is not a count between 0 and 1e+12")
    assert "not a number" in skipped.loc[vid(2), "detail"]
    assert set(skipped["reason"]) == {"invalid views"} and not skipped["permanent"].any()


SPELLINGS = [" 12", "\u0663\u0664", "1,234", "1e3", "7.0", "12.5", "\u00a012", "+7", "0x10"]


def test_collect_keeps_exactly_the_counts_the_loader_keeps(fake: FakeYouTube, tmp_path: Path) -> None:  # fmt: skip
    """Issue 24.3: one parser. Before, collect stored "٣٤" as 34, which the loader refuses."""
    from thumbview.data.dataset import load_dataset

    for i, views in enumerate(SPELLINGS):
        fake.videos[vid(i)]["views"] = views
    ids = [vid(i) for i in range(len(SPELLINGS))]
    config = cfg(filters=FilterConfig(include_shorts=True))
    collect_ids(tmp_path / "out", ids, backend=backend(fake), config=config)
    by_collect = collected_views(tmp_path / "out")
    loader = tmp_path / "loader"
    loader.mkdir()
    Image.new("RGB", (4, 4)).save(loader / "a.jpg")
    cells = pd.DataFrame({"file_name": "a.jpg", "views": SPELLINGS, "video_id": ids})
    cells.to_csv(loader / "metadata.csv", index=False)
    by_loader = dict(zip(*(load_dataset(loader).table[c] for c in ("video_id", "views")), strict=True))  # fmt: skip
    assert by_collect == by_loader == {vid(0): 12, vid(2): 1234, vid(3): 1000, vid(4): 7, vid(7): 7}  # fmt: skip


def test_refresh_skips_a_hostile_count_and_keeps_the_old_one(fake: FakeYouTube, tmp_path: Path) -> None:  # fmt: skip
    """Before, `refresh` stopped with SQLite's OverflowError at a count of 10**40."""
    from datetime import timedelta

    from thumbview.collect import refresh

    out = tmp_path / "out"
    collect_ids(out, [vid(i) for i in range(3)], backend=backend(fake), config=cfg())
    fake.videos[vid(0)]["views"], fake.videos[vid(1)]["views"] = "1" + "0" * 40, 5000
    result = refresh(out, backend=backend(fake), older_than=timedelta(0))
    assert (result.refreshed, result.unavailable, result.stopped) == (2, 1, None)
    assert collected_views(out) == {vid(0): 1000, vid(1): 5000, vid(2): 1002}


def test_ytdlp_hostile_counts_skip_the_video(tmp_path: Path) -> None:
    """yt-dlp's answers go through the same rule; a bad like count is only unknown."""
    from thumbview.collect import HttpClient, RetryPolicy

    class Counts(CraftedYoutubeDL):
        def extract_info(self, url: str, download: bool = True, **kwargs) -> dict:
            if url.startswith("ytsearch"):
                ids = ["abcdefghijk", "ABCDEFGHIJK", "bbbbbbbbbbb"]
                return {"entries": [{"id": v, "url": f"https://www.youtube.com/watch?v={v}"} for v in ids]}  # fmt: skip
            video_id = url.rsplit("=", 1)[-1]
            counts = {"abcdefghijk": (10**40, 1), "ABCDEFGHIJK": (5, 10**40), "bbbbbbbbbbb": (float("nan"), 1)}  # fmt: skip
            views, likes = counts[video_id]
            return super().extract_info(url) | {"id": video_id, "view_count": views, "like_count": likes}  # fmt: skip

    http = HttpClient(RetryPolicy(attempts=1, timeout=1.0), transport=jpeg_transport())
    ytdl = Counts("https://i.ytimg.com/vi/x/hqdefault.jpg")
    out = tmp_path / "out"
    summary = collect_search(out, ["AI"], backend=YtDlpBackend(ytdl), per_query=3, http=http)
    assert summary.collected == 1 and summary.skipped == {"invalid views": 2}
    table = pd.read_csv(out / "metadata.csv")
    assert table[["video_id", "views"]].values.tolist() == [["ABCDEFGHIJK", 5]]
    assert table["likes"].isna().all()


def test_a_stored_filter_skip_with_a_hostile_count_is_described_again(fake: FakeYouTube, tmp_path: Path) -> None:  # fmt: skip
    """A filter skip stored before counts were checked may hold 10**40; re-checking it under
    other filters used to commit it (OverflowError). Now it is asked for again."""
    from thumbview.collect.store import encode_video, utc_now
    from thumbview.collect.types import Thumb, VideoInfo

    out = tmp_path / "out"
    with Store(out) as store:
        store.add_pending([(vid(1), "", False)])
        thumb = Thumb(f"{fake.base}/vi/{vid(1)}/high.jpg", 2)
        old = VideoInfo(vid(1), "t", 10**40, duration_s=30.0, thumbnails=(thumb,))
        store.skip_filtered(vid(1), "short", "{}", encode_video(old, utc_now()))
    config = cfg(filters=FilterConfig(include_shorts=True))  # the stored skip now passes
    summary = collect_ids(out, [vid(1)], backend=backend(fake), config=config)
    assert summary.collected == 1 and collected_views(out) == {vid(1): 1001}
