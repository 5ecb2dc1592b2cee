"""The out-of-range check (`predict.drift`), calibrated by simulation with known truth.

Each run draws a training set, fits a ridge `ViewPredictor` (80% cross-validation residual
intervals) and the `TrainingRange`, then scores (a) fresh rows from the same distribution
and (b) rows with one planted shift:

- one input: x1 ~ U(-1, 1) in training, U(-3, 3) when scored (truth tanh(2 x1) + noise,
  the case of issue 22), beside an unshifted 384-d title embedding;
- publication year: context built by the real `ContextEncoder`, uploads of 2012-2015 in
  training, of 2019-2020 when scored, at the same ages (the snapshot moves with them);
- embedding: one factor of a 384-d (and a 96-d) low-rank embedding moves from U(-1, 1) to
  U(-3, 3) (truth tanh(2 f) + noise);
- mixed: no shift; context, count columns, skewed descriptors and a 384-d embedding, for
  the false-alarm rate on blocks like a real model's.

For each `MARGIN` it prints a markdown table: the share of fresh rows flagged (= the share
of single predictions that warn), the share of fresh evaluations that warn (batches with
views), and on the shifted rows: evaluations warning with the planted feature named first,
rows flagged (by the check before this one in brackets), interval coverage of all rows, of
the rows left unflagged and of the flagged ones.

    python benchmarks/drift_calibration.py [--runs 20] [--n 1000]
    python benchmarks/drift_calibration.py --real ../shared/data/yt-virality
"""

from __future__ import annotations

import argparse
import tempfile
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


def embedding(rng, n: int, width: int, factors=None) -> np.ndarray:
    """(n, width): 6 factors with decaying scales on fixed loadings, plus unit noise."""
    if width not in LOADINGS:
        LOADINGS[width] = np.random.default_rng(width).normal(size=(6, width))
    f = rng.uniform(-1, 1, (n, 6)) if factors is None else factors
    scales = np.array([3.0, 2.0, 1.5, 1.2, 1.0, 0.8])[:, None]
    return f @ (scales * LOADINGS[width]) + rng.normal(0, 1.0, (n, width))


def one_input(rng, n: int, shifted: bool):
    X = np.c_[rng.uniform(-3, 3, n) if shifted else rng.uniform(-1, 1, n), rng.normal(size=(n, 5))]
    title = embedding(rng, n, WIDE)
    y = np.tanh(2 * X[:, 0]) + 0.3 * X[:, 1] - 0.2 * X[:, 2] + rng.normal(0, 1.0, n)
    return {"f": X, "title": title}, y


def uploads(rng, n: int, shifted: bool):
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
    y = 2.5 + 0.5 * ctx[:, 0] + 0.4 * (ctx[:, 6] - 4) + 0.05 * title[:, 0] + rng.normal(0, 0.4, n)
    return {"context": ctx, "title": title}, y


def factor(width: int):
    def draw(rng, n: int, shifted: bool):
        f = rng.uniform(-1, 1, (n, 6))
        if shifted:
            f[:, 1] = rng.uniform(-3, 3, n)
        y = np.tanh(2 * f[:, 1]) + rng.normal(0, 1.0, n)
        return {"title": embedding(rng, n, width, f)}, y

    return draw


def mixed(rng, n: int, shifted: bool):
    ctx = np.c_[
        np.log10(1 + rng.uniform(100, 3000, n)), rng.uniform(2012, 2016, n),
        rng.uniform(-1, 1, (n, 4)), rng.normal(4, 0.8, n), np.log10(rng.integers(1, 4, n)),
    ]  # fmt: skip
    counts = rng.poisson([3.0, 0.2, 0.05, 1.0], (n, 4)).astype(float)
    skewed = np.c_[rng.lognormal(0, 0.7, (n, 3)), rng.beta(2, 5, (n, 3)), rng.poisson(0.3, n)]
    title = embedding(rng, n, WIDE)
    y = 3.5 + 0.3 * ctx[:, 0] + 0.2 * counts[:, 0] - 0.1 * skewed[:, 0] + rng.normal(0, 0.4, n)
    return {"context": ctx, "title-desc": counts, "visual": skewed, "title": title}, y


# world: (draw, what the shift must be named by: (block, feature or None))
WORLDS = {
    "one input, U(-1,1) -> U(-3,3)": (one_input, ("f", "x1")),
    "publication year 2012-2015 -> 2019-2020": (uploads, ("context", "publication year")),
    "embedding factor, 384-d": (factor(384), ("title", None)),
    "embedding factor, 96-d": (factor(96), ("title", None)),
    "mixed blocks, no shift": (mixed, None),
}
NAMES = {"f": ["x1", "x2", "x3", "x4", "x5", "x6"], "context": list(CONTEXT)}


def one_run(draw, planted, margins, n: int, seed: int) -> dict[float, dict[str, float]]:
    """Everything measured in one run, per margin."""
    rng = np.random.default_rng(seed)
    blocks, y = draw(rng, n, False)
    model = ViewPredictor(PredictorConfig(encoders=tuple(blocks))).fit(blocks, y)
    fresh, y_fresh = draw(rng, n, False)
    new, y_new = draw(rng, n, True) if planted else (fresh, y_fresh)
    lo, hi = model.predict_interval(new)
    covered = (y_new >= lo) & (y_new <= hi)
    out = {}
    for m in margins:
        drift.MARGIN = m
        limits = drift.TrainingRange.fit(y, blocks, names=NAMES)
        flags = limits.features_outside(new)
        report = limits.check(new, y_new)
        out[m] = {
            "fresh rows": limits.features_outside(fresh).mean(),
            "fresh evals": float(limits.check(fresh, y_fresh).warns),
            "warns, named": float(report.warns and _named(report, planted)),
            "flagged": flags.mean(),
            "old": np.any([_old(limits, b, x) for b, x in new.items()], axis=0).mean(),
            "coverage": covered.mean(),
            "unflagged": covered[~flags].mean() if (~flags).any() else np.nan,
            "outside": covered[flags].mean() if flags.any() else np.nan,
        }
    return out


def _named(report: drift.DriftReport, planted) -> bool:
    if planted is None:
        return False
    block, feature = planted
    top = report.shifts[0]
    return top.block == block and (feature is None or top.feature == feature)


def _old(limits: drift.TrainingRange, block: str, X) -> np.ndarray:
    """(N,) the check before this one: whole-block RMS distance > FAR x its training q99."""
    r = limits.blocks[block]
    return r.distance(X) > drift.FAR * r.q99_distance


def simulate(runs: int, n: int, margins) -> None:
    print(f"{runs} runs per world, {n} training rows, {n} fresh and {n} shifted rows scored\n")
    print(
        "| world | margin | fresh rows flagged | fresh evaluations warning | shifted: "
        "evaluations warning, feature named | rows flagged (old check) | coverage all | "
        "unflagged | flagged |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for world, (draw, planted) in WORLDS.items():
        got = [one_run(draw, planted, margins, n, seed) for seed in range(runs)]
        for m in margins:
            r = {k: np.nanmean([g[m][k] for g in got]) for k in got[0][m]}
            shifted = "-" if planted is None else f"{r['warns, named']:.0%}"
            print(
                f"| {world} | {m} | {r['fresh rows']:.2%} | {r['fresh evals']:.0%} | {shifted} "
                f"| {r['flagged']:.1%} ({r['old']:.1%}) | {r['coverage']:.3f} "
                f"| {r['unflagged']:.3f} | {r['outside']:.3f} |"
            )
    drift.MARGIN = DEFAULT_MARGIN


DEFAULT_MARGIN = drift.MARGIN


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
    parser.add_argument("--margins", default="0,0.1,0.25,0.5")
    parser.add_argument("--real", type=Path, help="a dataset folder: the time-shifted splits")
    parser.add_argument("--encoders", default="title,context,title-desc,visual")
    args = parser.parse_args()
    if args.real:
        real(args.real, tuple(args.encoders.split(",")))
    else:
        simulate(args.runs, args.n, [float(m) for m in args.margins.split(",")])
