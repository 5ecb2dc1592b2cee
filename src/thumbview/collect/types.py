"""The records every backend produces and the errors the collector understands."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from thumbview.collect.quota import QuotaTracker
from thumbview.data.table import parse_count

INVALID_VIEWS = "invalid views"  # the loader's reason: one rule refuses the same counts
BAD_RESPONSE = "bad response"


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


class InvalidCount(ValueError):
    """A video's view count is not one the dataset loader would keep; the message says why."""


def view_count(value: object) -> int | None:
    """Views read by the loader's own rule (`parse_count`); None when the source hides them.

    A count the loader would refuse (`"NaN"`, `"1e400"`, `""`, `"٣٤"`, 10**40) raises
    `InvalidCount`, so it never reaches the store (SQLite INTEGER overflows at 2**63).
    """
    if value is None:
        return None
    try:
        return parse_count(value)  # type: ignore[arg-type]  # refuses non-count types itself
    except ValueError as e:
        raise InvalidCount(str(e)) from e


def optional_count(value: object) -> int | None:
    """Likes, comments, subscribers: unreadable means unknown (None), as in the loader."""
    try:
        return view_count(value)
    except InvalidCount:
        return None


def described(
    video_id: str, convert: Callable[[], VideoInfo | Unavailable]
) -> VideoInfo | Unavailable:
    """One video's answer converted, or why it cannot be: a bad video never costs its batch.

    Both failures are worth another try in a later run (an API glitch may be gone by then).
    """
    try:
        return convert()
    except InvalidCount as e:
        return Unavailable(video_id, INVALID_VIEWS, str(e), False)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        detail = f"malformed answer: {type(e).__name__}: {str(e)[:200]}"
        return Unavailable(video_id, BAD_RESPONSE, detail, False)
