"""Hostile answers to the collector: crafted video ids, oversized bodies, foreign redirects.

The fakes run on 127.0.0.1 (no network). Every test here failed before the hardening of
issue 10: a crafted id wrote a file outside the dataset folder, a large body was read whole.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from test_collect_api import FakeYouTube, backend, check_dataset, serve_fake, vid
from thumbview.collect import (
    CollectConfig,
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


@pytest.fixture
def fake() -> Iterator[FakeYouTube]:
    with serve_fake(60) as state:
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
    config = CollectConfig(filters=FilterConfig(include_shorts=True))
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
