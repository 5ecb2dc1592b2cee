"""Tests of the SAE feature study statistics (thumbview.sae.study and its parts) on arrays."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from thumbview.sae import arrays
from thumbview.sae import covariates as C
from thumbview.sae import nulltests as N
from thumbview.sae import selection as SEL
from thumbview.sae import study as S
from thumbview.sae.arrays import StudyError
from thumbview.sae.study import StudyConfig

FAST = {"n_perm": 20_000, "n_shuffles": 199, "n_boot": 200}


def sparse_codes(rng, n, n_lat, k, dtype=np.float32):
    """CSR (n, n_lat) with exactly k distinct active latents per row (an SAE TopK code)."""
    cols = np.argsort(rng.random((n, n_lat)), axis=1)[:, :k]  # (n, k) distinct per row
    vals = rng.exponential(1.0, n * k).astype(dtype) + dtype(0.06)
    return sp.csr_matrix((vals, (np.repeat(np.arange(n), k), cols.ravel())), shape=(n, n_lat))


@pytest.fixture(scope="module")
def planted():
    """20,000 videos x 200 latents, k=8; latents 0,1 multiply views x3, latents 2,3 x0.33."""
    rng = np.random.default_rng(1)
    x = sparse_codes(rng, 20_000, 200, 8)
    views = rng.lognormal(8.0, 1.5, 20_000)
    for latent, mult in [(0, 3.0), (1, 3.0), (2, 0.33), (3, 0.33)]:
        views[x[:, latent].nonzero()[0]] *= mult
    return x, views


def test_planted_features_rank_at_top_and_bottom(planted):
    x, views = planted
    res = S.run_study(x, views, StudyConfig(**FAST))
    f = res.features
    assert len(f) > 150  # ~800 active rows per latent: nearly all qualify
    assert set(f["latent_feature_index"].head(2)) == {0, 1}
    assert set(f["latent_feature_index"].tail(2)) == {2, 3}
    planted_rows = f[f["latent_feature_index"].isin([0, 1, 2, 3])]
    assert (planted_rows["q"] < 0.01).all()
    assert ((f["ratio"].head(2) > 2.0) & (f["ratio"].head(2) < 4.5)).all()
    assert ((f["ratio"].tail(2) > 0.2) & (f["ratio"].tail(2) < 0.5)).all()
    assert (f["ci_low"].head(2) > res.dataset_median).all()  # CI excludes the dataset median
    table = res.table()
    assert list(table.columns[:4]) == [
        "top_or_bottom",
        "rank",
        "latent_feature_index",
        "group_median_views",
    ]
    assert table["latent_feature_index"].iloc[0] in (0, 1)
    assert table.query("top_or_bottom == 'bottom' and rank == 1")[
        "latent_feature_index"
    ].item() in (2, 3)
    assert res.max_z.latent in (0, 1, 2, 3) and res.max_z.pvalue < 0.01
    summary = res.summary()
    json.dumps(summary, allow_nan=False)
    old_keys = {"ks_statistic", "ks_pvalue", "ks_test", "heldout", "n_q_below_0.05", "table"}
    new_keys = {"max_z_statistic", "max_z_pvalue", "omnibus_tests", "n_clusters_q_below_0.05"}
    assert old_keys | new_keys <= summary.keys() and "p_combined" in summary["heldout"]


def test_heldout_test_detects_planted_top_videos():
    rng = np.random.default_rng(2)
    x = sparse_codes(rng, 6000, 60, 4).tolil()
    views = rng.lognormal(8.0, 1.0, 6000)
    for latent in range(20):  # each planted latent owns 150 rows, strongest there
        rows = np.arange(latent * 150, (latent + 1) * 150)
        x[rows, latent] = 10.0 + rng.random((150, 1)).astype(np.float32)
        views[rows] *= 10.0 if latent < 10 else 0.1
    cfg = StudyConfig(top_k=101, min_active=100, heldout_group=8, n_extreme=8, **FAST)
    res = S.run_study(x.tocsr(), views, cfg)
    assert set(res.features["latent_feature_index"].head(8)) <= set(range(10))
    held = res.heldout
    assert held.n_features == 8 and held.n_videos_high == held.n_videos_low == 8
    assert res.p_hhm < 0.01 and res.p_lhm < 0.01 and held.p_combined < 0.02
    assert held.hhm > held.null_high and held.lhm < held.null_low


def _reference_clusters(groups: np.ndarray, min_share: float) -> list[int]:
    """share_clusters as a plain loop over Python sets."""
    leads, labels = [], []
    for rows in groups:
        members = set(rows.tolist())
        hit = [c for c, lead in enumerate(leads) if len(members & lead) > min_share * len(rows)]
        labels.append(hit[0] if hit else len(leads))
        if not hit:
            leads.append(members)
    return labels


@pytest.mark.parametrize("chunk", [1 << 22, 40])
def test_share_clusters_equals_plain_loop(chunk, monkeypatch):
    monkeypatch.setattr(arrays, "CHUNK_ELEMS", chunk)  # 40: blocks of one feature at a time
    rng = np.random.default_rng(14)
    bases = [rng.choice(300, 20, replace=False) for _ in range(6)]
    groups = []
    for i in range(40):  # copies of 6 base groups with 0-15 of 20 videos swapped out
        rows = bases[i % 6].copy()
        swap = rng.integers(0, 16)
        rows[:swap] = rng.choice(np.setdiff1d(np.arange(300), rows), swap, replace=False)
        groups.append(rng.permutation(rows))
    groups = np.array(groups)
    got = SEL.share_clusters(groups, 300)
    assert got.tolist() == _reference_clusters(groups, 0.5)
    assert 6 <= got.max() + 1 < 40  # copies that kept more than half join their base's cluster
    assert SEL.share_clusters(groups[:1], 300).tolist() == [0]
    with pytest.raises(StudyError, match="min_share"):
        SEL.share_clusters(groups, 300, min_share=1.0)


def test_discoveries_count_as_clusters_of_shared_videos_5_runs():
    """5 runs, known truth: 3 planted concepts (80 videos each with x4, x4 and x0.25 views),
    each seen by 6 latents whose groups draw 60 of its 80 videos, among 60 null latents. The
    18 planted latents are discoveries, and they form exactly 3 clusters, one per concept."""
    for seed in range(5):
        rng = np.random.default_rng(600 + seed)
        n = 2000
        x = rng.exponential(0.5, (n, 78)) * (rng.random((n, 78)) < 0.3)  # (N, L)
        views = rng.lognormal(8.0, 1.0, n)
        for concept, mult in enumerate([4.0, 4.0, 0.25]):
            rows = np.arange(concept * 80, (concept + 1) * 80)
            views[rows] *= mult
            for j in range(6):
                x[rows, 6 * concept + j] = 5.0 + rng.random(80)  # this concept's videos first
        cfg = StudyConfig(top_k=61, min_active=60, n_perm=5000, n_shuffles=19, n_boot=0,
                          n_extreme=5, heldout_group=5, seed=seed)  # fmt: skip
        res = S.run_study(x, views, cfg)
        f = res.features.set_index("latent_feature_index")
        planted = f.loc[np.arange(18)]
        assert (planted["q"] < 0.05).all()
        per_concept = planted["cluster"].to_numpy().reshape(3, 6)
        assert (per_concept == per_concept[:, :1]).all()  # one cluster per concept ...
        assert len(set(per_concept[:, 0])) == 3  # ... and three different ones
        n_false = int((f.drop(index=np.arange(18))["q"] < 0.05).sum())
        assert res.n_discovery_clusters <= 3 + n_false
        summary = res.summary()
        assert summary["n_clusters_q_below_0.05"] == res.n_discovery_clusters
        sizes = sorted(c["n_features"] for c in summary["discovery_clusters"])
        assert sizes[-3:] == [6, 6, 6] and sum(sizes) == summary["n_q_below_0.05"]


def noise_run(seed: int) -> tuple[bool, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, n_lat = 2000, 40
    x = np.where(rng.random((n, n_lat)) < 0.1, rng.exponential(1.0, (n, n_lat)), 0.0)
    views = rng.lognormal(8.0, 1.5, n)  # independent of the latents
    cfg = StudyConfig(
        top_k=51,
        min_active=50,
        n_perm=4000,
        n_shuffles=19,
        heldout_group=5,
        n_extreme=5,
        n_boot=0,
        seed=seed,
    )
    f = S.run_study(x.astype(np.float32), views, cfg).features
    assert len(f) == n_lat
    return bool((f["q"] < 0.05).any()), f["p"].to_numpy()


def test_noise_latents_false_positive_rate():
    runs = [noise_run(seed) for seed in range(100)]
    n_with_discovery = sum(hit for hit, _ in runs)
    assert n_with_discovery <= 5  # BH at 5%: a discovery in at most 5 of 100 null runs
    p = np.concatenate([p for _, p in runs])
    assert 0.03 < (p < 0.05).mean() < 0.07  # per-feature p-values are calibrated


@pytest.mark.parametrize(
    ("group_size", "statistic"), [(7, "median"), (10, "median"), (9, "mean"), (400, "median")]
)
def test_random_group_stats_equals_plain_loop(group_size, statistic):
    """The vectorised statistic equals a loop over the same groups (400 > N/4: random keys)."""
    views = np.random.default_rng(3).lognormal(5.0, 2.0, 1234)
    got = N.random_group_stats(views, group_size, 300, np.random.default_rng(7), statistic)
    groups = N.draw_groups(np.random.default_rng(7), len(views), 300, group_size)
    ref = []
    for rows in groups:
        assert len(set(rows.tolist())) == group_size  # distinct videos, as a feature's group
        values = [float(views[r]) for r in rows]
        ref.append(
            statistics.median(values) if statistic == "median" else sum(values) / len(values)
        )
    if statistic == "median":
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.parametrize(
    ("n_rows", "group_size", "n_groups"), [(60, 30, 20_000), (400, 40, 20_000)]
)
def test_draw_groups_is_uniform_without_replacement(n_rows, group_size, n_groups, monkeypatch):
    """Known truth: the mean of g distinct draws from N values has variance
    s2 / g * (N - g) / (N - 1) (s2 the population variance); with replacement it would be
    s2 / g, 1.97x (N=60, g=30: random keys) or 1.11x (N=400, g=40: redrawn repeats) larger."""
    monkeypatch.setattr(arrays, "CHUNK_ELEMS", 5000)  # many blocks on both paths
    values = np.random.default_rng(4).lognormal(0.0, 1.0, n_rows)
    groups = N.draw_groups(np.random.default_rng(5), n_rows, n_groups, group_size)
    assert groups.shape == (n_groups, group_size)
    assert (np.diff(np.sort(groups, axis=1), axis=1) > 0).all()  # distinct within each group
    counts = np.bincount(groups.ravel(), minlength=n_rows)  # each video equally often
    expected = n_groups * group_size / n_rows
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    truth = values.var() / group_size * (n_rows - group_size) / (n_rows - 1)
    assert values[groups].mean(axis=1).var() == pytest.approx(truth, rel=0.04)
    with pytest.raises(StudyError, match="groups of 61"):
        N.draw_groups(np.random.default_rng(0), 60, 1, 61)


def test_dense_and_sparse_give_identical_results(planted):
    x, views = planted
    x, views = x[:6000], views[:6000]
    cfg = StudyConfig(top_k=101, min_active=100, n_extreme=10, heldout_group=20, **FAST)
    results = [S.run_study(m, views, cfg) for m in (x, x.tocsc(), x.toarray())]
    for other in results[1:]:
        pd.testing.assert_frame_equal(results[0].features, other.features)
        np.testing.assert_array_equal(results[0].random_stats, other.random_stats)
        assert results[0].summary() == other.summary()


@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_top_activations_matches_argsort(top_k, monkeypatch):
    rng = np.random.default_rng(4)
    dense = np.where(rng.random((300, 30)) < 0.1, rng.integers(1, 4, (300, 30)), 0)
    dense = dense.astype(np.float32)  # few levels: many ties, many columns with < 40 nonzeros
    dense[:, 5] = 0.0  # an all-zero latent
    ref = np.argsort(-dense, axis=0, kind="stable")[:top_k].T  # ties: lower row first
    cols = np.array([5, 0, 29, 3])
    monkeypatch.setattr(arrays, "CHUNK_ELEMS", 64)  # exercise the column blocks
    for m in (dense, sp.csr_matrix(dense), sp.csc_matrix(dense)):
        idx, val = SEL.top_activations(m, top_k)
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_array_equal(val, np.take_along_axis(dense.T, ref, axis=1))
        np.testing.assert_array_equal(SEL.top_activations(m, top_k, columns=cols)[0], ref[cols])


def test_group_statistics_structure_of_defaults():
    cfg = StudyConfig()
    assert (cfg.top_k, cfg.hold_out, cfg.group_size, cfg.min_active) == (400, 1, 399, 399)
    assert (cfg.threshold, cfg.statistic, cfg.n_shuffles, cfg.heldout_group) == (
        0.05,
        "median",
        199,
        100,
    )
    rng = np.random.default_rng(5)
    n = 1000
    x = np.zeros((n, 3), np.float32)
    x[:, 0] = rng.permutation(n) + 1.0  # all active: qualifies, strict order
    x[:400, 1] = 0.5  # exactly 400 active (all tied): qualifies
    x[:399, 2] = 0.5  # 399 active: does not ("more than 399 of the top 400")
    views = rng.lognormal(8.0, 1.0, n)
    res = S.run_study(x, views, StudyConfig(n_perm=1000, n_shuffles=19, n_boot=50))
    f = res.features.set_index("latent_feature_index")
    assert sorted(f.index) == [0, 1]
    order = np.argsort(-x[:, 0])
    assert f.loc[0, "top_video"] == order[0]
    assert f.loc[0, "heldout_views"] == views[order[0]]
    assert f.loc[0, "group_median_views"] == np.median(views[order[1:400]])
    assert f.loc[1, "group_median_views"] == np.median(views[1:400])  # ties: rows 0..399
    assert f.loc[0, "n"] == 399
    assert res.heldout.n_features == 1  # two features: one held-out video per side


def test_permutation_pvalues_and_bh_match_references():
    rng = np.random.default_rng(6)
    null = rng.integers(0, 50, 500).astype(float)  # ties on purpose
    obs = np.array([-1.0, 0.0, 10.0, 25.0, 49.0, 60.0])
    got = N.permutation_pvalues(obs, null, "two-sided")
    for o, p in zip(obs, got, strict=True):
        ge = (sum(v >= o for v in null) + 1) / 501
        le = (sum(v <= o for v in null) + 1) / 501
        assert p == pytest.approx(min(1.0, 2 * min(ge, le)))
    assert N.permutation_pvalues(obs, null, "greater")[-1] == pytest.approx(1 / 501)
    p = np.r_[rng.random(40) ** 3, 0.01, 0.01, 1.0]
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    ref = np.empty(m)
    running = 1.0
    for r in range(m - 1, -1, -1):  # step-up from the largest p
        running = min(running, p[ranked[r]] * m / (r + 1))
        ref[ranked[r]] = running
    np.testing.assert_allclose(N.bh_qvalues(p), ref, rtol=1e-12)
    np.testing.assert_allclose(N._bh_numpy(p), ref, rtol=1e-12)


def test_bootstrap_ci_equals_loop_with_same_draws(monkeypatch):
    rng = np.random.default_rng(8)
    groups = rng.lognormal(5.0, 1.0, (7, 21))
    monkeypatch.setattr(arrays, "CHUNK_ELEMS", 2 * 50 * 21)  # two features per block
    lo, hi = N.bootstrap_ci(groups, 50, 0.9, np.random.default_rng(9), "median")
    draw = np.random.default_rng(9)
    for f in range(7):
        rows = np.minimum((draw.random((50, 21)) * 21).astype(int), 20)  # (B, g)
        boot = [np.median(groups[f, r]) for r in rows]
        assert (lo[f], hi[f]) == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])))
    assert (lo <= np.median(groups, axis=1)).all() and (np.median(groups, axis=1) <= hi).all()


def test_residualize_equals_one_hot_ols():
    rng = np.random.default_rng(10)
    n = 600
    channels = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), n)
    age = rng.uniform(0, 10, n)
    y = 4.0 + 0.3 * age - 0.02 * age**2 + (channels == "b") * 1.5 + rng.normal(0, 0.5, n)
    onehot = pd.get_dummies(channels).to_numpy(float)  # (n, 4)
    design = np.column_stack([onehot, age, age**2])
    ref = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    fixed = C.residualize(y, age, channels, channel_mode="fixed")
    np.testing.assert_allclose(fixed, ref, atol=1e-9)
    design = np.column_stack([np.ones(n), age, age**2])
    ref = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(C.residualize(y, age), ref, atol=1e-9)
    views = 10**y - 1
    adjusted = C.adjust_views(views, age, channels)
    assert (adjusted > 0).all()
    assert abs(np.corrcoef(np.log(adjusted), age)[0, 1]) < 1e-6
    years = C.upload_age_years(["2020-01-01", "2022-01-01T00:00:00Z"])
    np.testing.assert_allclose(years, [731 / 365.25, 0.0])


@pytest.fixture(scope="module")
def many_small_channels():
    """2,000 single-video channels (effects ~ N(0, 0.5^2)) + 20 channels of 150 videos with
    strong effects (+-1.5); ages differ by channel, so age and channel must be fit jointly."""
    rng = np.random.default_rng(11)
    n_big, size_big, n_single = 20, 150, 2000
    big_fx = rng.choice([-1.5, 1.5], n_big)
    fx = np.r_[np.repeat(big_fx, size_big), rng.normal(0, 0.5, n_single)]  # (N,)
    channels = np.r_[np.repeat(np.arange(n_big), size_big), n_big + np.arange(n_single)]
    age = rng.uniform(0, 8, len(fx)) + 0.5 * fx  # channel-correlated ages
    signal = rng.normal(0, 1.0, len(fx))  # the non-age, non-channel part of log views
    y = 3.0 + 0.3 * age - 0.02 * age**2 + fx + signal
    return {"y": y, "age": age, "channels": channels.astype(str), "signal": signal, "n_big": 3000}


def test_pooled_channels_keep_single_video_signal(many_small_channels):
    d = many_small_channels
    fit = C.fit_residuals(d["y"], d["age"], d["channels"])
    single = slice(d["n_big"], None)
    r = fit.residuals[single]
    assert np.ptp(r) > 1 and np.corrcoef(r, d["signal"][single])[0, 1] > 0.8
    big_means = fit.residuals[: d["n_big"]].reshape(20, 150).mean(axis=1)
    assert np.abs(big_means).max() < 0.1  # +-1.5 offsets removed up to lambda / (150 + lambda)
    assert 2 < fit.channel_lambda < 8  # planted: 1 / (0.25 + a little from the big channels)
    np.testing.assert_allclose(fit.coef[1:], [0.3, -0.02], atol=0.06)
    assert abs(np.corrcoef(fit.residuals, d["age"])[0, 1]) < 1e-9  # GLS residuals _|_ age
    fixed = C.residualize(d["y"], d["age"], d["channels"], channel_mode="fixed")
    np.testing.assert_allclose(fixed[single], 0, atol=1e-9)  # why fixed effects fail here
    adjusted = C.adjust_views(10 ** (d["y"] + 2), d["age"], d["channels"])
    assert len(np.unique(np.round(adjusted[single], 6))) == 2000


def test_variance_components_recover_balanced_design():
    rng = np.random.default_rng(12)
    n_ch, size, s2_w, s2_b = 400, 8, 0.6, 0.3
    codes = np.repeat(np.arange(n_ch), size)
    age = rng.uniform(0, 5, len(codes))
    y = (
        1.0
        + 0.4 * age
        + rng.normal(0, s2_b**0.5, n_ch)[codes]
        + rng.normal(0, s2_w**0.5, len(codes))
    )
    fit = C.fit_residuals(y, age, codes, quadratic=False)
    comp = fit.shrinkage
    assert comp.n_channels == n_ch and comp.n_multi_video == n_ch and comp.estimable
    assert comp.sigma2_within == pytest.approx(s2_w, rel=0.07)
    assert comp.sigma2_between == pytest.approx(s2_b, rel=0.2)
    assert fit.channel_lambda == pytest.approx(comp.sigma2_within / comp.sigma2_between)
    assert fit.coef[1] == pytest.approx(0.4, abs=0.02)
    # effects are the channel means of (y - X beta) shrunk by n / (n + lambda)
    r = y - np.column_stack([np.ones(len(y)), age]) @ fit.coef
    means = np.bincount(codes, weights=r) / size
    np.testing.assert_allclose(fit.channel_effects, size / (size + fit.channel_lambda) * means)


def test_channel_effects_vanish_when_not_estimable(caplog):
    rng = np.random.default_rng(13)
    y, age = rng.normal(0, 1, 300), rng.uniform(0, 5, 300)
    ols = C.residualize(y, age)
    with caplog.at_level("WARNING", logger="thumbview.sae.covariates"):
        fit = C.fit_residuals(y, age, np.arange(300))  # every channel has one video
    assert "cannot be estimated" in caplog.text and not fit.shrinkage.estimable
    assert fit.channel_lambda == np.inf
    np.testing.assert_allclose(fit.residuals, ols, atol=1e-9)
    no_fx = np.repeat(np.arange(100), 3)  # sigma2_between = 0 planted: clipped, lambda inf
    comp = C.channel_variance_components(rng.normal(0, 1, 300), no_fx)
    assert comp.estimable and comp.sigma2_between < 0.1
    with pytest.raises(StudyError, match="channel_mode"):
        C.residualize(y, channels=no_fx, channel_mode="random")


def test_channel_mode_uses_mean_of_next_ten():
    cfg = S.channel_config()
    assert (cfg.top_k, cfg.hold_out, cfg.group_size, cfg.statistic) == (11, 1, 10, "mean")
    assert (cfg.n_extreme, cfg.heldout_group) == (10, 10)
    rng = np.random.default_rng(11)
    n = 1050
    x = sparse_codes(rng, n, 40, 4)
    views = rng.lognormal(8.0, 1.0, n)
    channels = np.repeat(np.array(["A", "B", "C"], dtype=object), [350, 380, 320])
    rows = np.flatnonzero(channels == "B")
    res = S.run_study(x[rows], views[rows], S.channel_config(n_perm=2000, n_shuffles=99, n_boot=50))
    assert res.n_videos == 380 and res.stat_column == "group_mean_views"
    row = res.features.iloc[0]
    xb, vb = x[350:730].toarray(), views[350:730]
    order = np.argsort(-xb[:, int(row["latent_feature_index"])], kind="stable")
    assert row["group_mean_views"] == pytest.approx(vb[order[1:11]].mean(), rel=1e-12)
    assert row["n"] == 10 and len(res.table()) == 2 * min(10, len(res.features))


def test_bad_inputs_raise_study_error():
    rng = np.random.default_rng(12)
    x = sparse_codes(rng, 500, 20, 4)
    views = rng.lognormal(8.0, 1.0, 500)
    cfg = StudyConfig(top_k=21, min_active=20, n_perm=100, n_shuffles=9, n_boot=0)
    with pytest.raises(StudyError, match="rows but views"):
        S.run_study(x, views[:-1], cfg)
    with pytest.raises(StudyError, match="NaN"):
        S.run_study(x, np.r_[np.nan, views[1:]], cfg)
    with pytest.raises(StudyError, match="negative"):
        S.run_study(x, np.r_[-1.0, views[1:]], cfg)
    with pytest.raises(StudyError, match="at least 400"):
        S.run_study(x[:300], views[:300])
    with pytest.raises(StudyError, match=r"closest latents .* Lower `threshold`"):
        S.run_study(x, views, StudyConfig(top_k=300, min_active=299))
    with pytest.raises(StudyError, match="negative"):
        S.run_study(-x, views, cfg)
    with pytest.raises(StudyError, match="min_active"):
        StudyConfig(top_k=11, min_active=11)
    with pytest.raises(StudyError, match="statistic"):
        StudyConfig(statistic="mode")
    with pytest.raises(StudyError, match="at least 21"):
        S.run_study(x[:20], views[:20], cfg)


def test_missing_channel_ids_are_channels_of_their_own(caplog):
    """One rule shared with predict.target: None/NaN/"" are missing; here each is a singleton."""
    rng = np.random.default_rng(13)
    y = rng.normal(0, 1, 300)
    named = np.repeat(np.arange(100).astype(str), 3).astype(object)
    missing = named.copy()
    missing[[0, 7, 50]] = [None, np.nan, ""]
    unique = named.copy()
    unique[[0, 7, 50]] = ["lone-a", "lone-b", "lone-c"]
    with caplog.at_level("WARNING", logger="thumbview.sae.covariates"):
        got = C.residualize(y, channels=missing)
    assert "3 videos have no channel id" in caplog.text
    np.testing.assert_allclose(got, C.residualize(y, channels=unique), atol=1e-12)
    with pytest.raises(StudyError, match="channels has 299"):
        C.residualize(y, channels=named[:-1])
