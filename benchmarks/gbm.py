"""The `gbm` head (scikit-learn's HistGradientBoostingRegressor) against LightGBM, same folds.

Issue 15 asked for LightGBM "only if it measurably wins". Both get the same narrow blocks
(those `--head gbm` uses), the same channel-disjoint folds as `thumbview cv`, the same
channel-grouped early-stopping split, the same tree settings and one thread each; the table
gives Spearman per head and the paired per-fold difference.

    pip install lightgbm   # not a thumbview dependency
    THUMBVIEW_CACHE_DIR=... python benchmarks/gbm.py ../shared/data/yt-virality \\
        --encoders context,title-desc,visual
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from thumbview.data.dataset import load_dataset
from thumbview.predict.heads import GBMHead
from thumbview.predict.metrics import compute_metrics, group_kfold, group_train_test_split
from thumbview.predict.model import PredictorConfig
from thumbview.predict.target import make_target
from thumbview.predict.workflow import build_encoders, dataset_blocks, dataset_split


def lightgbm_predict(X_train, y_train, groups, X_test, like: GBMHead) -> np.ndarray:
    """LightGBM with GBMHead's settings: trees chosen on the grouped split, then refit."""
    import lightgbm as lgb

    p = like.params
    opts = dict(
        learning_rate=p["learning_rate"], num_leaves=p["max_leaf_nodes"],
        min_child_samples=p["min_samples_leaf"], reg_lambda=p["l2_regularization"],
        max_bin=255, n_jobs=1, random_state=p["seed"], verbose=-1,
    )  # fmt: skip
    fit, val = group_train_test_split(groups, p["val_frac"], p["seed"], n=len(y_train))
    probe = lgb.LGBMRegressor(n_estimators=p["max_iter"], **opts)
    probe.fit(X_train[fit], y_train[fit], eval_set=[(X_train[val], y_train[val])],
              callbacks=[lgb.early_stopping(30, verbose=False)])  # fmt: skip
    final = lgb.LGBMRegressor(n_estimators=max(probe.best_iteration_, 1), **opts)
    return final.fit(X_train, y_train).predict(X_test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--encoders", default="context,title-desc,visual")
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()
    names = tuple(args.encoders.split(","))
    dataset = load_dataset(args.data)
    config = PredictorConfig(encoders=names, cv_folds=args.k)
    y, mask = make_target(dataset.views, config.target, dataset.channels)
    rows = np.flatnonzero(mask)
    plan = dataset_split(dataset, rows, config, 0.0)
    blocks = dataset_blocks(dataset, build_encoders(names))
    X = np.concatenate([np.asarray(blocks[n][rows], np.float64) for n in names], axis=1)
    y, groups = y[rows], np.asarray(plan.fold_groups, dtype=object)
    scores: dict[str, list[float]] = {"sklearn (gbm head)": [], "lightgbm": []}
    seconds = dict.fromkeys(scores, 0.0)
    for train, test in group_kfold(groups, args.k, config.seed, n=len(y)):
        for name in scores:
            t0 = time.perf_counter()
            if name == "lightgbm":
                pred = lightgbm_predict(X[train], y[train], groups[train], X[test], GBMHead())
            else:
                pred = GBMHead().fit(X[train], y[train], groups[train]).predict(X[test])
            seconds[name] += time.perf_counter() - t0
            scores[name].append(compute_metrics(y[test], pred).spearman)
    _report(names, X.shape, scores, seconds)


def _report(names, shape, scores, seconds) -> None:
    print(f"{'+'.join(names)}: {shape[0]} rows x {shape[1]} columns, channel-disjoint folds\n")
    print("| trees | Spearman mean ± sd | per fold | fit + predict s |\n|---|---|---|---:|")
    for name, s in scores.items():
        folds = " ".join(f"{v:.3f}" for v in s)
        print(f"| {name} | {np.mean(s):.3f} ± {np.std(s):.3f} | {folds} | {seconds[name]:.1f} |")
    diff = np.subtract(scores["lightgbm"], scores["sklearn (gbm head)"])
    print(f"\nlightgbm - sklearn, paired over folds: {diff.mean():+.3f} ± {diff.std():.3f}")


if __name__ == "__main__":
    main()
