"""Which inputs and which head carry the signal: every encoder subset x head on the same folds.

A single headline number hides whether a block helps: the ablation fits every non-empty
subset of the feature blocks with every head on identical channel-disjoint folds and reports
mean and sd across folds of Spearman, MAE and R^2. Heads:

- ridge: the `ViewPredictor` (blocks standardised and weighted 1/sqrt(D), LOO-chosen penalty).
- gbm: scikit-learn's HistGradientBoostingRegressor on the subset's NARROW blocks (at most
  `GBM_MAX_DIM` columns: descriptors, context), its number of trees chosen by early stopping
  on a channel-grouped validation split of the training fold. Dense 384-512-d embeddings
  (MiniLM, CLIP) are left to the linear head: trees on them are slow on CPU and their
  directions are not axis-aligned. A gbm row is reported only for subsets made of narrow
  blocks alone (it would repeat one); subsets without a narrow block get no stacked row.
- stacked: `StackedHead.blend` of the ridge (all blocks) and gbm predictions, the same average
  `train --head stacked` fits (computed from the two heads' fold predictions, no extra fit).

`tfidf_rows` adds a character n-gram TF-IDF ridge on the titles, fitted inside each fold,
as the cheap text baseline MiniLM has to beat.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from thumbview.predict.crossval import compute_metrics, group_kfold, summarize_folds
from thumbview.predict.heads import GBM_MAX_DIM, GBMHead, StackedHead
from thumbview.progress import SILENT, Progress

log = logging.getLogger(__name__)

HEADS = ("ridge", "gbm", "stacked")


@dataclass(frozen=True)
class AblationRow:
    """One encoder subset x head: mean and sd across folds (channel-disjoint when grouped)."""

    encoders: str  # "title+context"
    head: str
    spearman: float
    spearman_sd: float
    mae_log10: float
    mae_log10_sd: float
    r2: float
    r2_sd: float
    n_folds: int


def _fold_predictions(
    blocks, y, groups, folds, names, seed, gbm_iter
) -> dict[str, list[np.ndarray]]:
    """{head: [test predictions per fold]} for one encoder subset."""
    from thumbview.predict.model import PredictorConfig, ViewPredictor, block_rows

    config = PredictorConfig(encoders=tuple(names), seed=seed)
    narrow = [n for n in names if np.shape(blocks[n])[1] <= GBM_MAX_DIM]
    out: dict[str, list[np.ndarray]] = {
        h: [] for h in (HEADS if narrow and gbm_iter else ("ridge",))
    }
    X = (
        np.concatenate([np.asarray(blocks[n], np.float64) for n in narrow], axis=1)
        if narrow
        else None
    )
    for train, test in folds:
        ridge = ViewPredictor(config).fit(block_rows(blocks, train), y[train], calibrate=False)
        out["ridge"].append(ridge.predict(block_rows(blocks, test)))
        if "gbm" in out:
            g = None if groups is None else np.asarray(groups, dtype=object)[train]
            trees = GBMHead(max_iter=gbm_iter, seed=seed).fit(X[train], y[train], g)
            out["gbm"].append(trees.predict(X[test]))
            out["stacked"].append(StackedHead.blend(out["ridge"][-1], out["gbm"][-1]))
    return out


def ablate(
    blocks: dict[str, np.ndarray],
    y,
    groups=None,
    *,
    k: int = 5,
    seed: int = 0,
    heads: Sequence[str] = HEADS,
    gbm_iter: int = 300,  # 0: ridge only
    combos: Sequence[tuple[str, ...]] | None = None,
    progress: Progress = SILENT,
) -> list[AblationRow]:
    """Every non-empty subset of `blocks` (or just `combos`) x `heads`, on the same K folds."""
    y = np.asarray(y, dtype=np.float64)
    folds = group_kfold(groups, k, seed, n=len(y))
    rows = []
    combos = subsets(list(blocks)) if combos is None else [tuple(c) for c in combos]
    with progress.task("ablation", len(combos)) as advance:
        for subset in combos:
            preds = _fold_predictions(blocks, y, groups, folds, subset, seed, gbm_iter)
            all_narrow = all(np.shape(blocks[n])[1] <= GBM_MAX_DIM for n in subset)
            for head in heads:
                if head in preds and (head != "gbm" or all_narrow):
                    rows.append(_summary("+".join(subset), head, y, folds, preds[head]))
            log.info("ablation %s done", "+".join(subset))
            advance(1)
    return rows


def tfidf_rows(titles: Sequence[str], y, groups=None, *, k: int = 5, seed: int = 0) -> AblationRow:
    """Character 2-5-gram TF-IDF + ridge on titles, fitted inside each fold."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from threadpoolctl import threadpool_limits

    y = np.asarray(y, dtype=np.float64)
    titles = np.asarray(list(titles), dtype=object)
    folds = group_kfold(groups, k, seed, n=len(y))
    preds = []
    for train, test in folds:
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True)
        Xtr = vec.fit_transform(titles[train])
        with threadpool_limits(1, user_api="blas"):  # eigh collapses with threads under load
            model = RidgeCV(alphas=np.logspace(-1, 3, 9)).fit(Xtr, y[train])
        preds.append(model.predict(vec.transform(titles[test])))
    return _summary("title-tfidf", "ridge", y, folds, preds)


def subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first, in the given order."""
    return [c for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]


def _summary(name, head, y, folds, preds) -> AblationRow:
    cv = summarize_folds(
        compute_metrics(y[test], p) for (_, test), p in zip(folds, preds, strict=True)
    )
    m, sd = cv.mean, cv.std
    return AblationRow(
        name,
        head,
        m.spearman,
        sd["spearman"],
        m.mae_log10,
        sd["mae_log10"],
        m.r2,
        sd["r2"],
        len(folds),
    )


# ----- output --------------------------------------------------------------------------------
def write_csv(rows: Sequence[AblationRow], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(AblationRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def plot_bars(rows: Sequence[AblationRow], path: Path) -> Path:
    """Horizontal bars of mean Spearman with +-1 sd whiskers, best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rows, key=lambda r: np.nan_to_num(r.spearman, nan=-1))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(ordered) + 1.2))
    labels = [f"{r.encoders} [{r.head}]" for r in ordered]
    ax.barh(
        labels,
        [r.spearman for r in ordered],
        xerr=[r.spearman_sd for r in ordered],
        color="#4878a8",
    )
    ax.set_xlabel("Spearman (mean ± sd over channel-disjoint folds)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(rows: Sequence[AblationRow]) -> str:
    """The table as markdown, best Spearman first (for the README)."""
    lines = ["| encoders | head | Spearman | MAE (log10) | R² |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -np.nan_to_num(r.spearman, nan=-1)):
        lines.append(
            f"| {r.encoders} | {r.head} | {r.spearman:.3f} ± {r.spearman_sd:.3f} | "
            f"{r.mae_log10:.3f} ± {r.mae_log10_sd:.3f} | {r.r2:.3f} ± {r.r2_sd:.3f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class AblationReport:
    """What `thumbview cv --ablate` writes: the rows, the CSV, the chart and the protocol."""

    rows: tuple[AblationRow, ...]
    csv: Path
    png: Path
    protocol: str


def ablate_dataset(
    dataset,
    encoders: Sequence[str],
    out_dir: Path,
    *,
    k: int = 5,
    seed: int = 0,
    target: str = "log10",
    tfidf: bool = True,
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
) -> AblationReport:
    """`ablate` over a dataset folder's cached features, folds from its split protocol."""
    from thumbview.predict.model import PredictorConfig
    from thumbview.predict.target import make_target
    from thumbview.predict.workflow import build_encoders, dataset_blocks, dataset_split

    config = PredictorConfig(encoders=tuple(encoders), target=target, seed=seed, cv_folds=k)
    y, mask = make_target(dataset.views, target, dataset.channels)
    rows_idx = np.flatnonzero(mask)
    plan = dataset_split(dataset, rows_idx, config, 0.0)  # before any feature is computed
    blocks = dataset_blocks(dataset, build_encoders(encoders), cache_dir, progress)
    blocks = {n: b[rows_idx] for n, b in blocks.items()}
    rows = ablate(blocks, y[rows_idx], plan.fold_groups, k=k, seed=seed, progress=progress)
    if tfidf:
        titles = [dataset.titles[i] for i in rows_idx]
        rows.append(tfidf_rows(titles, y[rows_idx], plan.fold_groups, k=k, seed=seed))
    out_dir = Path(out_dir)
    csv_path = write_csv(rows, out_dir / "ablation.csv")
    png_path = plot_bars(rows, out_dir / "ablation.png")
    return AblationReport(tuple(rows), csv_path, png_path, plan.protocol.name)
