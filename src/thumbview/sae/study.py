"""The SAE feature study: which latents go with unusually high or low views.

Reproduces "Sparse Autoencoders detect features in YouTube thumbnails associated with high
view counts": for every SAE latent, take the videos that activate it most, hold out the very
top one(s), and summarise the views of the rest (the *group statistic*; `selection`).
Whether latents pick out unusual view counts is judged with the nulls of `nulltests`: per-
feature p-values against random groups with Benjamini-Hochberg q-values, two omnibus tests
(KS: many small shifts; max-z: a few strong features) and a held-out test against view
shuffles, and selection-aware (split) intervals for the rows of the magnitude table.
Discoveries are grouped into clusters of features that share most of their videos
(`selection.share_clusters`), since those are one piece of evidence, not many. Views may
first be adjusted for age and channel (`covariates`).

One code path serves the main study (median of 399 videos) and the per-channel mode (mean of
10 videos): the statistic, group size and thresholds are fields of `StudyConfig`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from thumbview.fileio import json_safe
from thumbview.sae.arrays import StudyError, reduce_rows, row_statistics
from thumbview.sae.config import StudyConfig, channel_config
from thumbview.sae.nulltests import (
    HeldoutResult,
    KsResult,
    MaxZResult,
    StudyGroups,
    bh_qvalues,
    draw_groups,
    masked_row_statistics,
    permutation_pvalues,
    random_group_stats,
    shuffle_tests,
    split_cis,
)
from thumbview.sae.selection import (
    check_latents,
    check_views,
    group_statistics,
    qualifying,
    share_clusters,
    top_activations,
)

logger = logging.getLogger(__name__)

__all__ = ["StudyConfig", "StudyError", "StudyResult", "channel_config", "run_study"]

DISCOVERY_Q = 0.05  # q below which a feature counts as a discovery in the summary
OMNIBUS_TESTS = {
    "ks": "Many features each a little off (dense, weak effects): the KS distance between "
    "feature-group and random-group statistics moves when the whole distribution shifts. "
    "Blind to a few strong features among many.",
    "max_z": "A few strong features (sparse, strong effects): the most extreme feature's z "
    "against random groups, compared with the most extreme on shuffled views. Weak against "
    "many small shifts with none extreme.",
}
CLUSTER_RULE = (
    "features sorted by p; each joins the cluster of the first earlier lead feature whose "
    "group shares more than half of its videos, else leads a new one. Features in one "
    "cluster carry the same videos' views: they are not independent evidence."
)


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True, eq=False)
class StudyResult:
    """Everything the study found; `summary()` is the JSON view.

    features: one row per qualifying latent, sorted by group statistic (highest first) with
      columns rank, latent_feature_index, group_<statistic>_views, ratio (group statistic /
      dataset statistic), n (group size), top_video (row of the held-out top-1 video),
      heldout_views, p (permutation p-value), q (BH over all qualifying latents),
      selection_views / estimate_views (the statistic over the group's videos in the
      selection / estimation half), n_estimate, ci_low, ci_high (bootstrap CI of
      estimate_views; only for the table's rows, NaN elsewhere), cluster (shared-video
      cluster of the discoveries and the table's rows, `CLUSTER_RULE`; -1 elsewhere).
    random_stats: (n_random,) statistic of the KS random groups.
    ks: the omnibus KS test (D and its view-shuffle p-value); max_z: the omnibus test for a
      few strong features; heldout: the held-out test.
    dataset_median: median views of all videos; dataset_statistic: the configured statistic
      of all videos (the ratio's denominator; equal to the median in the main study).
    """

    config: StudyConfig
    features: pd.DataFrame
    random_stats: np.ndarray
    ks: KsResult
    max_z: MaxZResult
    heldout: HeldoutResult
    dataset_median: float
    dataset_statistic: float
    n_videos: int
    n_latents: int

    @property
    def stat_column(self) -> str:
        return f"group_{self.config.statistic}_views"

    @property
    def ks_statistic(self) -> float:
        return self.ks.statistic

    @property
    def ks_pvalue(self) -> float:
        return self.ks.pvalue

    @property
    def p_hhm(self) -> float:
        return self.heldout.p_hhm

    @property
    def p_lhm(self) -> float:
        return self.heldout.p_lhm

    @property
    def n_discovery_clusters(self) -> int:
        """Shared-video clusters among the features with q < DISCOVERY_Q."""
        f = self.features
        return int(f.loc[f["q"] < DISCOVERY_Q, "cluster"].nunique())

    def warnings(self) -> list[str]:
        """What limits the conclusions, one sentence each (the report shows them)."""
        held = self.heldout.warning()
        return [held] if held else []

    def table(self) -> pd.DataFrame:
        """The magnitude table: top and bottom `n_extreme` features by the selection half.

        Rows are chosen and ranked on `selection_views` (the group's selection-half videos);
        `estimate_views`, its ratio and the CI come from the other half, so they are not
        inflated by the choice. The paper's full-group statistic is kept for comparison.
        """
        return _table(
            self.features, self.config.n_extreme, self.stat_column, self.dataset_statistic
        )

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN becomes None)."""
        q = self.features["q"].to_numpy()
        out = {
            "config": asdict(self.config),
            "n_videos": self.n_videos,
            "n_latents": self.n_latents,
            "n_qualifying": len(self.features),
            "dataset_median": self.dataset_median,
            "dataset_statistic": self.dataset_statistic,
            "ks_statistic": self.ks.statistic,
            "ks_pvalue": self.ks.pvalue,
            "ks_test": "view-shuffle permutation of the two-sample KS distance",
            "max_z_statistic": self.max_z.statistic,
            "max_z_pvalue": self.max_z.pvalue,
            "max_z_latent": self.max_z.latent,
            "max_z_test": "view-shuffle permutation of the largest feature z vs random groups",
            "omnibus_tests": OMNIBUS_TESTS,
            "n_random": len(self.random_stats),
            "heldout": asdict(self.heldout),
            "n_q_below_0.05": int((q < DISCOVERY_Q).sum()),
            "n_clusters_q_below_0.05": self.n_discovery_clusters,
            "discovery_clusters": _discovery_clusters(self.features),
            "cluster_rule": CLUSTER_RULE,
            "warnings": self.warnings(),
            "table": self.table().to_dict(orient="records"),
        }
        return json_safe(out)


def _discovery_clusters(features: pd.DataFrame) -> list[dict[str, int]]:
    """Each cluster holding a discovery: its id, lead latent and number of discoveries."""
    found = features[features["q"] < DISCOVERY_Q]
    out = []
    for cluster, members in found.groupby("cluster", sort=True):
        lead = members.loc[members["p"].idxmin(), "latent_feature_index"]
        out.append({"cluster": int(cluster), "lead_latent": int(lead), "n_features": len(members)})
    return out


_TABLE_COLUMNS = ["rank", "latent_feature_index", "ratio", "n", "p", "q", "estimate_views"]


def _table(features: pd.DataFrame, n_extreme: int, stat_col: str, denom: float) -> pd.DataFrame:
    k = min(n_extreme, len(features))
    key = features["selection_views"].fillna(features[stat_col])
    tie = features["latent_feature_index"].to_numpy()
    top = features.iloc[np.lexsort((tie, -key.to_numpy()))[:k]].assign(top_or_bottom="top")
    bottom = features.iloc[np.lexsort((tie, key.to_numpy()))[:k]].assign(top_or_bottom="bottom")
    out = pd.concat([top, bottom], ignore_index=True)
    out["rank"] = np.r_[np.arange(1, k + 1), np.arange(1, k + 1)]
    out["estimate_ratio"] = out["estimate_views"] / denom if denom > 0 else np.nan
    cols = ["rank", "latent_feature_index", stat_col, "ratio", "n", "p", "q"]
    split = ["estimate_views", "estimate_ratio", "ci_low", "ci_high"]
    return out[["top_or_bottom", *cols, *split, *(["cluster"] if "cluster" in out else [])]]


def run_study(latents: Any, views: Any, config: StudyConfig | None = None) -> StudyResult:
    """Run the whole study on latents (N, L) (dense or scipy.sparse) and views (N,).

    Every random draw comes from `config.seed` (independent streams for the per-feature
    null, the KS random groups, the view shuffles, the split and the bootstrap), so a result
    is reproducible bit for bit, and dense and sparse latents give identical results.
    """
    cfg = config or StudyConfig()
    x = check_latents(latents)
    v = check_views(views, n_rows=x.shape[0], min_videos=cfg.top_k)
    cols, idx, group_stat, held = _ranked_groups(x, v, cfg)
    rng_null, rng_random, rng_shuffle, rng_split, rng_boot = np.random.default_rng(cfg.seed).spawn(
        5
    )
    null = random_group_stats(v, cfg.group_size, cfg.n_perm, rng_null, cfg.statistic)
    dataset_stat = float(reduce_rows(v.copy(), cfg.statistic))
    p = permutation_pvalues(group_stat, null, cfg.alternative)
    features = _feature_frame(cols, idx, group_stat, held, p, dataset_stat, cfg)
    sg = _study_groups(
        idx, cols, cfg, draw_groups(rng_random, len(v), cfg.n_random or len(cols), cfg.group_size)
    )
    tests = shuffle_tests(v, sg, cfg.n_shuffles, rng_shuffle, cfg.statistic, cfg.alternative)
    if tests.heldout.few_videos:
        logger.warning("%s", tests.heldout.warning())
    _add_split(features, v, sg.groups, cfg, rng_split.random(len(v)) < 0.5, rng_boot)
    _add_clusters(features, sg.groups, len(v), cfg)
    return StudyResult(
        config=cfg,
        features=features,
        random_stats=row_statistics(v, sg.random, cfg.statistic),
        ks=tests.ks,
        max_z=tests.max_z,
        heldout=tests.heldout,
        dataset_median=float(np.median(v)),
        dataset_statistic=dataset_stat,
        n_videos=int(x.shape[0]),
        n_latents=int(x.shape[1]),
    )


def _study_groups(
    idx: np.ndarray, cols: np.ndarray, cfg: StudyConfig, random: np.ndarray
) -> StudyGroups:
    """What view shuffles keep fixed; the held-out test uses the top-1 of each feature."""
    h = min(cfg.heldout_group, len(idx) // 2)
    if h < cfg.heldout_group:
        logger.warning("only %d qualifying latents: held-out test uses %d per side", len(idx), h)
    return StudyGroups(idx[:, cfg.hold_out :], idx[:, : cfg.hold_out], cols, random, h)


def _add_split(
    features: pd.DataFrame,
    views: np.ndarray,
    groups: np.ndarray,
    cfg: StudyConfig,
    in_selection: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Selection/estimation-half statistics for every feature, CIs for the table's rows."""
    sel, _ = masked_row_statistics(views, groups, in_selection, cfg.statistic)
    est, n_est = masked_row_statistics(views, groups, ~in_selection, cfg.statistic)
    features["selection_views"], features["estimate_views"], features["n_estimate"] = (
        sel,
        est,
        n_est,
    )
    features["ci_low"], features["ci_high"] = np.nan, np.nan
    if cfg.n_boot == 0:
        return
    table = _table(features, cfg.n_extreme, f"group_{cfg.statistic}_views", 1.0)
    rows = np.flatnonzero(features["latent_feature_index"].isin(table["latent_feature_index"]))
    lo, hi = split_cis(views, groups[rows], ~in_selection, cfg.n_boot, cfg.ci, rng, cfg.statistic)
    features.iloc[rows, features.columns.get_loc("ci_low")] = lo
    features.iloc[rows, features.columns.get_loc("ci_high")] = hi


def _add_clusters(
    features: pd.DataFrame, groups: np.ndarray, n_rows: int, cfg: StudyConfig
) -> None:
    """Shared-video clusters of the discoveries and the table's rows, by p (-1 elsewhere)."""
    table = _table(features, cfg.n_extreme, f"group_{cfg.statistic}_views", 1.0)
    latent = features["latent_feature_index"].to_numpy()
    pick = (features["q"] < DISCOVERY_Q) | features["latent_feature_index"].isin(
        table["latent_feature_index"]
    )
    rows = np.flatnonzero(pick.to_numpy())
    rows = rows[np.lexsort((latent[rows], features["p"].to_numpy()[rows]))]  # by p, then latent
    labels = np.full(len(features), -1, np.int64)
    labels[rows] = share_clusters(groups[rows], n_rows)
    features["cluster"] = labels


def _feature_frame(
    cols: np.ndarray,
    idx: np.ndarray,
    group_stat: np.ndarray,
    held: np.ndarray,
    p: np.ndarray,
    dataset_stat: float,
    cfg: StudyConfig,
) -> pd.DataFrame:
    """The per-feature table (see `StudyResult.features`), rows already ranked."""
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(cols) + 1),
            "latent_feature_index": cols,
            f"group_{cfg.statistic}_views": group_stat,
            "ratio": group_stat / dataset_stat if dataset_stat > 0 else np.nan,
            "n": cfg.group_size,
            "top_video": idx[:, 0],
            "heldout_views": held[:, 0],
            "p": p,
            "q": bh_qvalues(p),
        }
    )


def _ranked_groups(
    x: Any, v: np.ndarray, cfg: StudyConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Qualifying latents, their top rows, group statistics and held-out views, ranked.

    Ranked by group statistic, highest first; equal statistics by latent index.
    Returns cols (F,), idx (F, top_k), group_stat (F,), held (F, hold_out).
    """
    cols = qualifying(x, cfg.threshold, cfg.top_k, cfg.min_active)
    logger.info("%d of %d latents qualify", len(cols), x.shape[1])
    idx, _ = top_activations(x, cfg.top_k, cols)  # (F, top_k)
    group_stat, held = group_statistics(v, idx, cfg.hold_out, cfg.statistic)
    order = np.lexsort((cols, -group_stat))
    return cols[order], idx[order], group_stat[order], held[order]
