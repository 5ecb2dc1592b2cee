"""Benchmark of the SAE feature study statistics (thumbview.sae.study); prints a markdown table.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/sae_stats.py                      # full size: 524,288 x 65,536
    .venv/bin/python benchmarks/sae_stats.py --rows 65536 --latents 8192

(1) 1,000,000 null medians of 100 random distinct videos: vectorised `random_group_stats`
    against a plain Python loop (one rng.choice without replacement and one np.median per
    group), timed on `--loop-n` groups and extrapolated.
(2) The full `run_study` on synthetic SAE codes: scipy.sparse CSR float32, exactly k active
    latents per row drawn from a skewed (log-normal) latent frequency, as TopK SAEs produce.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.sparse as sp

from thumbview.sae.nulltests import random_group_stats
from thumbview.sae.study import StudyConfig, run_study


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def synthetic_codes(rows: int, latents: int, k: int, seed: int) -> sp.csr_matrix:
    """CSR (rows, latents) float32 with exactly k distinct active latents per row."""
    rng = np.random.default_rng(seed)
    freq = rng.lognormal(0.0, 1.0, latents)
    cdf = np.cumsum(freq / freq.sum())
    cdf[-1] = 1.0
    indices = np.empty((rows, k), np.int32)
    step = 1 << 16
    for s in range(0, rows, step):
        cols = np.searchsorted(cdf, rng.random((min(step, rows - s), k)))  # (c, k)
        for _ in range(100):  # redraw duplicates within a row until none are left
            cols.sort(axis=1)
            dup = np.zeros(cols.shape, bool)
            dup[:, 1:] = cols[:, 1:] == cols[:, :-1]
            if not dup.any():
                break
            cols[dup] = np.searchsorted(cdf, rng.random(int(dup.sum())))
        indices[s : s + len(cols)] = cols
    data = (rng.exponential(1.0, rows * k) + 0.01).astype(np.float32)
    indptr = np.arange(0, rows * k + 1, k, dtype=np.int64)
    return sp.csr_matrix((data, indices.ravel(), indptr), shape=(rows, latents))


def bench_null(n_null: int, loop_n: int, seed: int) -> list[tuple[str, str]]:
    views = np.random.default_rng(seed).lognormal(8.0, 2.0, 500_000)
    t0 = time.perf_counter()
    random_group_stats(views, 100, n_null, np.random.default_rng(seed), "median")
    t_vec = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(loop_n):  # distinct videos, as random_group_stats draws them
        np.median(views[rng.choice(len(views), 100, replace=False)])
    t_loop = (time.perf_counter() - t0) * n_null / loop_n
    return [
        (f"null: {n_null:,} medians of 100, vectorised", f"{t_vec:.2f} s"),
        (
            f"null: plain Python loop (timed on {loop_n:,}, extrapolated x{n_null / loop_n:g})",
            f"{t_loop:.1f} s",
        ),
        ("null: speed-up (loop / vectorised)", f"{t_loop / t_vec:.0f}x"),
    ]


def bench_study(rows: int, latents: int, k: int, seed: int) -> list[tuple[str, str]]:
    t0 = time.perf_counter()
    x = synthetic_codes(rows, latents, k, seed)
    views = np.random.default_rng(seed + 1).lognormal(8.0, 2.0, rows)
    t_gen = time.perf_counter() - t0
    rss_gen = peak_rss_gib()
    t0 = time.perf_counter()
    res = run_study(x, views, StudyConfig(seed=seed))
    t_study = time.perf_counter() - t0
    s = res.summary()
    return [
        ("study: input", f"{rows:,} x {latents:,} CSR float32, k={k}, nnz={x.nnz:,}"),
        ("study: generate synthetic codes", f"{t_gen:.1f} s (peak RSS {rss_gen:.2f} GiB)"),
        ("study: run_study wall time (default config)", f"{t_study:.1f} s"),
        ("study: peak RSS of the process", f"{peak_rss_gib():.2f} GiB"),
        ("study: qualifying latents", f"{s['n_qualifying']:,} of {latents:,}"),
        (
            "study: KS statistic / view-shuffle p (noise codes)",
            f"{s['ks_statistic']:.4f} / {s['ks_pvalue']:.3g}",
        ),
        (
            "study: max z / view-shuffle p (noise codes)",
            f"{s['max_z_statistic']:.2f} / {s['max_z_pvalue']:.3g}",
        ),
        (
            "study: features with q < 0.05 (noise codes) / their clusters",
            f"{s['n_q_below_0.05']} / {s['n_clusters_q_below_0.05']}",
        ),
        (
            "study: HHM p / LHM p / combined p",
            f"{s['heldout']['p_hhm']:.3g} / {s['heldout']['p_lhm']:.3g} / "
            f"{s['heldout']['p_combined']:.3g}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=524_288)
    parser.add_argument("--latents", type=int, default=65_536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n-null", type=int, default=1_000_000)
    parser.add_argument("--loop-n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    rows = bench_null(args.n_null, args.loop_n, args.seed)
    if not args.skip_study:
        rows += bench_study(args.rows, args.latents, args.k, args.seed)
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
