"""P(A beats B) on same-channel pairs: the calibrated difference model vs independent residuals.

Simulates channels with large random offsets (shared by their videos) and a planted feature
effect, fits the predictor and its pairwise model on one set of channels, and scores both
P(beats) methods on pairs of videos from NEW channels. Prints a markdown table: Brier (coin
flip = 0.25) and the largest reliability gap over bins with at least 200 pairs.

    python benchmarks/pairwise_calibration.py [--channels 300]
"""

from __future__ import annotations

import argparse

import numpy as np

from thumbview.predict import pairwise as pw
from thumbview.predict.model import PredictorConfig, ViewPredictor


def simulate(n_channels: int, per: int, beta: np.ndarray, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(n_channels), per)
    X = rng.normal(size=(len(idx), len(beta)))
    y = 3 + rng.normal(0, 1.0, n_channels)[idx] + X @ beta + rng.normal(0, noise, len(idx))
    return {"f": X}, y, idx.astype(str).astype(object)


def worst_gap(p, won) -> float:
    bins = [b for b in pw.reliability_table(p, won) if b.n >= 200]
    return max((abs(b.mean_p - b.observed) for b in bins), default=float("nan"))


def run(n_channels: int) -> None:
    print("| effect size | method | Brier | worst reliability gap |\n|---|---|---|---|")
    for scale in (0.0, 0.1, 0.3):
        beta = scale * np.array([1.0, -0.7, 0.5, 0, 0])
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=300)
    run(parser.parse_args().channels)
