"""When a video was uploaded and how long it had to collect views, from a dataset's table.

Upload age is the strongest confounder of views (an old video had years to collect them),
so the split protocol, the context encoder and the SAE study's age control all read it, and
read it the same way: from this one definition, at the bottom of the layers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def upload_times(table: pd.DataFrame, column: str = "published_at") -> np.ndarray | None:
    """(N,) unix seconds of `column` (NaN where unparseable), or None without that column."""
    if column not in table.columns:
        return None
    stamps = pd.to_datetime(table[column], errors="coerce", utc=True, format="mixed")
    epoch = pd.Timestamp(0, tz="UTC")
    seconds = (stamps - epoch).dt.total_seconds().to_numpy(dtype=np.float64)  # NaT -> NaN
    return None if np.isnan(seconds).all() else seconds


def dataset_ages_days(table: pd.DataFrame, as_of: str | None = None) -> np.ndarray:
    """(N,) days from upload to the views snapshot (NaN where unknown).

    The snapshot is the row's `collected_at`, else `as_of`, else the newest upload in the
    table (a stand-in when the collection date was not recorded: ages are then relative).
    """
    times = upload_times(table)
    if times is None:
        return np.full(len(table), np.nan)
    snap = upload_times(table, "collected_at")
    if snap is None:
        ref = pd.Timestamp(as_of, tz="UTC").timestamp() if as_of else np.nanmax(times)
        snap = np.full(len(table), ref)
    return (snap - times) / 86400.0
