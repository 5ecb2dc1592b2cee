"""yt-dlp backend on recorded info dicts, through the same collector path as live results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image
from yt_dlp.utils import DownloadError

from thumbview.collect import (
    CollectConfig,
    FilterConfig,
    HttpClient,
    RetryPolicy,
    Store,
    collect_channel,
    collect_search,
)
from thumbview.collect.filters import parse_video_id
from thumbview.collect.ytdlp import YtDlpBackend, channel_url, classify_error, info_to_video

DATA = Path(__file__).parent / "data" / "collect"
SIZES = {"maxresdefault": (128, 72), "sddefault": (64, 48), "hqdefault": (48, 36)}
MISSING = {("Ks-_Mh1QhMc", "sddefault")}  # listed by yt-dlp, 404 on the host


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


class FakeYoutubeDL:
    """Answers extract_info like yt_dlp.YoutubeDL, from recorded JSON."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def extract_info(self, url: str, download: bool = True, **kwargs) -> dict:
        assert download is False
        self.urls.append(url)
        if url.startswith("ytsearch"):
            return load("search_flat_AI.json")
        if url == "https://www.youtube.com/@techexplained/videos":
            return load("channel_flat_techexplained.json")
        video_id = parse_video_id(url)
        if video_id == "9bZkp7q19f0":
            raise DownloadError(
                "ERROR: [youtube] 9bZkp7q19f0: Private video. Sign in if you've been granted "
                "access to this video"
            )
        return load(f"video_{video_id}.json")


def thumb_host(request: httpx.Request) -> httpx.Response:
    """i.ytimg.com: a JPEG per size, 404 for missing sizes."""
    parts = request.url.path.strip("/").split("/")  # vi, id, name.jpg
    name = parts[-1].split(".")[0]
    if request.url.host != "i.ytimg.com" or name not in SIZES or (parts[1], name) in MISSING:
        return httpx.Response(404)
    buffer = io.BytesIO()
    Image.new("RGB", SIZES[name], (200, 30, 30)).save(buffer, format="JPEG")
    return httpx.Response(200, content=buffer.getvalue(), headers={"Content-Type": "image/jpeg"})


@pytest.fixture
def http() -> HttpClient:
    policy = RetryPolicy(attempts=2, base_delay=0.0, timeout=2.0)
    return HttpClient(policy, transport=httpx.MockTransport(thumb_host))


def test_info_to_video_reads_recorded_dict() -> None:
    video = info_to_video(load("video_dQw4w9WgXcQ.json"))
    assert video.title == load("video_dQw4w9WgXcQ.json")["title"]  # emoji, Cyrillic, CJK kept
    assert (video.views, video.subscribers, video.likes, video.comments) == (
        1543210, 2150000, 45210, 3120,
    )  # fmt: skip
    assert video.published_at == "2024-05-01T12:00:00Z" and video.duration_s == 1312.0
    assert video.thumbnails[0].url.endswith("/maxresdefault.jpg")  # JPEG before WebP
    assert [t.rank for t in video.thumbnails] == sorted(t.rank for t in video.thumbnails)
    short = info_to_video(load("video_aqz-KE-bpKQ.json"))
    assert short.short_url and info_to_video(load("video_jNQXAC9IVRw.json")).live


def test_search_collects_through_collector(tmp_path: Path, http: HttpClient) -> None:
    fake = FakeYoutubeDL()
    summary = collect_search(
        tmp_path, ["AI"], backend=YtDlpBackend(fake), per_query=6, http=http,
        config=CollectConfig(workers=2),
    )  # fmt: skip
    assert fake.urls[0] == "ytsearch6:AI"
    assert summary.collected == 2
    assert dict(summary.skipped) == {"short": 1, "private": 1, "live or upcoming": 1}
    with Store(tmp_path) as store:
        table = store.table().set_index("video_id")
    assert table.loc["dQw4w9WgXcQ", "title"] == load("video_dQw4w9WgXcQ.json")["title"]
    assert (table.loc["dQw4w9WgXcQ", "width"], table.loc["dQw4w9WgXcQ", "height"]) == (128, 72)
    # maxres not listed, sd listed but 404: falls back to hq.
    assert table.loc["Ks-_Mh1QhMc", "thumbnail_url"].endswith("/hqdefault.jpg")
    assert pd_isna(table.loc["Ks-_Mh1QhMc", "likes"]) and table.loc["Ks-_Mh1QhMc", "query"] == "AI"
    for name in table["file_name"]:
        assert Image.open(tmp_path / name).format == "JPEG"

    again = collect_search(tmp_path, ["AI"], backend=YtDlpBackend(fake), per_query=6, http=http)
    assert again.collected == 0 and again.total_rows == 2  # nothing re-fetched or duplicated


def test_channel_and_shorts_option(tmp_path: Path, http: HttpClient) -> None:
    fake = FakeYoutubeDL()
    config = CollectConfig(filters=FilterConfig(include_shorts=True), workers=1)
    summary = collect_channel(
        tmp_path, "@techexplained", backend=YtDlpBackend(fake), limit=1, http=http, config=config
    )
    assert summary.collected == 1 and fake.urls[0].endswith("/@techexplained/videos")
    found = collect_search(
        tmp_path / "s", ["AI"], backend=YtDlpBackend(fake), http=http, config=config
    )
    assert found.collected == 3  # the Short is kept


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@handle", "https://www.youtube.com/@handle/videos"),
        (
            "UCX6OQ3DkcsbYNE6H8uQQuVA",
            "https://www.youtube.com/channel/UCX6OQ3DkcsbYNE6H8uQQuVA/videos",
        ),
        ("https://www.youtube.com/@x/shorts", "https://www.youtube.com/@x/videos"),
    ],
)
def test_channel_url(text: str, expected: str) -> None:
    assert channel_url(text) == expected


def test_classify_error() -> None:
    assert classify_error("ERROR: [youtube] x: Video unavailable") == ("unavailable", True)
    assert classify_error("HTTP Error 429: Too Many Requests") == ("fetch failed", False)


# ----- no network (issue 28) ------------------------------------------------------------------
OFFLINE = (
    "ERROR: Unable to download API page: HTTPSConnection(host='www.youtube.com', port=443): "
    "Failed to resolve 'www.youtube.com' ([Errno -2] Name or service not known)"
)


class OfflineYoutubeDL:
    """What yt_dlp.YoutubeDL raises with no network, for every URL."""

    def __init__(self) -> None:
        self.calls = 0

    def extract_info(self, url: str, download: bool = True, **kwargs) -> dict:
        self.calls += 1
        raise DownloadError(OFFLINE)


@pytest.mark.parametrize("command", ["search", "ids"])
def test_collect_without_a_network_says_so_once_and_fails(command, tmp_path, monkeypatch):
    """One line saying YouTube could not be reached, exit 3, no raw yt-dlp error, the queue
    kept for the next run; before, it printed the raw error 4 times and exited 0."""
    from typer.testing import CliRunner

    from thumbview.cli import app
    from thumbview.collect import ytdlp

    fake = OfflineYoutubeDL()
    monkeypatch.setattr(ytdlp, "_default_extractor", lambda flat: fake)
    monkeypatch.setattr(ytdlp, "backoff_delay", lambda *a: 0.0)
    (tmp_path / "ids.txt").write_text("dQw4w9WgXcQ\njNQXAC9IVRw\n")
    args = ["cats", "--per-query", "2"] if command == "search" else [str(tmp_path / "ids.txt")]
    result = CliRunner().invoke(app, ["collect", command, str(tmp_path / "out"), *args])
    assert result.exit_code == 3, result.output
    said = [line for line in result.output.splitlines() if line.strip()]
    lines = [line for line in said if "could not be reached" in line]
    assert len(lines) == 1 and lines[0].startswith("error: YouTube could not be reached")
    assert "Errno" not in result.output and "collected" not in result.output.split("error:")[0]
    assert fake.calls >= 1
    if command == "ids":
        assert "2 videos stay queued" in lines[0]
        with Store(tmp_path / "out") as store:
            assert len(store.pending(3)) == 2  # nothing given up: the next run tries again


def test_a_network_error_is_not_a_video_error_and_yt_dlp_prints_nothing():
    from thumbview.collect.http import Unreachable
    from thumbview.collect.ytdlp import _default_extractor, is_network_error

    assert is_network_error(OFFLINE) and not is_network_error("ERROR: Private video")
    backend = YtDlpBackend(OfflineYoutubeDL(), policy=RetryPolicy(attempts=2, base_delay=0.0))
    with pytest.raises(Unreachable):
        backend.fetch(["dQw4w9WgXcQ"])
    with pytest.raises(Unreachable):
        list(backend.search("cats", 2))
    assert type(_default_extractor(False).params["logger"]).__name__ == "_QuietLogger"


def test_the_http_client_says_unreachable_only_when_it_never_connected():
    from thumbview.collect.http import FetchError, Unreachable

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    policy = RetryPolicy(attempts=2, base_delay=0.0, timeout=1.0)
    with pytest.raises(Unreachable):
        HttpClient(policy, transport=httpx.MockTransport(refuse)).get("https://x.test/a")
    with pytest.raises(FetchError) as err:
        HttpClient(policy, transport=httpx.MockTransport(slow)).get("https://x.test/a")
    assert not isinstance(err.value, Unreachable)
