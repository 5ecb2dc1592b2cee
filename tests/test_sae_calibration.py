"""Simulation checks with known truth of the study's tests and intervals (issues 11 and 22).

Each check also computes what the study did before (scipy's KS p-value, a held-out null of
independent videos, a bootstrap of the rows picked as extremes, either held-out tail read on
its own, random groups drawn with replacement, the KS test alone) on the same simulations
and asserts that it fails there, so these tests can tell the two apart. Full-size versions:
benchmarks/sae_calibration.py, recorded in docs/SAE.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from thumbview.sae import covariates as C
from thumbview.sae import nulltests as N
from thumbview.sae.study import StudyConfig, run_study

ALPHA = 0.05
# Rejection rate allowed under the null: nominal plus ~2.5 binomial SEs of R runs.
RUNS = 60
MAX_RATE = ALPHA + 2.5 * np.sqrt(ALPHA * (1 - ALPHA) / RUNS)  # 0.12


def overlapping_latents(rng: np.random.Generator, n: int, n_lat: int) -> np.ndarray:
    """Latents driven by 2 shared factors: their top videos overlap heavily, as in real SAEs."""
    factors = rng.exponential(1.0, (n, 2))  # (N, 2)
    loadings = rng.random((2, n_lat))  # (2, L)
    return factors @ loadings + 0.05 * rng.random((n, n_lat))  # (N, L) > 0


def hub_latents(rng: np.random.Generator, n: int, n_lat: int, hubs: int = 4) -> np.ndarray:
    """Independent latents, except that a few hub videos are the top-1 of every latent."""
    x = rng.exponential(1.0, (n, n_lat))
    x[:hubs] = 50.0 + rng.random((hubs, n_lat))
    return x


def test_omnibus_and_heldout_tests_hold_their_level_with_overlapping_latents_60_runs():
    """60 null runs (views independent of latents whose top videos overlap heavily): the KS,
    max-z and combined held-out p-values reject at most at the nominal rate, scipy's KS
    p-value does not, and false discoveries come in clumps that clusters count as few."""
    p_ks, p_max_z, p_combined, p_scipy, clumps = [], [], [], [], []
    cfg = dict(top_k=31, min_active=30, n_perm=200, n_shuffles=99, n_boot=0, heldout_group=5)
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        x = overlapping_latents(rng, 300, 30)
        views = rng.lognormal(8.0, 1.0, 300)  # independent of the latents: the null
        res = run_study(x, views, StudyConfig(**cfg, n_extreme=5, seed=seed))
        p_ks.append(res.ks_pvalue)
        p_max_z.append(res.max_z.pvalue)
        p_combined.append(res.heldout.p_combined)
        feat = res.features["group_median_views"].to_numpy()
        p_scipy.append(sps.ks_2samp(feat, res.random_stats).pvalue)
        if (n_found := int((res.features["q"] < ALPHA).sum())) > 0:
            clumps.append((n_found, res.n_discovery_clusters))
    for p in (p_ks, p_max_z, p_combined):
        assert np.mean(np.array(p) < ALPHA) <= MAX_RATE
    assert np.mean(np.array(p_scipy) < ALPHA) > 0.5  # the old p-value: invalid here
    assert len(clumps) <= 0.05 * RUNS + 1  # BH: few runs with any false discovery ...
    n_found, n_clusters = np.sum(clumps, axis=0) if clumps else (0, 0)
    assert n_found >= 5 * n_clusters  # ... but many features each, in few shared-video clusters


def test_max_z_finds_a_few_strong_features_the_ks_test_misses_30_runs():
    """30 runs with 3 latents among 150 whose 41 top videos get x3 views (known truth): the
    max-z test rejects in nearly every run, the KS test seldom (3 shifted medians of 150
    move the ECDF by 0.02)."""
    p_ks, p_max_z, found = [], [], []
    for seed in range(30):
        rng = np.random.default_rng(400 + seed)
        x, views = sparse_strong(rng, 1500, 150, n_planted=3, multiplier=3.0, top_k=41)
        cfg = StudyConfig(
            top_k=41, min_active=40, n_perm=2000, n_shuffles=99, n_boot=0, n_extreme=5,
            heldout_group=5, seed=seed,
        )  # fmt: skip
        res = run_study(x, views, cfg)
        p_ks.append(res.ks_pvalue)
        p_max_z.append(res.max_z.pvalue)
        found.append(res.max_z.latent < 3)  # the most extreme feature is a planted one
    assert np.mean(np.array(p_max_z) < ALPHA) >= 0.9
    assert np.mean(found) >= 0.9
    assert np.mean(np.array(p_ks) < ALPHA) <= 0.3


def sparse_strong(
    rng: np.random.Generator, n: int, n_lat: int, n_planted: int, multiplier: float, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse null latents plus `n_planted` latents (0, 1, ...) whose top_k strongest videos
    get `multiplier` x views: the planted groups' medians are `multiplier` x the others'."""
    x = rng.exponential(1.0, (n, n_lat)) * (rng.random((n, n_lat)) < 0.3)  # (N, L)
    views = rng.lognormal(8.0, 1.0, n)
    for j in range(n_planted):
        rows = rng.choice(n, top_k, replace=False)
        x[rows, j] = 10.0 + rng.random(top_k)
        views[rows] *= multiplier
    return x, views


def old_heldout_p(held: np.ndarray, views: np.ndarray, rng: np.random.Generator) -> float:
    """The pre-fix low-side test: repeated videos counted, null of independent videos."""
    null = N.random_group_stats(views, len(held), 2000, rng)
    return float(N.permutation_pvalues([np.median(held)], null, "less")[0])


def test_heldout_test_holds_its_level_with_shared_top1s_60_runs():
    """60 null runs where 4 hub videos are every latent's top-1: each tail and the combined
    p-value hold their level, the old low-side test does not, and the study warns that the
    test rests on a handful of videos."""
    new_hi, new_lo, old_lo, combined = [], [], [], []
    for seed in range(RUNS):
        rng = np.random.default_rng(100 + seed)
        x = hub_latents(rng, 300, 40)
        views = rng.lognormal(8.0, 1.0, 300)
        cfg = StudyConfig(
            top_k=31, min_active=30, n_perm=200, n_shuffles=99, n_boot=0, heldout_group=15,
            n_extreme=5, seed=seed,
        )  # fmt: skip
        res = run_study(x, views, cfg)
        assert res.heldout.n_videos_low <= 4  # 15 features, at most 4 distinct top-1s
        held = res.heldout
        assert held.few_videos and f"{held.n_videos_low} (low) distinct videos" in res.warnings()[0]
        assert min(held.p_hhm, held.p_lhm) <= held.p_combined <= 2 * min(held.p_hhm, held.p_lhm)
        new_hi.append(res.p_hhm)
        new_lo.append(res.p_lhm)
        combined.append(held.p_combined)
        old_lo.append(old_heldout_p(res.features["heldout_views"].to_numpy()[-15:], views, rng))
    assert np.mean(np.array(new_hi) < ALPHA) <= MAX_RATE
    assert np.mean(np.array(new_lo) < ALPHA) <= MAX_RATE
    assert np.mean(np.array(combined) < ALPHA) <= MAX_RATE
    assert np.mean(np.array(old_lo) < ALPHA) > MAX_RATE  # counting repeats: invalid


def test_per_feature_pvalues_are_exact_when_groups_are_half_the_videos_100_runs():
    """100 null runs, groups of 100 of 200 videos (10 latents each): p < 0.05 for 5% of
    features against random groups of distinct videos; against groups drawn with
    replacement (wider by sqrt(199 / 100)) almost never, a conservative test."""
    new, old = [], []
    for seed in range(100):
        rng = np.random.default_rng(500 + seed)
        x, views = rng.exponential(1.0, (200, 10)), rng.lognormal(8.0, 1.0, 200)
        cfg = StudyConfig(
            top_k=101, min_active=100, n_perm=2000, n_shuffles=1, n_boot=0, n_extreme=1,
            heldout_group=1, seed=seed,
        )  # fmt: skip
        f = run_study(x, views, cfg).features
        new += list(f["p"] < ALPHA)
        with_replacement = np.median(views[N._draw_rows(rng, 200, (2000, 100))], axis=1)
        old += list(N.permutation_pvalues(f["group_median_views"], with_replacement) < ALPHA)
    assert 0.03 <= np.mean(new) <= 0.08
    assert np.mean(old) < 0.02


def test_split_intervals_cover_selected_null_features():
    """Null latents that land in the top/bottom table: their CI should hold the true median."""
    true_median = np.exp(8.0)  # views ~ lognormal(8, 1), independent of every latent
    new_hits, old_hits = [], []
    for seed in range(30):
        rng = np.random.default_rng(200 + seed)
        x = rng.exponential(1.0, (1500, 60))
        views = rng.lognormal(8.0, 1.0, 1500)
        cfg = StudyConfig(
            top_k=81, min_active=80, n_perm=200, n_shuffles=9, n_boot=300, n_extreme=4,
            heldout_group=4, seed=seed,
        )  # fmt: skip
        res = run_study(x, views, cfg)
        table = res.table()
        new_hits += list((table["ci_low"] <= true_median) & (true_median <= table["ci_high"]))
        old_hits += list(_old_cis_cover(res, x, views, true_median, rng))
    assert np.mean(new_hits) >= 0.9  # nominal 0.95; measured in benchmarks/sae_calibration.py
    assert np.mean(old_hits) < 0.75  # the plain bootstrap of the selected extremes


def _old_cis_cover(res, x, views, truth, rng) -> np.ndarray:
    """Pre-fix intervals: rows picked on the full group, bootstrap over that same group."""
    f = res.features  # ranked by the full-group median
    k = res.config.n_extreme
    picked = np.r_[np.arange(k), np.arange(len(f) - k, len(f))]
    order = np.argsort(-x[:, f["latent_feature_index"].to_numpy()[picked]], axis=0, kind="stable")
    groups = views[order[1 : res.config.top_k].T]  # (2k, g)
    lo, hi = N.bootstrap_ci(groups, 300, 0.95, rng)
    return (lo <= truth) & (truth <= hi)


@pytest.mark.parametrize(
    ("sizes", "weak"),
    [
        (np.r_[np.ones(240, int), np.full(20, 3)], True),  # 80% of videos alone in their channel
        (np.full(30, 10), False),  # every channel has 10 videos
    ],
)
def test_channel_identifiability_flags_singleton_heavy_designs(sizes, weak):
    rng = np.random.default_rng(300)
    codes = np.repeat(np.arange(len(sizes)), sizes)
    channel_effect = rng.normal(0, 0.5, len(sizes))[codes]
    own = rng.normal(0, 0.3, len(codes))  # the video's own effect (what the study looks for)
    y = channel_effect + own
    fit = C.fit_residuals(y, channels=codes.astype(str))
    ident = fit.identifiability
    assert ident.weak is weak and ("WEAK" in ident.message) is weak
    assert ident.n_videos == len(codes) and ident.effective_n == len(codes) - len(sizes)
    assert ident.share_multi_video == pytest.approx(np.mean(sizes[codes] >= 2))
    # What "weak" means: for a lone video the control removes as much of its own effect as of
    # its channel's (it cannot tell them apart); with 10 videos per channel it removes the
    # channel's and keeps the video's own.
    design = np.column_stack([channel_effect, own])
    (kept_channel, kept_own), *_ = np.linalg.lstsq(design, fit.residuals, rcond=None)
    if weak:
        alone = sizes[codes] == 1
        kept = np.linalg.lstsq(design[alone], fit.residuals[alone], rcond=None)[0]
        assert kept[0] == pytest.approx(kept[1], abs=0.05)
    else:
        assert kept_channel < 0.2 and kept_own > 0.85
