"""Pure rules: which videos to keep, how ids are parsed and how a list is sharded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from thumbview.collect.types import CollectError, VideoInfo

SHORTS_MAX_S = 60.0
# Reasons that depend on the FilterConfig (so a looser config may keep the video); the
# others `rejection_reason` gives (live, no view count) are facts about the video itself.
FILTER_REASONS = frozenset(
    {"below min views", "short", "too long", "no publish date",
     "published before --since", "published after --until"}
)  # fmt: skip
_ID = r"[A-Za-z0-9_-]{11}"
_ID_RE = re.compile(_ID, re.ASCII)
_URL_RES = (
    re.compile(rf"[?&]v=({_ID})"),
    re.compile(rf"youtu\.be/({_ID})"),
    re.compile(rf"/(?:shorts|embed|live|v)/({_ID})"),
)
_DURATION_RE = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


@dataclass(frozen=True)
class FilterConfig:
    """Which videos to keep. Shorts are out by default: their thumbnails are rarely seen."""

    min_views: int = 0
    since: date | None = None  # published on or after
    until: date | None = None  # published on or before
    max_duration_s: float | None = None
    include_shorts: bool = False

    def __post_init__(self) -> None:
        if self.min_views < 0:
            raise CollectError(f"--min-views must be >= 0, got {self.min_views}")
        if self.since and self.until and self.since > self.until:
            raise CollectError(f"--since {self.since} is after --until {self.until}")


def filter_key(cfg: FilterConfig) -> str:
    """Canonical JSON of the settings, stored with each filter skip.

    Equal settings give the same text whatever the field order, so a re-run with the same
    filters can tell, without loading anything, that its filter skips need no second look.
    """
    fields = {
        k: v.isoformat() if isinstance(v, date) else v for k, v in dataclasses.asdict(cfg).items()
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def is_short(video: VideoInfo) -> bool:
    """A Short: listed under /shorts/ or at most 60 s long."""
    if video.short_url:
        return True
    return video.duration_s is not None and 0 < video.duration_s <= SHORTS_MAX_S


def rejection_reason(video: VideoInfo, cfg: FilterConfig) -> str | None:
    """Why `video` is filtered out (a short reason used as a summary key), or None to keep it."""
    if video.live:
        return "live or upcoming"
    if video.views is None:
        return "no view count"
    if video.views < cfg.min_views:
        return "below min views"
    if not cfg.include_shorts and is_short(video):
        return "short"
    if cfg.max_duration_s is not None and (video.duration_s or 0) > cfg.max_duration_s:
        return "too long"
    published = _date(video.published_at)
    if (cfg.since or cfg.until) and published is None:
        return "no publish date"
    if cfg.since and published and published < cfg.since:
        return "published before --since"
    if cfg.until and published and published > cfg.until:
        return "published after --until"
    return None


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def parse_iso_duration(text: str | None) -> float | None:
    """Seconds from an ISO 8601 duration as the Data API gives it ("PT1H2M3S"); None if absent."""
    if not text:
        return None
    m = _DURATION_RE.match(text)
    if m is None:
        return None
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


class InvalidVideoId(CollectError):
    """Text that is not a YouTube video id, where one was expected (a crafted or broken answer)."""


def is_video_id(text: object) -> bool:
    """Whether `text` has YouTube's video-id form: exactly 11 of `A-Z a-z 0-9 _ -`.

    Every id is checked against this where it enters the queue and where it becomes a
    path, because an id from a response (`../../x`) would otherwise name a file anywhere.
    """
    return isinstance(text, str) and _ID_RE.fullmatch(text) is not None


def check_video_id(text: object) -> str:
    """`text` if it is a video id, else `InvalidVideoId` (its repr shortened, so a log stays one line)."""
    if not is_video_id(text):
        raise InvalidVideoId(f"not a YouTube video id: {show_id(text)}")
    return str(text)


def show_id(text: object) -> str:
    """A bounded, escaped rendering of an untrusted id for logs and messages."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def parse_video_id(text: str) -> str | None:
    """The 11-character video id in a bare id or any YouTube video URL, else None."""
    text = text.strip()
    if _ID_RE.fullmatch(text):
        return text
    for pattern in _URL_RES:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def parse_shard(text: str) -> tuple[int, int]:
    """Parse "i/n" (0 <= i < n): this machine takes shard i of n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise CollectError(f"--shard must look like i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_of(video_id: str, n: int) -> int:
    """Shard of an id: a hash, so it does not depend on line order or on the other ids."""
    return int.from_bytes(hashlib.sha1(video_id.encode()).digest()[:8], "big") % n


def shard_ids(ids: Iterable[str], index: int, count: int) -> Iterator[str]:
    """The ids of shard `index` of `count`; the shards are disjoint and cover every id."""
    return (video_id for video_id in ids if shard_of(video_id, count) == index)


def read_id_file(path: Path) -> tuple[list[str], int]:
    """Unique video ids from a file (one id or URL a line; blank and # lines ignored).

    Returns the ids in file order and how many non-empty lines could not be parsed.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise CollectError(f"cannot read id file {path}: {e.strerror or e}") from e
    ids: dict[str, None] = {}
    bad = 0
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        video_id = parse_video_id(line.split(",")[0])
        if video_id is None:
            bad += 1
        else:
            ids[video_id] = None
    return list(ids), bad
