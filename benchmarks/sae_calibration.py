"""Calibration of the SAE study's tests and intervals by simulation; prints markdown tables.

Run by hand (not part of the tests; the tests run small versions of the same checks):

    .venv/bin/python benchmarks/sae_calibration.py             # --runs 200
    .venv/bin/python benchmarks/sae_calibration.py --runs 50   # quicker

Each table puts the study's method beside the pre-fix one on the same simulated data with
known truth (views independent of every latent, planted view multipliers, or a planted
channel confound):

1. Omnibus tests with overlapping latents: view-shuffle KS vs scipy's two-sample KS
   p-value, and the max-z test on the same runs.
2. Held-out test with shared top-1s: deduplicated view-shuffle test vs the old test
   (repeated videos counted, null of independent random videos), and the combined p-value
   vs reading either tail below 0.05.
3. Power: 10 planted latents among 1,200 (sparse, strong) or every latent a little off
   (dense, weak): KS vs max-z, and how many planted latents reach q < 0.05, by multiplier
   and group size.
4. Clumps: under the null with overlapping latents, false discoveries per run with any,
   counted as features and as shared-video clusters.
5. Per-feature p-values with groups of half the videos: random groups drawn with
   replacement (pre-fix) vs distinct videos.
6. Coverage of the intervals of null latents that made the top/bottom table: split
   (select on one half, estimate on the other) vs a bootstrap of the selected rows.
7. Channel control on channel-confounded latents: singleton-heavy vs many-video channels,
   with the identifiability the study now reports.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
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
    new, old, max_z, either, combined, distinct = [], [], [], [], [], []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        x, v = overlapping(rng, 600, 60), rng.lognormal(8.0, 1.0, 600)
        cfg = StudyConfig(top_k=51, min_active=50, n_perm=1000, n_shuffles=199, n_boot=0,
                          n_extreme=5, heldout_group=30, seed=seed)  # fmt: skip
        res = run_study(x, v, cfg)
        new.append(res.ks_pvalue)
        old.append(sps.ks_2samp(res.features["group_median_views"], res.random_stats).pvalue)
        max_z.append(res.max_z.pvalue)
        held = res.heldout
        either.append(min(held.p_hhm, held.p_lhm))
        combined.append(held.p_combined)
        distinct.append((held.n_videos_high + held.n_videos_low) / 2)
    name = "overlapping latents (600 videos, 60 latents, groups of 50)"
    held_name = (f"held-out, {name}, 30 features/side ({np.mean(distinct):.1f} distinct videos "
                 "a side on average): either tail (old reading) vs combined p")  # fmt: skip
    return [(f"KS, {name}", rate(old), rate(new)), (f"max-z, {name}", "-", rate(max_z)),
            (held_name, rate(either), rate(combined))]  # fmt: skip


def bench_heldout(runs: int) -> list[tuple[str, str, str]]:
    new_hi, new_lo, old_hi, old_lo, either, combined = [], [], [], [], [], []
    for seed in range(runs):
        rng = np.random.default_rng(10_000 + seed)
        x, v = hubs(rng, 400, 60), rng.lognormal(8.0, 1.0, 400)
        cfg = StudyConfig(top_k=31, min_active=30, n_perm=500, n_shuffles=199, n_boot=0,
                          n_extreme=5, heldout_group=20, seed=seed)  # fmt: skip
        res = run_study(x, v, cfg)
        new_hi.append(res.p_hhm)
        new_lo.append(res.p_lhm)
        either.append(min(res.p_hhm, res.p_lhm))
        combined.append(res.heldout.p_combined)
        held = res.features["heldout_views"].to_numpy()
        null = N.random_group_stats(v, 20, 20_000, rng)
        old_hi.append(N.permutation_pvalues([np.median(held[:20])], null, "greater")[0])
        old_lo.append(N.permutation_pvalues([np.median(held[-20:])], null, "less")[0])
    name = "held-out, 4 hub videos are every latent's top-1 (400 videos, 20 features/side)"
    return [(f"{name}: high side", rate(old_hi), rate(new_hi)),
            (f"{name}: low side", rate(old_lo), rate(new_lo)),
            (f"{name}: either tail (old reading) vs combined p", rate(either),
             rate(combined))]  # fmt: skip


def sparse_codes(rng: np.random.Generator, n: int, n_lat: int, k: int) -> sp.csr_matrix:
    """CSR (n, n_lat), k distinct active latents per row (an SAE TopK code)."""
    cols = N.draw_groups(rng, n_lat, n, k)  # (n, k)
    vals = rng.exponential(1.0, n * k) + 0.06
    return sp.csr_matrix((vals, (np.repeat(np.arange(n), k), cols.ravel())), shape=(n, n_lat))


class Design(NamedTuple):
    """A power simulation: 1,200 latents (k=32 a video), views log-normal with log-sd 1.2.

    mult: latents 0-9 each own `top_k` videos (their strongest) whose views get x mult
    (sparse, strong). beta: every video's activations are scaled by exp(r), r ~ N(0, 0.5^2),
    and its views by exp(beta r), so every latent's top videos get a little more views (dense,
    weak, one direction). tau: every latent multiplies the views of the videos it is active
    on by exp(e), e ~ N(0, tau^2) (dense, weak, both directions).
    """

    label: str
    n: int
    top_k: int
    mult: float = 1.0
    beta: float = 0.0
    tau: float = 0.0


def planted_study(rng: np.random.Generator, d: Design) -> tuple[sp.csr_matrix, np.ndarray]:
    x = sparse_codes(rng, d.n, 1200, 32).tocoo()
    scale = rng.normal(0.0, 0.5, d.n) if d.beta else np.zeros(d.n)  # (N,) log activation scale
    logv = rng.normal(8.0, 1.2, d.n) + d.beta * scale
    if d.tau > 0:
        active = sp.csr_matrix((np.ones(x.nnz), (x.row, x.col)), x.shape)
        logv += active @ rng.normal(0.0, d.tau, 1200)
    keep = x.col >= 10 if d.mult != 1 else np.ones(x.nnz, bool)
    rows, cols, vals = [x.row[keep]], [x.col[keep]], [x.data[keep] * np.exp(scale[x.row[keep]])]
    if d.mult != 1:
        own = N.draw_groups(rng, d.n, 1, 10 * d.top_k)[0]  # (10 top_k,) disjoint owners
        logv[own] += np.log(d.mult)
        rows.append(own)
        cols.append(np.repeat(np.arange(10), d.top_k))
        vals.append(10.0 + rng.random(10 * d.top_k))
    x = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(d.n, 1200))  # fmt: skip
    return x, np.exp(logv)


POWER_DESIGNS = [
    Design("sparse: 10 latents x3", 50_000, 100, mult=3.0),
    Design("sparse: 10 latents x2", 50_000, 100, mult=2.0),
    Design("sparse: 10 latents x1.5", 50_000, 100, mult=1.5),
    Design("sparse: 10 latents x1.5", 100_000, 400, mult=1.5),
    Design("sparse: 10 latents x1.25", 100_000, 400, mult=1.25),
    Design("dense: all latents a little up (beta 0.05)", 50_000, 100, beta=0.05),
    Design("dense: all latents a little up (beta 0.1)", 50_000, 100, beta=0.1),
    Design("dense: all latents up or down (tau 0.1)", 50_000, 100, tau=0.1),
]


def bench_power(runs: int) -> list[tuple[str, ...]]:
    rows = []
    for d in POWER_DESIGNS:
        ks, max_z, found, ratio = [], [], [], []
        n_runs = max(1, runs if d.top_k <= 100 else runs // 3)
        for seed in range(n_runs):
            x, v = planted_study(np.random.default_rng(40_000 + seed), d)
            cfg = StudyConfig(top_k=d.top_k, min_active=d.top_k - 1, n_perm=50_000,
                              n_shuffles=99, n_boot=0, n_extreme=10, heldout_group=30,
                              seed=seed)  # fmt: skip
            res = run_study(x, v, cfg)
            ks.append(res.ks_pvalue)
            max_z.append(res.max_z.pvalue)
            f = res.features
            planted = f[f["latent_feature_index"] < 10] if d.mult != 1 else f
            found.append(int((planted["q"] < ALPHA).sum()))
            ratio.append(float(planted["ratio"].median()))
        rows.append((d.label, f"{d.top_k - 1} ({d.n:,} videos)", str(n_runs),
                     f"x{np.mean(ratio):.3f}", rate(ks), rate(max_z),
                     f"{np.mean(found):.1f}" + (" of 10" if d.mult != 1 else "")))  # fmt: skip
    return rows


def bench_clumps(runs: int) -> list[tuple[str, ...]]:
    hits = []
    for seed in range(runs):
        rng = np.random.default_rng(50_000 + seed)
        x, v = overlapping(rng, 2000, 300), rng.lognormal(8.0, 1.0, 2000)
        cfg = StudyConfig(top_k=51, min_active=50, n_perm=20_000, n_shuffles=1, n_boot=0,
                          n_extreme=5, heldout_group=5, seed=seed)  # fmt: skip
        res = run_study(x, v, cfg)
        if (n_found := int((res.features["q"] < ALPHA).sum())) > 0:
            hits.append((n_found, res.n_discovery_clusters))
    per_run = np.mean(hits, axis=0) if hits else (0.0, 0.0)
    return [("2,000 videos, 300 overlapping latents, groups of 50", str(runs),
             f"{len(hits) / runs:.3f}", f"{per_run[0]:.1f}", f"{per_run[1]:.1f}")]  # fmt: skip


def bench_exact_null(runs: int) -> list[tuple[str, str, str]]:
    new, old = [], []
    for seed in range(runs):
        rng = np.random.default_rng(60_000 + seed)
        x, v = rng.exponential(1.0, (200, 10)), rng.lognormal(8.0, 1.0, 200)
        cfg = StudyConfig(top_k=101, min_active=100, n_perm=5000, n_shuffles=1, n_boot=0,
                          n_extreme=1, heldout_group=1, seed=seed)  # fmt: skip
        f = run_study(x, v, cfg).features
        new += list(f["p"] < ALPHA)
        with_replacement = np.median(v[N._draw_rows(rng, 200, (5000, 100))], axis=1)
        old += list(N.permutation_pvalues(f["group_median_views"], with_replacement) < ALPHA)
    return [("per-feature p, groups of 100 of 200 videos (10 latents a run)",
             f"{np.mean(old):.3f}", f"{np.mean(new):.3f}")]  # fmt: skip


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
    for row in bench_ks(args.runs) + bench_heldout(args.runs) + bench_exact_null(args.runs):
        print("| " + " | ".join(row) + " |", flush=True)
    power_runs = max(1, args.runs // 4)
    print(f"\nPower at alpha = {ALPHA}: 1,200 latents, log-sd 1.2 ({power_runs} runs; groups "
          f"of 399: {max(1, power_runs // 3)}; 99 view shuffles; ± 1 SE)\n")  # fmt: skip
    print("| planted | group size | runs | group median / all videos (planted; dense: all) "
          "| KS | max-z | latents with q < 0.05 (planted; dense: all) |\n"
          "|---|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for row in bench_power(power_runs):
        print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nFalse discoveries under the null come in clumps ({args.runs * 2} runs)\n")
    print("| simulation | runs | share of runs with any q < 0.05 | false features per such run "
          "| shared-video clusters per such run |\n|---|---:|---:|---:|---:|")  # fmt: skip
    for row in bench_clumps(args.runs * 2):
        print("| " + " | ".join(row) + " |", flush=True)
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
