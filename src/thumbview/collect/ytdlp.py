"""The yt-dlp backend: no API key, one extraction per video.

Listings (``ytsearchN:query``, a channel's /videos tab) use flat extraction, which
returns ids without visiting each video; the metadata then comes from a full
`extract_info` per video. Everything goes through `info_to_video`, so the tests feed
recorded info dicts through the same code as live results.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from thumbview.collect.http import FetchError, RetryPolicy, Unreachable, backoff_delay
from thumbview.collect.types import (
    Listing,
    Thumb,
    Unavailable,
    VideoInfo,
    described,
    optional_count,
    view_count,
)

logger = logging.getLogger(__name__)

# Thumbnail names on i.ytimg.com, best first; hq720 is a 1280x720 that some videos have.
THUMB_RANK = {"maxresdefault": 0, "hq720": 0, "sddefault": 1, "hqdefault": 2, "mqdefault": 3, "default": 4}  # fmt: skip
_THUMB_RE = re.compile(r"/(maxresdefault|hq720|sddefault|hqdefault|mqdefault|default)\.(jpg|webp)")
_CHANNEL_ID_RE = re.compile(r"^UC[A-Za-z0-9_-]{22}$")
# (substring of yt-dlp's error message, reason, permanent)
_ERRORS = (
    ("private video", "private", True),
    ("video unavailable", "unavailable", True),
    ("has been removed", "unavailable", True),
    ("has been terminated", "unavailable", True),
    ("does not exist", "unavailable", True),
    ("confirm your age", "age restricted", True),
    ("members-only", "members only", True),
    ("premieres in", "live or upcoming", True),
    ("live event will begin", "live or upcoming", True),
)


# What yt-dlp says when the network, not the video, failed: no answer can come now.
_NETWORK = (
    "failed to resolve",
    "name or service not known",
    "temporary failure in name resolution",
    "nodename nor servname",
    "getaddrinfo failed",
    "network is unreachable",
    "no route to host",
    "connection refused",
)


def is_network_error(message: str) -> bool:
    """True when a yt-dlp error says YouTube could not be reached at all."""
    low = message.lower()
    return any(needle in low for needle in _NETWORK)


class _QuietLogger:
    """yt-dlp's messages to this module's log (debug): it prints errors on stderr even when
    quiet, so an offline run showed its raw error once per retry. The collector reports."""

    def debug(self, msg: str) -> None:
        logger.debug("yt-dlp: %s", msg)

    info = warning = error = debug


class Extractor(Protocol):
    """The part of `yt_dlp.YoutubeDL` the backend uses (tests inject a fake)."""

    def extract_info(self, url: str, download: bool = ..., **kwargs: Any) -> dict | None: ...


def watch_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def channel_url(channel: str) -> str:
    """A channel's uploads tab from an @handle, a UC... id or any channel URL."""
    channel = channel.strip()
    if channel.startswith("@"):
        base = f"https://www.youtube.com/{channel}"
    elif _CHANNEL_ID_RE.match(channel):
        base = f"https://www.youtube.com/channel/{channel}"
    elif channel.startswith(("http://", "https://", "www.", "youtube.com")):
        base = channel if channel.startswith("http") else f"https://{channel}"
    else:
        base = f"https://www.youtube.com/@{channel}"
    base = base.split("?")[0].rstrip("/")
    if re.search(r"/(videos|shorts|streams|featured)$", base):
        base = base.rsplit("/", 1)[0]
    return f"{base}/videos"


def rank_thumbnails(info: dict) -> tuple[Thumb, ...]:
    """The named i.ytimg.com sizes in `info`, best first, JPEG before WebP at equal size."""
    found: dict[str, tuple[tuple[int, int], Thumb]] = {}
    for t in info.get("thumbnails") or []:
        url = t.get("url") or ""
        m = _THUMB_RE.search(url)
        if m is None:
            continue
        rank = THUMB_RANK[m.group(1)]
        key = (rank, 0 if m.group(2) == "jpg" else 1)
        thumb = Thumb(url, rank, t.get("width"), t.get("height"))
        if url not in found:
            found[url] = (key, thumb)
    ordered = [thumb for _, thumb in sorted(found.values(), key=lambda kv: kv[0])]
    if not ordered and info.get("thumbnail"):
        ordered = [Thumb(info["thumbnail"], 5)]
    return tuple(ordered)


def _published(info: dict) -> str:
    if info.get("timestamp"):
        when = datetime.fromtimestamp(int(info["timestamp"]), UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    day = str(info.get("upload_date") or "")
    return f"{day[:4]}-{day[4:6]}-{day[6:8]}" if len(day) == 8 else ""


def info_to_video(info: dict, *, short_url: bool = False) -> VideoInfo | Unavailable:
    """Normalise one full yt-dlp info dict (the same shape live and in the test fixtures)."""
    video_id = str(info.get("id") or "")
    if info.get("availability") in ("private", "needs_auth", "subscriber_only", "premium_only"):
        return Unavailable(video_id, "private", f"availability={info['availability']}")
    url = str(info.get("webpage_url") or info.get("original_url") or "")
    return VideoInfo(
        video_id=video_id,
        title=str(info.get("title") or info.get("fulltitle") or ""),
        views=view_count(info.get("view_count")),
        channel_id=str(info.get("channel_id") or ""),
        channel_title=str(info.get("channel") or info.get("uploader") or ""),
        published_at=_published(info),
        subscribers=optional_count(info.get("channel_follower_count")),
        duration_s=None if info.get("duration") is None else float(info["duration"]),
        likes=optional_count(info.get("like_count")),
        comments=optional_count(info.get("comment_count")),
        thumbnails=rank_thumbnails(info),
        short_url=short_url or "/shorts/" in url,
        live=info.get("live_status") in ("is_live", "is_upcoming"),
    )


def entry_to_listing(entry: dict) -> Listing | None:
    """A flat search/channel entry to a Listing (None for channels, playlists, ads)."""
    video_id = entry.get("id")
    url = str(entry.get("url") or "")
    if not video_id or entry.get("ie_key") not in (None, "Youtube") or len(video_id) != 11:
        return None
    return Listing(str(video_id), "/shorts/" in url)


def classify_error(message: str) -> tuple[str, bool]:
    """(reason, permanent) for a yt-dlp error message; unknown errors are worth a retry."""
    low = message.lower()
    for needle, reason, permanent in _ERRORS:
        if needle in low:
            return reason, permanent
    return "fetch failed", False


def _default_extractor(flat: bool) -> Extractor:
    import yt_dlp

    options: dict[str, Any] = {
        "quiet": True,
        "no_warnings": True,
        "skip_download": True,
        "logger": _QuietLogger(),
    }
    if flat:
        options["extract_flat"] = "in_playlist"
    return yt_dlp.YoutubeDL(options)


class YtDlpBackend:
    """Metadata through yt-dlp used as a library. YoutubeDL is not thread-safe: one per thread."""

    name = "ytdlp"
    batch_size = 1
    quota = None

    def __init__(
        self,
        extractor: Extractor | None = None,
        *,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._injected = extractor
        self._local = threading.local()
        self.policy = policy or RetryPolicy(attempts=3, base_delay=2.0)
        self._sleep = sleep
        self._rng = random.Random()

    def _extractor(self, flat: bool) -> Extractor:
        if self._injected is not None:
            return self._injected
        key = "flat" if flat else "full"
        if not hasattr(self._local, key):
            setattr(self._local, key, _default_extractor(flat))
        return getattr(self._local, key)

    def _extract(self, url: str, flat: bool) -> dict:
        """extract_info with retries on transient errors; raises DownloadError-like errors."""
        for attempt in range(self.policy.attempts):
            try:
                return self._extractor(flat).extract_info(url, download=False) or {}
            except Exception as e:  # yt-dlp raises DownloadError / ExtractorError
                reason, permanent = classify_error(str(e))
                if permanent or attempt + 1 == self.policy.attempts:
                    raise
                self._sleep(backoff_delay(attempt, self.policy, self._rng))
        raise AssertionError("unreachable")

    def _listing(self, url: str, limit: int | None) -> Iterator[list[Listing]]:
        try:
            result = self._extract(url, flat=True)
        except Exception as e:  # the collector reports a failed listing and goes on
            error = Unreachable if is_network_error(str(e)) else FetchError
            raise error(f"listing {url} failed: {e}") from e
        listings = [x for x in map(entry_to_listing, result.get("entries") or []) if x]
        yield listings[:limit] if limit is not None else listings

    def search(self, query: str, limit: int) -> Iterator[list[Listing]]:
        return self._listing(f"ytsearch{limit}:{query}", limit)

    def channel(self, channel: str, limit: int | None) -> Iterator[list[Listing]]:
        return self._listing(channel_url(channel), limit)

    def fetch(
        self, ids: Sequence[str], *, subscribers: bool = True
    ) -> list[VideoInfo | Unavailable]:
        out: list[VideoInfo | Unavailable] = []
        for video_id in ids:
            try:
                info = self._extract(watch_url(video_id), flat=False)
            except Exception as e:
                if is_network_error(str(e)):  # no video can be described now: stop the run
                    raise Unreachable(f"{video_id}: {e}") from e
                reason, permanent = classify_error(str(e))
                out.append(Unavailable(video_id, reason, str(e)[:300], permanent))
                continue
            out.append(described(video_id, lambda info=info: info_to_video(info)))
        return out
