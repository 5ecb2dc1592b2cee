"""The records every backend produces and the errors the collector understands."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from thumbview.collect.quota import QuotaTracker


class CollectError(ValueError):
    """The collection cannot go on (bad argument, rejected API key); the message says why."""


@dataclass(frozen=True)
class Thumb:
    """One candidate thumbnail URL; `rank` 0 is the best (maxres), 4 the smallest (default)."""

    url: str
    rank: int
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Listing:
    """A video id found by a search or a channel listing, before its metadata is read."""

    video_id: str
    short_url: bool = False  # listed under /shorts/


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of one public video, normalised across backends."""

    video_id: str
    title: str
    views: int | None
    channel_id: str = ""
    channel_title: str = ""
    published_at: str = ""  # ISO 8601, UTC ("2024-05-01T12:00:00Z") or a date ("2024-05-01")
    subscribers: int | None = None
    duration_s: float | None = None
    likes: int | None = None
    comments: int | None = None
    thumbnails: tuple[Thumb, ...] = ()  # best first
    short_url: bool = False
    live: bool = False  # live streams and premieres that have not aired yet


@dataclass(frozen=True)
class Unavailable:
    """A video the backend could not describe, and why (private, deleted, ...)."""

    video_id: str
    reason: str
    detail: str = ""
    permanent: bool = True  # False: a failure worth another try in a later run


class Backend(Protocol):
    """What the collector needs from a source of YouTube metadata."""

    name: str
    batch_size: int  # how many ids one `fetch` call should get
    quota: QuotaTracker | None

    def search(self, query: str, limit: int) -> Iterator[list[Listing]]:
        """Yield pages of search results (so a quota stop keeps the pages already paid for)."""
        ...

    def channel(self, channel: str, limit: int | None) -> Iterator[list[Listing]]:
        """Yield pages of a channel's uploads, newest first."""
        ...

    def fetch(
        self, ids: Sequence[str], *, subscribers: bool = True
    ) -> list[VideoInfo | Unavailable]:
        """Metadata of `ids`, one entry per id, in order."""
        ...
