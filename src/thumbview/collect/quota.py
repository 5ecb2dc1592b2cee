"""YouTube Data API quota arithmetic: what each call costs and when to stop.

The quota resets at midnight Pacific time, so the day key is a Pacific date; the
store persists units per day so a re-run the same day starts from what was spent.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

logger = logging.getLogger(__name__)

DEFAULT_DAILY_QUOTA = 10_000
COSTS = {"search.list": 100, "videos.list": 1, "channels.list": 1, "playlistItems.list": 1}
PAGE_SIZE = 50  # the most ids / results one call takes or returns


def quota_day(now: datetime | None = None) -> str:
    """The Pacific-time date the quota counter belongs to (YYYY-MM-DD)."""
    try:
        from zoneinfo import ZoneInfo

        tz: timezone | ZoneInfo = ZoneInfo("America/Los_Angeles")
    except Exception:  # no tz database: standard time is close enough
        tz = timezone(timedelta(hours=-8))
    return (now or datetime.now(UTC)).astimezone(tz).date().isoformat()


def units_for_ids(n_videos: int, *, with_channels: bool = True) -> int:
    """Units to describe `n_videos` known ids: videos.list (+ channels.list) per 50 ids."""
    pages = math.ceil(n_videos / PAGE_SIZE)
    return pages * (COSTS["videos.list"] + (COSTS["channels.list"] if with_channels else 0))


def units_for_search(n_results: int) -> int:
    """Units to find and describe `n_results` videos by search (100 per page of 50 + ids)."""
    return math.ceil(n_results / PAGE_SIZE) * COSTS["search.list"] + units_for_ids(n_results)


class QuotaExhausted(RuntimeError):
    """The next request would go over the daily quota: stop cleanly, resume tomorrow."""


class QuotaTracker:
    """Thread-safe counter that refuses a call before it would exceed `limit`."""

    def __init__(self, limit: int = DEFAULT_DAILY_QUOTA, used: int = 0) -> None:
        if limit <= 0:
            raise ValueError(f"daily quota must be positive, got {limit}")
        self.limit = limit
        self.used = used
        self.used_this_run = 0
        self._lock = threading.Lock()
        self._on_charge: Callable[[int], None] | None = None

    def attach(self, used_today: int, on_charge: Callable[[int], None]) -> None:
        """Start from what the store says was spent today and report every new charge."""
        with self._lock:
            self.used = used_today
            self._on_charge = on_charge

    def charge(self, call: str, calls: int = 1) -> None:
        """Account for `calls` requests to `call`, or raise QuotaExhausted without spending."""
        units = COSTS[call] * calls
        with self._lock:
            if self.used + units > self.limit:
                raise QuotaExhausted(
                    f"{call} needs {units} units but only {self.limit - self.used} of "
                    f"{self.limit} are left today"
                )
            self.used += units
            self.used_this_run += units
            if self._on_charge is not None:
                self._on_charge(units)
