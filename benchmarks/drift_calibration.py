"""The out-of-range check (`predict.drift`), calibrated by simulation with known truth.

Each run draws a training set, fits a ridge `ViewPredictor` (80% cross-validation residual
intervals), the novelty score (`TrainingRange.fit`, alpha 1%) and, for comparison, the
per-feature ranges of the check before it (issue 22: `drift.BlockRange.fit`, an evaluation
warning above 5% of rows). It then scores fresh rows from the same distribution and rows
with one planted shift, each case at outcome noise sd 1.0 and 0.5:

- one input: x1 ~ U(-1, 1) in training, U(-3, 3) when scored (truth tanh(2 x1) + noise),
  in a narrow named block beside an unshifted 384-d embedding;
- one column of a 384-d block of independent columns: the same shift in its first column;
- the 40th principal component of a 384-d block with a decaying spectrum (sd k^-1/2 along
  the k-th of fixed orthonormal directions): its score moves from U(-1, 1) to U(-3, 3)
  in units of its training range (truth tanh(2 score) + noise);
- a joint shift in a narrow block: x2 = x1 + N(0, 0.1^2) in training, -x1 + N(0, 0.1^2)
  when scored, every column inside its own range (truth tanh(2 x1) + noise);
- publication year: context built by the real `ContextEncoder`, uploads of 2012-2015 in
  training, of 2019-2020 when scored, at the same ages (the snapshot moves with them);
- embedding factor: one of 6 factors of a 384-d (and a 96-d) low-rank embedding moves
  from U(-1, 1) to U(-3, 3) (truth tanh(2 f) + noise).

`--false-alarms` instead fits on 300, 500 and 1,000 rows of 47 skewed narrow columns
(context, counts, lognormal, gamma, Pareto, beta, binary) plus a 384-d embedding, and scores
fresh rows only: the share of rows flagged (= single predictions that warn) and of
evaluations (batches of `--eval` rows with views) that warn, new check and old.

    python benchmarks/drift_calibration.py [--runs 20] [--n 1000]
    python benchmarks/drift_calibration.py --false-alarms [--runs 100]
    python benchmarks/drift_calibration.py --wide
    python benchmarks/drift_calibration.py --real ../shared/data/yt-virality
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from thumbview.embed.context import FEATURES as CONTEXT
from thumbview.embed.context import ContextEncoder, context_rows
from thumbview.predict import drift
from thumbview.predict.model import PredictorConfig, ViewPredictor

WIDE = 384
LOADINGS: dict[int, np.ndarray] = {}
ROOT3 = np.sqrt(3.0)


def embedding(rng, n: int, width: int, factors=None) -> np.ndarray:
    """(n, width): 6 factors with decaying scales on fixed loadings, plus unit noise."""
    if width not in LOADINGS:
        LOADINGS[width] = np.random.default_rng(width).normal(size=(6, width))
    f = rng.uniform(-1, 1, (n, 6)) if factors is None else factors
    scales = np.array([3.0, 2.0, 1.5, 1.2, 1.0, 0.8])[:, None]
    return f @ (scales * LOADINGS[width]) + rng.normal(0, 1.0, (n, width))


def spread(rng, n: int, shifted: bool) -> np.ndarray:
    """U(-1, 1), or U(-3, 3) when shifted: the planted move of every case."""
    return rng.uniform(-3, 3, n) if shifted else rng.uniform(-1, 1, n)


def one_input(rng, n: int, shifted: bool, noise: float):
    X = np.c_[spread(rng, n, shifted), rng.normal(size=(n, 5))]
    y = np.tanh(2 * X[:, 0]) + 0.3 * X[:, 1] - 0.2 * X[:, 2] + rng.normal(0, noise, n)
    return {"f": X, "title": embedding(rng, n, WIDE)}, y


def wide_column(rng, n: int, shifted: bool, noise: float):
    X = np.c_[spread(rng, n, shifted), rng.normal(size=(n, WIDE - 1))]
    return {"title": X}, np.tanh(2 * X[:, 0]) + rng.normal(0, noise, n)


SPECTRUM = 1 / np.sqrt(np.arange(1, WIDE + 1))  # sd along the k-th direction
AXES = np.linalg.qr(np.random.default_rng(40).normal(size=(WIDE, WIDE)))[0]  # (D, D)


def pc40(rng, n: int, shifted: bool, noise: float):
    f = rng.uniform(-ROOT3, ROOT3, (n, WIDE))  # unit-variance scores
    f[:, 39] = ROOT3 * spread(rng, n, shifted)
    X = (f * SPECTRUM) @ AXES.T
    return {"title": X}, np.tanh(2 * f[:, 39] / ROOT3) + rng.normal(0, noise, n)


def joint(rng, n: int, shifted: bool, noise: float):
    x1 = rng.uniform(-1, 1, n)
    x2 = (-x1 if shifted else x1) + rng.normal(0, 0.1, n)
    X = np.c_[x1, x2, rng.normal(size=(n, 4))]
    return {"f": X}, np.tanh(2 * x1) + 0.3 * X[:, 2] + rng.normal(0, noise, n)


def uploads(rng, n: int, shifted: bool, noise: float):
    first, last, snap = ("2019-01-01", "2020-12-31", "2021-06-01") if shifted else (
        "2012-01-01", "2015-12-31", "2016-06-01")  # fmt: skip
    days = rng.integers(0, (pd.Timestamp(last) - pd.Timestamp(first)).days, n)
    published = pd.Timestamp(first, tz="UTC") + pd.to_timedelta(days, "D")
    subs = 10 ** rng.normal(4, 0.7, n)
    table = pd.DataFrame(
        {"published_at": published.astype(str), "collected_at": snap, "subscribers": subs}
    )
    ctx = ContextEncoder().encode(context_rows(table)).astype(np.float64)
    title = embedding(rng, n, WIDE)
    y = 2.5 + 0.5 * ctx[:, 0] + 0.4 * (ctx[:, 6] - 4) + 0.05 * title[:, 0]
    return {"context": ctx, "title": title}, y + rng.normal(0, 0.4 * noise, n)


def factor(width: int):
    def draw(rng, n: int, shifted: bool, noise: float):
        f = rng.uniform(-1, 1, (n, 6))
        f[:, 1] = spread(rng, n, shifted)
        y = np.tanh(2 * f[:, 1]) + rng.normal(0, noise, n)
        return {"title": embedding(rng, n, width, f)}, y

    return draw


def mixed(rng, n: int, shifted: bool = False, noise: float = 1.0):
    """47 skewed narrow columns in three blocks (8 context, 12 counts, 27 descriptors) and a
    384-d embedding, like the default encoders; nothing shifts."""
    ctx = np.c_[
        np.log10(1 + rng.uniform(100, 3000, n)), rng.uniform(2012, 2016, n),
        rng.uniform(-1, 1, (n, 4)), rng.normal(4, 0.8, n), np.log10(rng.integers(1, 4, n)),
    ]  # fmt: skip
    counts = rng.poisson([3.0, 0.2, 0.05, 1.0, 0.5, 8.0, 0.1, 2.0, 0.3, 12.0, 0.02, 1.5],
                         (n, 12)).astype(float)  # fmt: skip
    skewed = np.c_[
        rng.lognormal(0, 0.7, (n, 4)), rng.lognormal(0, 1.2, (n, 3)), rng.gamma(0.5, 1, (n, 4)),
        rng.pareto(3.0, (n, 3)), rng.beta(2, 5, (n, 4)), rng.beta(0.5, 0.5, (n, 2)),
        rng.random((n, 3)) < 0.2, np.abs(rng.standard_t(3, (n, 4))),
    ]  # fmt: skip
    y = 3.5 + 0.3 * ctx[:, 0] + 0.2 * counts[:, 0] - 0.1 * skewed[:, 0] + rng.normal(0, noise, n)
    blocks = {"context": ctx, "title-desc": counts, "visual": skewed.astype(float)}
    return {**blocks, "title": embedding(rng, n, WIDE)}, y


# case: (draw, the shift must be named by (block, feature or None: any in the block))
CASES = {
    "one input, narrow block, U(-1,1) -> U(-3,3)": (one_input, ("f", "x1")),
    "one column of a 384-d block of independent columns": (wide_column, ("title", "dimension 1")),
    "40th principal component of a 384-d block": (pc40, ("title", None)),
    "joint: x2 = x1 in training, -x1 when scored": (joint, ("f", "x1 with x2")),
    "publication year 2012-2015 -> 2019-2020": (uploads, ("context", "publication year")),
    "embedding factor, 384-d": (factor(384), ("title", None)),
    "embedding factor, 96-d": (factor(96), ("title", None)),
}
NAMES = {"f": ["x1", "x2", "x3", "x4", "x5", "x6"], "context": list(CONTEXT)}


def old_check(y, blocks) -> drift.TrainingRange:
    """The check before this one (issue 22): per-feature ranges, 5% of rows to warn."""
    ranges = {k: drift.BlockRange.fit(v, NAMES.get(k)) for k, v in blocks.items()}
    return drift.TrainingRange("log10", tuple(np.quantile(y, drift.TARGET_LEVELS)), ranges)


def one_run(draw, planted, n: int, seed: int, noise: float) -> dict[str, dict[str, float]]:
    """Everything measured in one run, for the new check and the old."""
    rng = np.random.default_rng(seed)
    blocks, y = draw(rng, n, False, noise)
    model = ViewPredictor(PredictorConfig(encoders=tuple(blocks))).fit(blocks, y)
    fresh, y_fresh = draw(rng, n, False, noise)
    new, y_new = draw(rng, n, True, noise)
    lo, hi = model.predict_interval(new)
    covered = (y_new >= lo) & (y_new <= hi)
    oof = model.oof_predictions_
    checks = {"new": drift.TrainingRange.fit(y, blocks, names=NAMES, predicted=oof),
              "old": old_check(y, blocks)}  # fmt: skip
    p_new, p_fresh = model.predict(new), model.predict(fresh)
    out = {}
    for name, limits in checks.items():
        flags = limits.features_outside(new, p_new)
        report = limits.check(new, y_new, p_new)
        out[name] = {
            "fresh rows": limits.features_outside(fresh, p_fresh).mean(),
            "fresh evals": float(limits.check(fresh, y_fresh, p_fresh).features_warn),
            "warns": float(report.features_warn),
            "named": float(report.features_warn and _named(report, planted)),
            "flagged": flags.mean(),
            "coverage": covered.mean(),
            "unflagged": covered[~flags].mean() if (~flags).any() else np.nan,
            "outside": covered[flags].mean() if flags.any() else np.nan,
        }
    return out


def _named(report: drift.DriftReport, planted) -> bool:
    block, feature = planted
    top = report.shifts[0]
    return top.block == block and (feature is None or top.feature == feature)


def simulate(runs: int, n: int, noises=(1.0, 0.5)) -> None:
    print(f"{runs} runs per case, {n} training rows, {n} fresh and {n} shifted rows scored; "
          "new: the novelty score (alpha 1%), old: issue 22's per-feature ranges\n")  # fmt: skip
    print(
        "| case | noise sd | check | fresh rows flagged | fresh evaluations warning | shifted: "
        "evaluations warning (named first) | rows flagged | coverage all | unflagged | "
        "flagged | s per run |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for case, (draw, planted) in CASES.items():
        for noise in noises:
            start = time.perf_counter()
            got = [one_run(draw, planted, n, seed, noise) for seed in range(runs)]
            took = (time.perf_counter() - start) / runs
            for check in ("new", "old"):
                r = {k: np.nanmean([g[check][k] for g in got]) for k in got[0][check]}
                print(
                    f"| {case} | {noise} | {check} | {r['fresh rows']:.2%} | {r['fresh evals']:.0%} "
                    f"| {r['warns']:.0%} ({r['named']:.0%}) | {r['flagged']:.1%} "
                    f"| {r['coverage']:.3f} | {r['unflagged']:.3f} | {r['outside']:.3f} "
                    f"| {took:.1f} |"
                )


def false_alarms(runs: int, sizes=(300, 500, 1000), n_eval: int = 200) -> None:
    """Fresh same-distribution rows only: how often rows are flagged and evaluations warn."""
    print(f"{runs} runs per size; each scores {n_eval} fresh rows as one evaluation; 47 skewed "
          "narrow columns + a 384-d embedding\n")  # fmt: skip
    print("| training rows | check | rows flagged | evaluations warning | fit s |\n"
          "|---:|---|---:|---:|---:|")  # fmt: skip
    for n in sizes:
        got = {"new": [], "old": []}
        fit_s = 0.0
        for seed in range(runs):
            rng = np.random.default_rng(10_000 + seed)
            blocks, y = mixed(rng, n)
            model = ViewPredictor(PredictorConfig(encoders=tuple(blocks))).fit(blocks, y)
            start = time.perf_counter()
            new = drift.TrainingRange.fit(y, blocks, names=NAMES, predicted=model.oof_predictions_)
            fit_s += time.perf_counter() - start
            fresh, y_fresh = mixed(rng, n_eval)
            predicted = model.predict(fresh)
            for name, limits in (("new", new), ("old", old_check(y, blocks))):
                report = limits.check(fresh, y_fresh, predicted)
                got[name].append((report.share, report.features_warn))
        for name, rows in got.items():
            share, warns = np.mean(rows, axis=0)
            print(f"| {n} | {name} | {share:.2%} | {warns:.0%} | {fit_s / runs:.2f} |")


def wide(n: int = 2000, n_new: int = 1000) -> None:
    """Fit and scoring time and file sizes for a 2,280-wide block (an ImageNet encoder: 1,280
    pooled features + 1,000 class probabilities) beside 47 narrow columns."""
    rng = np.random.default_rng(0)

    def draw(m):
        logits = rng.normal(size=(m, 1000))
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        blocks, y = mixed(rng, m)
        blocks.pop("title")
        return {**blocks, "imagenet": np.hstack([np.abs(rng.normal(size=(m, 1280))), probs])}, y

    blocks, y = draw(n)
    start = time.perf_counter()
    limits = drift.TrainingRange.fit(y, blocks, names=NAMES)
    fit_s = time.perf_counter() - start
    fresh, _ = draw(n_new)
    start = time.perf_counter()
    flagged = limits.features_outside(fresh)
    score_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        limits.save(Path(out))
        sizes = [(Path(out) / f).stat().st_size for f in (drift.RANGE_FILE, drift.NOVELTY_FILE)]
    print("| training rows | fit s | rows scored | score s | rows flagged | JSON bytes | "
          "safetensors bytes |\n|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    print(f"| {n} | {fit_s:.2f} | {n_new} | {score_s:.2f} | {flagged.mean():.2%} | {sizes[0]:,} "
          f"| {sizes[1]:,} |")  # fmt: skip


# ----- the real thumbnails ---------------------------------------------------------------------
def real(root: Path, encoders: tuple[str, ...]) -> None:
    """Train on older uploads, score newer ones (and a channel-disjoint hold-out of the
    training years): what a user who trains once and keeps predicting meets."""
    from thumbview.data.dataset import load_dataset
    from thumbview.evaluate import evaluate
    from thumbview.predict.workflow import train

    ds = load_dataset(root)
    table = ds.table.assign(collected_at=str(ds.table["published_at"].max()))  # one clock
    ds = replace(ds, table=table)
    years = pd.to_datetime(table["published_at"], utc=True).dt.year.to_numpy()
    print(f"{'+'.join(encoders)}, ridge; ages counted to the newest upload for every split\n")
    print(
        "| trained on | scored on | rows | rows flagged | warns | coverage inside | "
        "coverage outside | features named first |\n|---|---|---:|---:|---|---:|---:|---|"
    )
    for last, scored in ((2012, (2014, 2015)), (2014, (2015, 2015))):
        with tempfile.TemporaryDirectory() as out:
            result = train(ds.subset(years <= last), PredictorConfig(encoders=encoders), out)
            _real_row(f"<= {last}", "hold-out channels, same years", result.holdout)
            newer = (years >= scored[0]) & (years <= scored[1])
            _real_row(
                f"<= {last}", f"{scored[0]}-{scored[1]}", evaluate(out, ds.subset(newer)).result
            )


def _real_row(trained: str, scored: str, res) -> None:
    report = res.out_of_range or {}
    cov = {r["stratum"]: r for r in (res.conditional_coverage or {}).get("training range", [])}
    cells = [
        f"{cov[k]['coverage']:.3f} (n={cov[k]['n']})" if k in cov else "-"
        for k in ("inside", "outside")
    ]
    named = "; ".join(f"{f['text']} ({f['share']:.1%})" for f in report.get("features", [])[:2])
    print(
        f"| {trained} | {scored} | {report.get('n', 0)} | {report.get('share_outside', 0):.1%} "
        f"| {'yes' if res.warning else 'no'} | {cells[0]} | {cells[1]} | {named or '-'} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eval", type=int, default=200, help="rows per fresh evaluation")
    parser.add_argument("--false-alarms", action="store_true", help="fresh data at 3 sizes")
    parser.add_argument("--wide", action="store_true", help="a 2,280-wide block: time, size")
    parser.add_argument("--cases", default="", help="only cases whose name contains this")
    parser.add_argument("--real", type=Path, help="a dataset folder: the time-shifted splits")
    parser.add_argument("--encoders", default="title,context,title-desc,visual")
    args = parser.parse_args()
    if args.real:
        real(args.real, tuple(args.encoders.split(",")))
    elif args.wide:
        wide()
    elif args.false_alarms:
        false_alarms(args.runs, n_eval=args.eval)
    else:
        CASES = {k: v for k, v in CASES.items() if args.cases in k}
        simulate(args.runs, args.n)
