"""Training targets: log views, and the channel-relative 'outlier score' against a loop reference."""

from __future__ import annotations

import numpy as np
import pytest

from thumbview.predict.target import (
    TARGETS,
    TargetError,
    channel_relative,
    log_views,
    make_target,
    views_from_log,
)


def loop_reference(lv: np.ndarray, channels: list) -> tuple[np.ndarray, np.ndarray]:
    """The obvious O(N^2) definition: median of the other videos of the same channel."""
    y, mask = np.full(len(lv), np.nan), np.zeros(len(lv), dtype=bool)
    for i, c in enumerate(channels):
        if c is None:
            continue
        others = [lv[j] for j, d in enumerate(channels) if d == c and j != i]
        if others:
            y[i], mask[i] = lv[i] - np.median(others), True
    return y, mask


def test_log_views_values_and_inverse():
    views = np.array([0, 9, 99, 999_999, 3_141_592])
    y = log_views(views)
    np.testing.assert_allclose(y[:4], [0, 1, 2, 6])
    np.testing.assert_allclose(views_from_log(y), views, rtol=1e-12)


@pytest.mark.parametrize("bad", [[-1, 5], [np.nan, 1], [np.inf, 2]])
def test_log_views_rejects_negative_and_nonfinite(bad):
    with pytest.raises(TargetError, match="finite and >= 0"):
        log_views(bad)


def test_log_views_rejects_2d():
    with pytest.raises(TargetError, match="1-d"):
        log_views(np.ones((2, 2)))


def test_channel_relative_small_example():
    lv = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
    y, mask = channel_relative(lv, ["a", "a", "a", "b", None, "b"])
    # a: others of 1 are {2,3} -> 2.5; of 2 -> {1,3} -> 2; of 3 -> {1,2} -> 1.5. b: pairs.
    np.testing.assert_allclose(y[mask], [-1.5, 0.0, 1.5, -3.0, 3.0])
    assert mask.tolist() == [True, True, True, True, False, True]
    assert np.isnan(y[4])


@pytest.mark.parametrize("seed", range(5))
def test_channel_relative_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n = 300
    # Small value set -> many ties; channel sizes from 1 to ~10; some missing channels.
    lv = rng.integers(0, 6, size=n).astype(float) if seed % 2 else rng.normal(4, 1, size=n)
    ids = rng.integers(0, 60, size=n)
    channels = [None if rng.random() < 0.05 else f"ch{c}" for c in ids]
    y, mask = channel_relative(lv, channels)
    y_ref, mask_ref = loop_reference(lv, channels)
    np.testing.assert_array_equal(mask, mask_ref)
    np.testing.assert_allclose(y[mask], y_ref[mask_ref], atol=1e-12)
    assert np.isnan(y[~mask]).all()


def test_channel_relative_missing_markers_and_singletons():
    y, mask = channel_relative(np.arange(5.0), ["", np.nan, None, "solo", "solo2"])
    assert not mask.any() and np.isnan(y).all()


def test_channel_relative_length_mismatch():
    with pytest.raises(TargetError, match="channels has 2 rows"):
        channel_relative(np.arange(3.0), ["a", "b"])


def test_make_target():
    assert TARGETS == ("log10", "channel-relative")
    y, mask = make_target([9, 99], "log10")
    np.testing.assert_allclose(y, [1, 2])
    assert mask.all()
    y, mask = make_target([9, 99, 999], "channel-relative", ["a", "a", "b"])
    np.testing.assert_allclose(y[:2], [-1, 1])
    assert mask.tolist() == [True, True, False]
    with pytest.raises(TargetError, match="needs channel ids"):
        make_target([1, 2], "channel-relative")
    with pytest.raises(TargetError, match="unknown target"):
        make_target([1, 2], "raw")
