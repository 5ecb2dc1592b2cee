"""Calibration of the SAE study's tests and intervals by simulation; prints markdown tables.

Run by hand (not part of the tests; the tests run small versions of the same checks):

    .venv/bin/python benchmarks/sae_calibration.py             # --runs 200
    .venv/bin/python benchmarks/sae_calibration.py --runs 50   # quicker

Each table puts the study's method beside the pre-fix one on the same simulated data with
known truth (views independent of every latent, or a planted channel confound):

1. Omnibus test with overlapping latents: view-shuffle KS vs scipy's two-sample KS p-value.
2. Held-out test with shared top-1s: deduplicated view-shuffle test vs the old test
   (repeated videos counted, null of independent random videos).
3. Coverage of the intervals of null latents that made the top/bottom table: split
   (select on one half, estimate on the other) vs a bootstrap of the selected rows.
4. Channel control on channel-confounded latents: singleton-heavy vs many-video channels,
   with the identifiability the study now reports.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats as sps

from thumbview.sae import nulltests as N
from thumbview.sae.covariates import adjust_views_fit
from thumbview.sae.study import StudyConfig, run_study

ALPHA = 0.05


def overlapping(rng: np.random.Generator, n: int, n_lat: int) -> np.ndarray:
    """Latents driven by 2 shared factors: top videos overlap heavily."""
    return rng.exponential(1.0, (n, 2)) @ rng.random((2, n_lat)) + 0.05 * rng.random((n, n_lat))


def hubs(rng: np.random.Generator, n: int, n_lat: int, n_hubs: int = 4) -> np.ndarray:
    """Independent latents whose top-1s are a few hub videos."""
    x = rng.exponential(1.0, (n, n_lat))
    x[:n_hubs] = 50.0 + rng.random((n_hubs, n_lat))
    return x


def rate(p: list[float]) -> str:
    r = float(np.mean(np.asarray(p) < ALPHA))
    se = np.sqrt(r * (1 - r) / len(p))
    return f"{r:.3f} ± {se:.3f}"


def bench_ks(runs: int) -> list[tuple[str, str, str]]:
    new, old = [], []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        x, v = overlapping(rng, 600, 60), rng.lognormal(8.0, 1.0, 600)
        cfg = StudyConfig(top_k=51, min_active=50, n_perm=1000, n_shuffles=199, n_boot=0,
                          n_extreme=5, heldout_group=5, seed=seed)  # fmt: skip
        res = run_study(x, v, cfg)
        new.append(res.ks_pvalue)
        old.append(sps.ks_2samp(res.features["group_median_views"], res.random_stats).pvalue)
    return [
        ("KS, overlapping latents (600 videos, 60 latents, groups of 50)", rate(old), rate(new))
    ]


def bench_heldout(runs: int) -> list[tuple[str, str, str]]:
    new_hi, new_lo, old_hi, old_lo = [], [], [], []
    for seed in range(runs):
        rng = np.random.default_rng(10_000 + seed)
        x, v = hubs(rng, 400, 60), rng.lognormal(8.0, 1.0, 400)
        cfg = StudyConfig(top_k=31, min_active=30, n_perm=500, n_shuffles=199, n_boot=0,
                          n_extreme=5, heldout_group=20, seed=seed)  # fmt: skip
        res = run_study(x, v, cfg)
        new_hi.append(res.p_hhm)
        new_lo.append(res.p_lhm)
        held = res.features["heldout_views"].to_numpy()
        null = N.random_group_stats(v, 20, 20_000, rng)
        old_hi.append(N.permutation_pvalues([np.median(held[:20])], null, "greater")[0])
        old_lo.append(N.permutation_pvalues([np.median(held[-20:])], null, "less")[0])
    name = "held-out, 4 hub videos are every latent's top-1 (400 videos, 20 features/side)"
    return [(f"{name}: high side", rate(old_hi), rate(new_hi)),
            (f"{name}: low side", rate(old_lo), rate(new_lo))]  # fmt: skip


def bench_coverage(runs: int) -> list[tuple[str, str, str]]:
    truth = np.exp(8.0)
    new, old = [], []
    for seed in range(runs):
        rng = np.random.default_rng(20_000 + seed)
        x, v = rng.exponential(1.0, (3000, 100)), rng.lognormal(8.0, 1.0, 3000)
        cfg = StudyConfig(top_k=101, min_active=100, n_perm=500, n_shuffles=9, n_boot=500,
                          n_extreme=5, heldout_group=5, seed=seed)  # fmt: skip
        res = run_study(x, v, cfg)
        t = res.table()
        new += list((t["ci_low"] <= truth) & (truth <= t["ci_high"]))
        f = res.features
        picked = np.r_[np.arange(5), np.arange(len(f) - 5, len(f))]
        cols = f["latent_feature_index"].to_numpy()[picked]
        order = np.argsort(-x[:, cols], axis=0, kind="stable")[1:101].T  # (10, 100)
        lo, hi = N.bootstrap_ci(v[order], 500, 0.95, rng)
        old += list((lo <= truth) & (truth <= hi))
    return [("95% CI coverage of null latents in the top/bottom-5 table",
             f"{np.mean(old):.3f}", f"{np.mean(new):.3f}")]  # fmt: skip


def bench_channel(runs: int) -> list[tuple[str, ...]]:
    rows = []
    designs = {
        "singleton-heavy (1,500 alone + 150 x 10)": np.r_[np.ones(1500, int), np.full(150, 10)],
        "many-video (100 x 30)": np.full(100, 30),
    }
    for name, sizes in designs.items():
        survived, removed, weak = [], [], []
        for seed in range(max(1, runs // 20)):
            rng = np.random.default_rng(30_000 + seed)
            codes = np.repeat(np.arange(len(sizes)), sizes)
            effect = rng.normal(0, 0.5, len(sizes))  # log10 channel effect
            logv = 4 + effect[codes] + rng.normal(0, 0.3, len(codes))
            views = 10**logv
            x = rng.exponential(1.0, (len(codes), 100)) * (rng.random((len(codes), 100)) < 0.3)
            top = effect[codes] > np.quantile(effect[codes], 0.9)  # high-view channels' videos
            for j in range(20):  # 20 latents that only mark high-view channels
                x[:, j] = np.where(top, 3 + rng.random(len(codes)), 0.0)
            adjusted, fit = adjust_views_fit(views, channels=codes.astype(str))
            cfg = StudyConfig(top_k=61, min_active=60, n_perm=2000, n_shuffles=9, n_boot=0,
                              n_extreme=5, heldout_group=5, seed=seed)  # fmt: skip
            f = run_study(x, adjusted, cfg).features
            survived.append(int((f.loc[f["latent_feature_index"] < 20, "q"] < ALPHA).sum()))
            removed.append(fit.identifiability.removed_share)
            weak.append(fit.identifiability.weak)
        rows.append((name, f"{np.mean(survived):.1f} of 20", f"{np.mean(removed):.2f}",
                     str(all(weak))))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"Rejection rate at alpha = {ALPHA} under the null ({args.runs} runs; ± 1 SE)\n")
    print("| simulation | pre-fix test | study's test now |\n|---|---:|---:|")
    for row in bench_ks(args.runs) + bench_heldout(args.runs):
        print("| " + " | ".join(row) + " |")
    print(f"\nCoverage ({max(1, args.runs // 4)} runs x 10 table rows)\n")
    print("| simulation | bootstrap of selected rows | split interval |\n|---|---:|---:|")
    for row in bench_coverage(max(1, args.runs // 4)):
        print("| " + " | ".join(row) + " |")
    print(f"\nChannel control, 20 confounded latents ({max(1, args.runs // 20)} runs)\n")
    print("| channels | confounded latents with q < 0.05 after control | channel effect "
          "removed (mean share) | flagged weak |\n|---|---:|---:|---|")  # fmt: skip
    for row in bench_channel(args.runs):
        print("| " + " | ".join(row) + " |")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
