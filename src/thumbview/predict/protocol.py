"""Which evaluation protocol a dataset supports, decided from its channel structure alone.

Channel-disjoint splits answer "how does the model do on a channel it never saw?", the honest
question for a model trained on many creators. A creator's own dataset often has one to six
channels: too few to hold channels out (a test side of one channel, calibration folds that
need five). There the question a creator asks is a different one anyway: "how will my NEXT
upload do?". So with too few channels the split is by time within each channel: older videos
train, the newest share of each channel tests, and the calibration folds are time slices
(each fold holds the same time slice of every channel). Without upload dates the split is
random within channels, and the protocol says so.

Everything here looks only at channel ids and dates, so it runs before any feature is
computed: a dataset that cannot be evaluated is refused in seconds, with the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from thumbview.predict.metrics import EvaluationError, _group_codes, group_train_test_split

CHANNEL_DISJOINT = "channel-disjoint"
TIME_WITHIN_CHANNEL = "time-within-channel"
RANDOM_WITHIN_CHANNEL = "random-within-channel"
RANDOM = "random"
MIN_ROWS_PER_FOLD = 2


class ProtocolError(ValueError):
    """The dataset cannot be split for training and evaluation; the message gives the fix."""


@dataclass(frozen=True)
class SplitProtocol:
    """How rows were split, and why (written to `eval.json` and printed by the CLI).

    name: one of channel-disjoint, time-within-channel, random-within-channel, random.
    reason: one plain sentence on why this protocol was chosen.
    n_channels: distinct channel ids among the usable rows (0 when there is no channel column).
    suggestion: advice for the user (e.g. `--target channel-relative`), or None.
    """

    name: str
    reason: str
    n_channels: int
    suggestion: str | None = None

    def to_json_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SplitPlan:
    """The protocol plus the rows it assigns.

    train_idx / test_idx: dataset row indices (test may be empty when no hold-out is asked).
    fold_groups: (len(train_idx),) labels for the calibration / CV folds of the training rows:
    channel ids (channel-disjoint), time-slice numbers (time-within-channel) or None (random).
    """

    protocol: SplitProtocol
    train_idx: np.ndarray
    test_idx: np.ndarray
    fold_groups: np.ndarray | None


def n_channels(channels) -> int:
    """Distinct non-missing channel ids (None, NaN and "" are missing)."""
    if channels is None:
        return 0
    return int(pd.Series(np.asarray(channels, dtype=object)).replace("", None).nunique())


def channel_disjoint_ok(groups, k: int, holdout_frac: float, seed: int) -> bool:
    """True when a channel-disjoint hold-out AND k channel-disjoint folds of the rest exist."""
    codes = _group_codes(groups, None)
    if holdout_frac <= 0:
        return len(np.unique(codes)) >= k
    try:
        train, _ = group_train_test_split(codes, holdout_frac, seed)
    except EvaluationError:
        return False
    return len(np.unique(codes[train])) >= k


def time_rank(channels, times: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """(N,) position of each video inside its channel in [0, 1): 0 = oldest.

    Unknown dates (or no dates at all) are ordered at random, so the split is then random
    within the channel; rows without a channel form one pool.
    """
    n = len(channels)
    codes = pd.factorize(pd.Series(np.asarray(channels, dtype=object)).replace("", None))[0]
    noise = np.random.default_rng(seed).random(n)  # (N,) random order where time is unknown
    t = np.full(n, np.nan) if times is None else np.asarray(times, dtype=np.float64)
    key = np.where(np.isnan(t), np.nanmin(t, initial=0.0) if np.isfinite(t).any() else 0.0, t)
    order = np.lexsort((noise, key, codes))  # by channel, then time, then random
    sorted_codes = codes[order]
    start = np.searchsorted(sorted_codes, sorted_codes, side="left")
    end = np.searchsorted(sorted_codes, sorted_codes, side="right")
    rank = np.empty(n)
    rank[order] = (np.arange(n) - start) / (end - start)  # (N,) in [0, 1)
    return rank


def time_split(rank: np.ndarray, channels, holdout_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Newest `holdout_frac` of each channel (at least one video, never the only one) -> test."""
    sizes = pd.Series(np.asarray(channels, dtype=object)).map(
        pd.Series(np.asarray(channels, dtype=object)).value_counts()
    )
    size = sizes.fillna(1).to_numpy(dtype=np.float64)  # (N,)
    if holdout_frac <= 0:
        return np.arange(len(rank)), np.arange(0)
    n_test = np.maximum(1, np.round(holdout_frac * size))  # per channel
    is_test = (size >= 2) & (rank >= 1 - n_test / size - 1e-9)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def time_slices(rank: np.ndarray, k: int) -> np.ndarray:
    """(N,) fold label 0..k-1: the same time slice of every channel lands in the same fold."""
    return np.minimum((np.asarray(rank) * k).astype(np.int64), k - 1)


def plan_split(
    channels,
    times: np.ndarray | None,
    usable: np.ndarray,
    *,
    k: int = 5,
    holdout_frac: float = 0.2,
    seed: int = 0,
    target: str = "log10",
) -> SplitPlan:
    """Choose the protocol for the `usable` rows and split them; refuse early with the fix."""
    usable = np.asarray(usable, dtype=np.int64)
    _check_size(len(usable), k, holdout_frac, target)
    if channels is None:
        train, test = _random_split(len(usable), holdout_frac, seed)
        reason = "the dataset has no channel_id column, so channels cannot be held out"
        protocol = SplitProtocol(RANDOM, reason, 0)
        return SplitPlan(protocol, usable[train], usable[test], None)
    ch = np.asarray(channels, dtype=object)[usable]
    count = n_channels(ch)
    if channel_disjoint_ok(ch, k, holdout_frac, seed):
        train, test = (
            group_train_test_split(ch, holdout_frac, seed)
            if holdout_frac > 0
            else (np.arange(len(usable)), np.arange(0))
        )
        reason = f"{count} channels: enough to hold whole channels out"
        protocol = SplitProtocol(CHANNEL_DISJOINT, reason, count)
        return SplitPlan(protocol, usable[train], usable[test], ch[train])
    return _within_channel_plan(ch, times, usable, k, holdout_frac, seed, target, count)


def _within_channel_plan(ch, times, usable, k, holdout_frac, seed, target, count) -> SplitPlan:
    t = None if times is None else np.asarray(times, dtype=np.float64)[usable]
    rank = time_rank(ch, t, seed)
    train, test = time_split(rank, ch, holdout_frac)
    folds = time_slices(time_rank(ch[train], None if t is None else t[train], seed), k)
    need = k + 2 if holdout_frac > 0 else k
    why = f"only {count} channel{'s' if count != 1 else ''} (channel-disjoint needs about {need})"
    if t is None:
        name, how = RANDOM_WITHIN_CHANNEL, "split at random within channels (no published_at dates)"
    else:
        name, how = TIME_WITHIN_CHANNEL, "older videos train, each channel's newest are the test"
    suggestion = None
    if target == "log10" and count >= 2:
        suggestion = (
            "channels differ in size: try --target channel-relative to predict views "
            "relative to each channel's usual views"
        )
    protocol = SplitProtocol(name, f"{why}: {how}", count, suggestion)
    return SplitPlan(protocol, usable[train], usable[test], folds)


def _random_split(n: int, holdout_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if holdout_frac <= 0:
        return np.arange(n), np.arange(0)
    return group_train_test_split(None, holdout_frac, seed, n=n)


def _check_size(n: int, k: int, holdout_frac: float, target: str = "log10") -> None:
    """Enough rows for k calibration folds after the hold-out, or a message with the fix."""
    need = int(np.ceil(k * MIN_ROWS_PER_FOLD / (1 - max(holdout_frac, 0.0))))
    if n < need:
        fix = "add videos or pass --holdout 0"
        if target == "channel-relative":
            fix = "the channel-relative target only uses channels with 2+ videos: " + (
                "use --target log10 or add videos"
            )
        raise ProtocolError(
            f"only {n} videos with a target; {k}-fold calibration with a {holdout_frac:.0%} "
            f"hold-out needs at least {need}: {fix}"
        )
