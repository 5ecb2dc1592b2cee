"""P(A beats B) on same-channel pairs: the calibrated difference model vs independent residuals,
and how often the `skilful` flag is raised for models with and without within-channel skill.

Simulates channels with large random offsets (shared by their videos) and a planted feature
effect, fits the predictor and its pairwise model on one set of channels, and scores both
P(beats) methods on pairs of videos from NEW channels. Prints a markdown table: Brier (coin
flip = 0.25) and the largest reliability gap over bins with at least 200 pairs.

With `--runs N` it instead repeats the fit N times per effect size (new data each run) and
counts the runs whose `skilful` flag is true: the old in-sample flag (Brier below 0.25 on the
pairs that fitted sigma) and the cross-fitted one with its margin (`pairwise.SKILL_RULE`).
Effect 0 is a model with no within-channel skill: a flag that it raises in more than 5% of
runs is not a test. `--ties` rounds the outcomes (log10 views) to a grid so that about 0%, 3%
and 20% of same-channel pairs tie, as views recorded to two significant digits or small
integer view counts do, and counts the no-skill runs flagged by the rule (the coin's Brier on
the same pairs) and by the constant 0.25 it replaced.

    python benchmarks/pairwise_calibration.py [--channels 300]
    python benchmarks/pairwise_calibration.py --runs 200 [--channels 300 --per 8]
    python benchmarks/pairwise_calibration.py --runs 200 --ties
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from thumbview.predict import pairwise as pw
from thumbview.predict.model import PredictorConfig, ViewPredictor

DIRECTION = np.array([1.0, -0.7, 0.5, 0, 0])  # the planted effect's direction over 5 features


def simulate(n_channels: int, per: int, beta: np.ndarray, noise: float, seed: int, step=0.0):
    """Channels with offsets, a planted effect; y rounded to a grid of `step` (ties) if > 0."""
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(n_channels), per)
    X = rng.normal(size=(len(idx), len(beta)))
    y = 3 + rng.normal(0, 1.0, n_channels)[idx] + X @ beta + rng.normal(0, noise, len(idx))
    y = np.round(y / step) * step if step else y
    return {"f": X}, y, idx.astype(str).astype(object)


def worst_gap(p, won) -> float:
    bins = [b for b in pw.reliability_table(p, won) if b.n >= 200]
    return max((abs(b.mean_p - b.observed) for b in bins), default=float("nan"))


def run(n_channels: int) -> None:
    print("| effect size | method | Brier | worst reliability gap |\n|---|---|---|---|")
    for scale in (0.0, 0.1, 0.3):
        beta = scale * DIRECTION
        blocks, y, ch = simulate(n_channels, 8, beta, 0.2, seed=0)
        config = PredictorConfig(encoders=("f",))
        model = ViewPredictor(config).fit(blocks, y, ch)
        pairwise = pw.PairwiseModel().fit(config, blocks, y, ch)
        new_blocks, y_new, ch_new = simulate(n_channels, 8, beta, 0.2, seed=1)
        pred = model.predict(new_blocks)
        i, j = pw.same_group_pairs(ch_new)
        won = pw.outcome(y_new[i], y_new[j])
        p_new = pw.p_beats(pred[i] - pred[j], pairwise.calibration_.sigma)
        pooled = np.std(y - model.oof_predictions_) * np.sqrt(2)  # independent residual draws
        p_old = pw.p_beats(pred[i] - pred[j], pooled)
        for name, p in (("difference model (new)", p_new), ("independent residuals (old)", p_old)):
            print(f"| {scale} | {name} | {pw.brier(p, won):.4f} | {worst_gap(p, won):.3f} |")


def skill_runs(n_channels: int, per: int, runs: int, scale: float) -> dict[str, float]:
    """`runs` fresh fits at one effect size: how often each flag is raised, mean Briers."""
    old = new = 0
    crossfit, fresh = [], []
    for r in range(runs):
        blocks, y, ch = simulate(n_channels, per, scale * DIRECTION, 0.2, seed=2 * r)
        config = PredictorConfig(encoders=("f",), seed=r)
        model = ViewPredictor(config).fit(blocks, y, ch)
        cal = pw.PairwiseModel().fit(config, blocks, y, ch).calibration_
        old += cal.brier < pw.BRIER_COIN
        new += bool(cal.skilful)
        crossfit.append(cal.heldout_brier)
        new_blocks, y_new, ch_new = simulate(n_channels, per, scale * DIRECTION, 0.2, 2 * r + 1)
        fresh.append(pw.score_pairs(model.predict(new_blocks), y_new, ch_new, cal.sigma).brier)
    return {"old": old / runs, "new": new / runs, "crossfit": np.mean(crossfit),
            "fresh": np.mean(fresh)}  # fmt: skip


def run_skill(n_channels: int, per: int, runs: int) -> None:
    print(f"{runs} runs per row, {n_channels} channels x {per} videos, noise sd 0.2 (log10)\n")
    print("| effect size | Brier on new channels (mean) | cross-fitted Brier (mean) | "
          "old flag true | cross-fitted flag true | s per run |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for scale in (0.0, 0.03, 0.05, 0.1):
        start = time.perf_counter()
        got = skill_runs(n_channels, per, runs, scale)
        took = (time.perf_counter() - start) / runs
        print(f"| {scale} | {got['fresh']:.4f} | {got['crossfit']:.4f} | {got['old']:.1%} | "
              f"{got['new']:.1%} | {took:.2f} |")  # fmt: skip


TIE_STEPS = {"0%": 0.0, "3%": 0.021, "20%": 0.145}  # grid steps giving about these ties


def tie_runs(n_channels: int, per: int, runs: int, step: float) -> dict[str, float]:
    """`runs` no-skill fits with outcomes on a grid: the tie share among same-channel pairs,
    the runs flagged skilful by the rule and by the constant 0.25 it replaced."""
    flagged = constant = 0
    ties = []
    for r in range(runs):
        blocks, y, ch = simulate(n_channels, per, 0 * DIRECTION, 0.2, seed=2 * r, step=step)
        config = PredictorConfig(encoders=("f",), seed=r)
        cal = pw.PairwiseModel().fit(config, blocks, y, ch).calibration_
        i, j = pw.same_group_pairs(ch)
        ties.append(np.mean(y[i] == y[j]))
        flagged += bool(cal.skilful)
        constant += pw.BRIER_COIN - cal.heldout_brier > pw.SKILL_Z * cal.heldout_brier_se
    return {"ties": np.mean(ties), "new": flagged / runs, "old": constant / runs}


def run_ties(n_channels: int, per: int, runs: int) -> None:
    print(f"{runs} no-skill runs per row, {n_channels} channels x {per} videos\n")
    print("| ties wanted | same-channel pairs tied | skilful (coin's Brier on the same pairs) "
          "| skilful (coin = 0.25, before) |\n|---|---:|---:|---:|")  # fmt: skip
    for name, step in TIE_STEPS.items():
        got = tie_runs(n_channels, per, runs, step)
        print(f"| {name} | {got['ties']:.1%} | {got['new']:.1%} | {got['old']:.1%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--per", type=int, default=8, help="videos per channel (--runs only)")
    parser.add_argument("--runs", type=int, default=0, help="simulate the skilful flag")
    parser.add_argument("--ties", action="store_true", help="no-skill runs with tied outcomes")
    args = parser.parse_args()
    if args.runs and args.ties:
        run_ties(args.channels, args.per, args.runs)
    elif args.runs:
        run_skill(args.channels, args.per, args.runs)
    else:
        run(args.channels)
