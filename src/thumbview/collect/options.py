"""The options every collect command shares, defined once: defaults, help and flags.

`CollectOptions` is what `thumbview collect search|channel|ids|refresh` have in common
(the source, the quota, the download limits and the filters). The CLI derives its flags
from these fields (`help`, `flag`, `envvar` in each field's metadata), so a default or a
help text lives here and nowhere else; library callers can build a run from it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date
from enum import StrEnum
from typing import Any

from thumbview.collect.api import DEFAULT_BASE_URL, DataApiBackend
from thumbview.collect.collector import CollectConfig
from thumbview.collect.filters import FilterConfig
from thumbview.collect.http import HttpClient, RetryPolicy
from thumbview.collect.quota import DEFAULT_DAILY_QUOTA, QuotaTracker
from thumbview.collect.thumbs import DEFAULT_MAX_BYTES, THUMB_HOSTS
from thumbview.collect.types import Backend, CollectError
from thumbview.collect.ytdlp import YtDlpBackend

FILTERS = "filters"  # the group of options that only commands which collect new videos take


class BackendName(StrEnum):
    ytdlp = "ytdlp"
    api = "api"


def option(default: Any, help: str, *, group: str = "source", **cli: Any) -> Any:
    """A field with its CLI help; `cli` holds `envvar`, `show_default`... for the flag."""
    return field(default=default, metadata={"help": help, "group": group, **cli})


@dataclass(frozen=True)
class CollectOptions:
    """Shared settings of the collect commands (each field's metadata holds its CLI help)."""

    backend: BackendName = option(
        BackendName.ytdlp, "ytdlp (no key) or api (YouTube Data API v3, key in YOUTUBE_API_KEY)."
    )
    api_key: str = option("", "Data API key.", envvar="YOUTUBE_API_KEY", show_default=False)
    api_base_url: str = option(
        DEFAULT_BASE_URL, "Data API base URL.", envvar="YOUTUBE_API_BASE_URL"
    )
    daily_quota: int = option(
        DEFAULT_DAILY_QUOTA,
        "Data API units to spend per Pacific day at most; stops cleanly before.",
    )
    workers: int = option(CollectConfig.workers, "Parallel requests.")
    thumb_max_bytes: int = option(
        DEFAULT_MAX_BYTES, "Refuse a thumbnail body larger than this (bytes).", group="download"
    )
    thumb_hosts: str = option(
        ",".join(sorted(THUMB_HOSTS)),
        "Comma-separated hosts thumbnails may be downloaded (or redirected) from.",
        group="download",
        envvar="THUMBVIEW_THUMB_HOSTS",
        show_default="YouTube's image hosts",
    )
    min_views: int = option(FilterConfig.min_views, "Keep videos with at least this many views.", group=FILTERS)  # fmt: skip
    since: date | None = option(None, "Keep videos published on or after (YYYY-MM-DD).", group=FILTERS)  # fmt: skip
    until: date | None = option(None, "Keep videos published on or before (YYYY-MM-DD).", group=FILTERS)  # fmt: skip
    max_duration: float | None = option(None, "Keep videos at most this long (seconds).", group=FILTERS)  # fmt: skip
    include_shorts: bool = option(
        FilterConfig.include_shorts,
        "Keep Shorts (<= 60 s or listed under /shorts/).",
        group=FILTERS,
    )

    def filters(self) -> FilterConfig:
        return FilterConfig(
            min_views=self.min_views,
            since=self.since,
            until=self.until,
            max_duration_s=self.max_duration,
            include_shorts=self.include_shorts,
        )

    def config(self) -> CollectConfig:
        hosts = frozenset(h.strip().lower() for h in self.thumb_hosts.split(",") if h.strip())
        if not hosts:
            raise CollectError("--thumb-hosts needs at least one host")
        return CollectConfig(
            filters=self.filters(),
            workers=self.workers,
            thumb_max_bytes=self.thumb_max_bytes,
            thumb_hosts=hosts,
        )

    def make_backend(self) -> Backend:
        """The metadata source these options name (the api one quota-checked)."""
        if self.backend is BackendName.api:
            quota = QuotaTracker(self.daily_quota)
            return DataApiBackend(
                self.api_key, http=HttpClient(), quota=quota, base_url=self.api_base_url
            )
        return YtDlpBackend(policy=RetryPolicy(attempts=3, base_delay=2.0))


def option_fields(groups: frozenset[str] | None = None) -> list:
    """The `CollectOptions` fields of `groups` (all when None), in declaration order."""
    return [f for f in fields(CollectOptions) if groups is None or f.metadata["group"] in groups]
