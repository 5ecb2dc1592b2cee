"""The YouTube Data API v3 backend over plain HTTP (base URL configurable, so tests run a fake).

Costs: search.list 100 units per page of 50, videos.list / channels.list /
playlistItems.list 1 unit per call of up to 50 ids. Every call is charged to the
`QuotaTracker` *before* it is made, so the run stops cleanly short of the daily limit.
Channel uploads are listed through the uploads playlist (1 unit a page), not search.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from thumbview.collect.filters import parse_iso_duration
from thumbview.collect.http import FetchError, HttpClient
from thumbview.collect.quota import PAGE_SIZE, QuotaExhausted, QuotaTracker
from thumbview.collect.types import (
    CollectError,
    Listing,
    Thumb,
    Unavailable,
    VideoInfo,
    described,
    optional_count,
    view_count,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.googleapis.com/youtube/v3"
THUMB_KEYS = ("maxres", "standard", "high", "medium", "default")  # best first
_CHANNEL_ID_RE = re.compile(r"(UC[A-Za-z0-9_-]{22})")
_HANDLE_RE = re.compile(r"(?:^|/)@([A-Za-z0-9._-]+)")


def item_to_video(item: dict, subscribers: int | None = None) -> VideoInfo:
    """One videos.list item (part=snippet,statistics,contentDetails) as a VideoInfo."""
    snippet = item.get("snippet") or {}
    stats = item.get("statistics") or {}
    thumbs = snippet.get("thumbnails") or {}
    return VideoInfo(
        video_id=str(item["id"]),
        title=str(snippet.get("title") or ""),
        views=view_count(stats.get("viewCount")),
        channel_id=str(snippet.get("channelId") or ""),
        channel_title=str(snippet.get("channelTitle") or ""),
        published_at=str(snippet.get("publishedAt") or ""),
        subscribers=subscribers,
        duration_s=parse_iso_duration((item.get("contentDetails") or {}).get("duration")),
        likes=optional_count(stats.get("likeCount")),
        comments=optional_count(stats.get("commentCount")),
        thumbnails=tuple(
            Thumb(thumbs[k]["url"], rank, thumbs[k].get("width"), thumbs[k].get("height"))
            for rank, k in enumerate(THUMB_KEYS)
            if thumbs.get(k, {}).get("url")
        ),
        live=snippet.get("liveBroadcastContent") in ("live", "upcoming"),
    )


def _channel_of(item: dict) -> str:
    """The item's channel id, '' when the answer lacks one (that item alone is then refused)."""
    snippet = item.get("snippet")
    return str(snippet.get("channelId") or "") if isinstance(snippet, dict) else ""


def channel_params(channel: str) -> dict[str, str]:
    """channels.list selector for an @handle, a UC... id or a channel URL."""
    if m := _CHANNEL_ID_RE.search(channel):
        return {"id": m.group(1)}
    if m := _HANDLE_RE.search(channel.strip()):
        return {"forHandle": "@" + m.group(1)}
    if re.fullmatch(r"[A-Za-z0-9._-]+", channel.strip()):
        return {"forHandle": "@" + channel.strip()}
    raise CollectError(f"cannot read a channel from {channel!r}: give @handle, UC... id or URL")


class DataApiBackend:
    """search.list / videos.list / channels.list over HTTP, quota-checked."""

    name = "api"
    batch_size = PAGE_SIZE

    def __init__(
        self,
        key: str,
        *,
        http: HttpClient | None = None,
        quota: QuotaTracker | None = None,
        base_url: str = DEFAULT_BASE_URL,
    ) -> None:
        if not key:
            raise CollectError("the api backend needs a key: set YOUTUBE_API_KEY")
        self.key = key
        self.http = http or HttpClient()
        self.quota: QuotaTracker = quota or QuotaTracker()
        self.base_url = base_url.rstrip("/")
        self._subs: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def _call(self, resource: str, params: dict[str, Any]) -> dict:
        """GET one API method, charged first; quota and auth errors become clear exceptions."""
        self.quota.charge(f"{resource}.list")
        try:
            return self.http.get_json(f"{self.base_url}/{resource}", {**params, "key": self.key})
        except FetchError as e:
            if e.status == 403 and ("quotaExceeded" in e.body or "dailyLimitExceeded" in e.body):
                raise QuotaExhausted(f"the API says the daily quota is used up: {e}") from e
            if e.status in (400, 401, 403):
                raise CollectError(f"the Data API refused {resource}.list: {e.body[:300]}") from e
            raise

    def search(self, query: str, limit: int) -> Iterator[list[Listing]]:
        params: dict[str, Any] = {"part": "id", "type": "video", "q": query}
        got = 0
        while got < limit:
            page = self._call("search", {**params, "maxResults": min(PAGE_SIZE, limit - got)})
            ids = [it["id"]["videoId"] for it in page.get("items", []) if "videoId" in it["id"]]
            got += len(ids)
            yield [Listing(v) for v in ids]
            if not page.get("nextPageToken") or not ids:
                return
            params["pageToken"] = page["nextPageToken"]

    def channel(self, channel: str, limit: int | None) -> Iterator[list[Listing]]:
        found = self._call("channels", {"part": "contentDetails", **channel_params(channel)})
        if not found.get("items"):
            raise CollectError(f"no channel found for {channel!r}")
        uploads = found["items"][0]["contentDetails"]["relatedPlaylists"]["uploads"]
        params: dict[str, Any] = {"part": "contentDetails", "playlistId": uploads}
        got = 0
        while limit is None or got < limit:
            page = self._call("playlistItems", {**params, "maxResults": PAGE_SIZE})
            ids = [it["contentDetails"]["videoId"] for it in page.get("items", [])]
            ids = ids if limit is None else ids[: limit - got]
            got += len(ids)
            yield [Listing(v) for v in ids]
            if not page.get("nextPageToken") or not ids:
                return
            params["pageToken"] = page["nextPageToken"]

    def fetch(
        self, ids: Sequence[str], *, subscribers: bool = True
    ) -> list[VideoInfo | Unavailable]:
        if len(ids) > PAGE_SIZE:
            raise ValueError(f"videos.list takes at most {PAGE_SIZE} ids, got {len(ids)}")
        part = "snippet,statistics,contentDetails"
        page = self._call("videos", {"part": part, "id": ",".join(ids), "maxResults": PAGE_SIZE})
        listed = [it for it in page.get("items", []) if isinstance(it, dict) and "id" in it]
        items = {str(it["id"]): it for it in listed}  # an item naming no id describes no video
        if subscribers:
            self._load_subscribers({_channel_of(it) for it in items.values()})
        out: list[VideoInfo | Unavailable] = []
        for video_id in ids:
            item = items.get(video_id)
            if item is None:
                out.append(Unavailable(video_id, "unavailable", "not returned by videos.list"))
                continue
            subs = self._subs.get(_channel_of(item)) if subscribers else None
            out.append(described(video_id, lambda item=item, subs=subs: item_to_video(item, subs)))
        return out

    def _load_subscribers(self, channel_ids: set[str]) -> None:
        """channels.list for channels not seen yet (1 unit per 50); hidden counts stay None."""
        with self._lock:
            missing = sorted(c for c in channel_ids if c and c not in self._subs)
        for start in range(0, len(missing), PAGE_SIZE):
            chunk = missing[start : start + PAGE_SIZE]
            page = self._call("channels", {"part": "statistics", "id": ",".join(chunk)})
            with self._lock:
                for it in page.get("items", []):
                    stats = it.get("statistics") or {}
                    hidden = stats.get("hiddenSubscriberCount", False)
                    self._subs[it["id"]] = (
                        None if hidden else optional_count(stats.get("subscriberCount"))
                    )
