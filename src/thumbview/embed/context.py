"""What is known about a video before anyone sees its thumbnail: age, timing, channel size.

Views are counted at a snapshot, so a video uploaded yesterday cannot have the views of one
uploaded five years ago; a channel with a million subscribers starts far ahead. Those facts
explain much of the spread that a thumbnail model would otherwise be blamed for, and they
are known before upload (except the age, which is known at the snapshot). Likes and comments
are NOT inputs: they are outcomes, counted together with the views.

For comparing candidates of ONE upcoming video the context is shared by all of them and
cancels: it changes the level of every prediction, never their order.

Inputs are per-row dicts (modality "meta"), built from the dataset by `context_rows` or from
command-line options (`--published`, `--subscribers`, `--channel-videos`). A prediction asked
without some of them is made for the training data's typical video: `predict.card` fills the
gap with the training rows' medians (stored in the model folder's card.json) and says so, and
its upload age is the model's horizon (the training videos' median age at the views snapshot).
`FILL` is only the last resort inside this encoder (a row of a dataset without the column, or
a model folder from before card.json): a column missing from the whole dataset is constant in
training, so the model gives it no weight, and a note says it was skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from thumbview.embed.base import Encoder

log = logging.getLogger(__name__)

FEATURES = (
    "log10 upload age (days at the views snapshot)",
    "publication year",
    "weekday (sin)",
    "weekday (cos)",
    "hour of day UTC (sin)",
    "hour of day UTC (cos)",
    "log10 channel subscribers",
    "log10 channel videos in the dataset",
)
FILL = {
    "age_days": 365.0,
    "published": "2020-01-01T12:00:00Z",
    "subscribers": 1e4,
    "channel_videos": 1,
}


class ContextEncoder(Encoder):
    """Per-video context -> 8 numbers (see FEATURES); pure in its input dicts."""

    name = "context"
    version = "1"
    modality = "meta"

    def __init__(self, as_of: str | None = None):
        """`as_of`: the views snapshot date when the dataset has no `collected_at` column
        (default: its newest upload, so ages are relative to that)."""
        self.as_of = as_of

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "as_of": self.as_of}

    @property
    def dim(self) -> int:
        return len(FEATURES)

    def feature_names(self) -> list[str]:
        return list(FEATURES)

    def encode(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        return (
            np.stack([_row(r) for r in inputs]).astype(np.float32)
            if inputs
            else np.zeros((0, self.dim), np.float32)
        )

    def rows(self, table: pd.DataFrame) -> list[dict[str, Any]]:
        """The input dict of every dataset row (what `embed` caches by)."""
        return context_rows(table, self.as_of)


def _row(r: dict[str, Any]) -> np.ndarray:
    age = _number(r.get("age_days"), FILL["age_days"])
    when = pd.to_datetime(r.get("published") or FILL["published"], utc=True, errors="coerce")
    if pd.isna(when):
        when = pd.Timestamp(FILL["published"])
    subs = _number(r.get("subscribers"), FILL["subscribers"])
    videos = _number(r.get("channel_videos"), FILL["channel_videos"])
    wd, hr = 2 * np.pi * when.weekday() / 7, 2 * np.pi * (when.hour + when.minute / 60) / 24
    return np.array(
        [
            np.log10(1 + max(age, 0.0)),
            when.year + when.dayofyear / 366,
            np.sin(wd),
            np.cos(wd),
            np.sin(hr),
            np.cos(hr),
            np.log10(1 + max(subs, 0.0)),
            np.log10(max(videos, 1.0)),
        ]
    )


def _number(value: Any, fill: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return fill
    return v if np.isfinite(v) else fill


def context_rows(table: pd.DataFrame, as_of: str | None = None) -> list[dict[str, Any]]:
    """Per-row context dicts from a dataset table; absent columns are noted once and skipped."""
    from thumbview.data.times import dataset_ages_days  # the one age definition

    n = len(table)
    ages = dataset_ages_days(table, as_of)
    published = (
        table["published_at"].astype(str).tolist() if "published_at" in table else [None] * n
    )
    subs = table["subscribers"].tolist() if "subscribers" in table else [None] * n
    if "channel_id" in table:
        ch = table["channel_id"].astype(object)
        videos = ch.map(ch.value_counts()).fillna(1).tolist()
    else:
        videos = [None] * n
    for column, what in (
        ("published_at", "upload age, year, weekday and hour"),
        ("subscribers", "subscribers"),
        ("channel_id", "channel size"),
    ):
        if column not in table:
            log.info("context: no %s column, so %s are skipped", column, what)
    return [
        {
            "age_days": None if not np.isfinite(a) else float(a),
            "published": p,
            "subscribers": None if s is None or pd.isna(s) else float(s),
            "channel_videos": v,
        }
        for a, p, s, v in zip(ages, published, subs, videos, strict=True)
    ]


def context_from_options(
    published: str | None = None,
    subscribers: float | None = None,
    as_of: str | None = None,
    channel_videos: float | None = None,
) -> dict[str, Any]:
    """The context of a video not in a dataset (`predict --published ... --subscribers ...`).

    Without `as_of` the age is left out: the prediction is for views at the model's horizon
    (`predict.card`). With it, the age is counted from `published` to that views snapshot.
    Values that cannot be a video's context raise ValueError with the option's name.
    """
    out: dict[str, Any] = {}
    if published:
        when = pd.to_datetime(published, utc=True, errors="coerce")
        if pd.isna(when):
            raise ValueError(f"--published {published!r} is not a date (use YYYY-MM-DD)")
        out["published"] = when.isoformat()
        if as_of:
            out["age_days"] = max((pd.Timestamp(as_of, tz="UTC") - when).days, 0)
    for name, value, low in (
        ("subscribers", subscribers, 0),
        ("channel-videos", channel_videos, 1),
    ):
        if value is None:
            continue
        if not np.isfinite(value) or value < low:
            raise ValueError(f"--{name} must be a number >= {low}, got {value:g}")
        out[name.replace("-", "_")] = float(value)
    return out
