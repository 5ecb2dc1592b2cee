"""Collect a thumbnail dataset from YouTube: crash-safe, resumable, quota-aware.

The package is layered so each part can be tested without a network:
`filters` and `quota` are pure arithmetic, `http` retries requests, `ytdlp` and `api`
turn YouTube's answers into `VideoInfo`, `store` keeps the state in SQLite and
`collector` runs the whole thing. `docs/COLLECT.md` explains how to run it at scale.
"""

from thumbview.collect.api import DataApiBackend
from thumbview.collect.collector import (
    CollectConfig,
    CollectSummary,
    RefreshSummary,
    collect_channel,
    collect_ids,
    collect_search,
    export_metadata,
    refresh,
)
from thumbview.collect.filters import FilterConfig, parse_shard, read_id_file, shard_ids
from thumbview.collect.http import HttpClient, RetryPolicy
from thumbview.collect.lock import LockHeld, dataset_lock
from thumbview.collect.merge import MergeSummary, merge_shards
from thumbview.collect.options import CollectOptions
from thumbview.collect.quota import QuotaExhausted, QuotaTracker
from thumbview.collect.store import Store
from thumbview.collect.types import (
    Backend,
    CollectError,
    Unavailable,
    VideoInfo,
)
from thumbview.collect.ytdlp import YtDlpBackend

__all__ = [
    "Backend",
    "CollectConfig",
    "CollectError",
    "CollectOptions",
    "CollectSummary",
    "DataApiBackend",
    "FilterConfig",
    "HttpClient",
    "LockHeld",
    "MergeSummary",
    "QuotaExhausted",
    "QuotaTracker",
    "RefreshSummary",
    "RetryPolicy",
    "Store",
    "Unavailable",
    "VideoInfo",
    "YtDlpBackend",
    "collect_channel",
    "collect_ids",
    "collect_search",
    "dataset_lock",
    "export_metadata",
    "merge_shards",
    "parse_shard",
    "read_id_file",
    "refresh",
    "shard_ids",
]
