"""P(A beats B) and P(best) for candidate thumbnails of ONE upcoming video.

Two candidates for the same video share its channel, topic, upload date and luck, so that
error cancels in the difference: what matters is how far the actual difference of two
outcomes strays from the predicted difference. Drawing independent residuals for A and B
(the old way) answers "does a random video beat another random video?" instead, and it
scored like a coin flip on same-channel pairs.

The model here, in log10 units:

    actual_A - actual_B ~ Normal(pred_A - pred_B, sigma^2)
    P(A beats B) = Phi((pred_A - pred_B) / sigma)

`sigma` is fitted by maximum likelihood (probit without intercept, so P(A>B) + P(B>A) = 1
and identical inputs give exactly 0.5) on held-out SAME-CHANNEL pairs: out-of-fold
predictions of videos of one channel, the closest observable stand-in for candidates of one
video. Because those predictions come from models that did not see the pair, `sigma` holds
the model's estimation error as well as the outcome noise. P(best) uses the same model
(outcome_i = pred_i + Normal(0, sigma^2 / 2) independently, so every difference has variance
sigma^2) and is computed by Gauss-Hermite quadrature, so two candidates give exactly P(beats).

"No reliable difference" is said when the top two candidates cannot be told apart: the
calibrated P(top beats runner-up) is within `margin` of 0.5, or the predicted difference is
within `z` grouped-jackknife standard errors of 0 (it depends on which videos trained the
model: the K cross-fit fold models disagree on it), or held-out pairs showed no skill.

Skill is judged CROSS-FITTED: each pair's P comes from a sigma fitted on the other folds'
pairs, so a model that orders nothing within a channel cannot look skilful by fitting sigma
to the very pairs it is scored on (the in-sample Brier came out below 0.25 in 5 of 10 such
runs). `skilful` also needs a margin: the cross-fitted Brier must beat the coin's Brier ON
THE SAME PAIRS by more than `SKILL_Z` channel-clustered standard errors of the per-pair
difference, a one-sided 5% test whose size `benchmarks/pairwise_calibration.py --runs`
checks by simulation (BENCHMARKS.md). The coin's Brier is 0.25 on untied pairs and 0 on
tied ones (`outcome` scores a tie 0.5, which the coin's 0.5 hits exactly), so it is 0.25 x
the untied share: comparing with a constant 0.25 called a no-skill model skilful in 94 of
100 runs with 3% ties and in all with 20%. A calibration saved before this has no
cross-fitted Brier: its skill is unknown (None); one saved without the coin's own Brier
keeps the constant 0.25.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from thumbview.schema import Number, Optional, check

log = logging.getLogger(__name__)

PAIRWISE_DIR = "pairwise"
PAIRWISE_FILE = "pairwise.json"
MAX_PAIRS = 50_000
DEFAULT_MARGIN = 0.05
DEFAULT_Z = 1.96
BRIER_COIN = 0.25
SKILL_Z = 1.645  # one-sided 5%: see the module docstring and BENCHMARKS.md for its size
SKILL_FOLDS = 5  # parts of the pairs for the cross-fit when no folds are given
SKILL_RULE = (
    f"skilful: the cross-fitted Brier (each pair scored with a sigma fitted on other folds' "
    f"pairs) beats a coin's Brier on the same pairs (0.25 x the untied share) by more than "
    f"{SKILL_Z} channel-clustered standard errors of the difference"
)
METHOD = (
    "difference model: actual_A - actual_B ~ Normal(pred_A - pred_B, sigma^2), sigma fitted on "
    "held-out same-channel pairs; reliability from a cross-fit (grouped jackknife) ensemble"
)


class PairwiseError(ValueError):
    """Pairwise calibration is impossible (no same-channel pairs) or inputs are inconsistent."""


# ----- pure maths ----------------------------------------------------------------------------
def same_group_pairs(groups, max_pairs: int = MAX_PAIRS, seed: int = 0, folds=None):
    """(i, j) index arrays, i < j, of rows sharing a group (and a fold, when `folds` is given).

    Missing groups (None, NaN, "") pair with nothing. At most `max_pairs`, sampled uniformly.
    """
    key = np.asarray([str(g) if g not in (None, "") and g == g else "" for g in groups], object)
    if folds is not None:
        key = np.array([f"{k}\0{f}" if k else "" for k, f in zip(key, folds, strict=True)], object)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    bounds = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1], True])
    left, right = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b - a < 2 or sorted_key[a] == "":
            continue
        ii, jj = np.triu_indices(b - a, k=1)
        left.append(order[a + ii])
        right.append(order[a + jj])
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(left), np.concatenate(right)
    if len(i) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(i), max_pairs, replace=False))
        i, j = i[keep], j[keep]
    return i, j


def outcome(y_i, y_j) -> np.ndarray:
    """1 where i beat j, 0 where it lost, 0.5 for a tie."""
    return 0.5 * (np.sign(np.asarray(y_i, float) - np.asarray(y_j, float)) + 1.0)


def p_beats(diff, sigma: float) -> np.ndarray:
    """P(A beats B) = Phi(diff / sigma) for predicted differences `diff` (any shape)."""
    return stats.norm.cdf(np.asarray(diff, dtype=np.float64) / sigma)


def fit_sigma(diff, won) -> float:
    """Maximum-likelihood sigma of the probit P(won) = Phi(diff / sigma); ties count half."""
    d, w = np.asarray(diff, np.float64), np.asarray(won, np.float64)
    if len(d) < 2 or np.ptp(d) == 0:
        raise PairwiseError("need at least two same-channel pairs with different predictions")

    def nll(log_sigma: float) -> float:  # log_ndtr is norm.logcdf without scipy.stats' overhead
        z = d / np.exp(log_sigma)
        return -float(np.sum(w * special.log_ndtr(z) + (1 - w) * special.log_ndtr(-z)))

    scale = float(np.std(d)) + 1e-12
    res = optimize.minimize_scalar(
        nll, bounds=(np.log(scale * 1e-2), np.log(scale * 1e4)), method="bounded"
    )
    return float(np.exp(res.x))


@dataclass(frozen=True)
class ReliabilityBin:
    """Pairs whose predicted P fell in [low, high): their mean P and how often A really won."""

    low: float
    high: float
    n: int
    mean_p: float
    observed: float


def reliability_table(p, won, n_bins: int = 10) -> tuple[ReliabilityBin, ...]:
    """Calibration table over equal-width probability bins (empty bins are left out)."""
    p, won = np.asarray(p, np.float64), np.asarray(won, np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)  # (P,)
    out = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            out.append(
                ReliabilityBin(
                    float(edges[b]),
                    float(edges[b + 1]),
                    int(sel.sum()),
                    float(p[sel].mean()),
                    float(won[sel].mean()),
                )
            )
    return tuple(out)


def brier(p, won) -> float:
    return float(np.mean((np.asarray(p, np.float64) - np.asarray(won, np.float64)) ** 2))


def clustered_se(values, clusters) -> float:
    """Standard error of mean(values) when rows of one cluster are dependent (CR1 sandwich).

    Pairs of one channel share videos, so they are not independent; clusters are. Infinite
    with fewer than two clusters (nothing to estimate the spread from).
    """
    v = np.asarray(values, np.float64)  # (P,)
    _, c = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    n_c = int(c.max()) + 1 if len(c) else 0
    if n_c < 2:
        return float("inf")
    sums = np.bincount(c, weights=v - v.mean(), minlength=n_c)  # (C,)
    return float(np.sqrt(n_c / (n_c - 1) * np.sum(sums**2)) / len(v))


def crossfit_p(diff, won, parts) -> np.ndarray | None:
    """(P,) P(beats) of each pair from a sigma fitted on the OTHER parts' pairs.

    None when there are fewer than two parts or a part's complement cannot fit a sigma.
    """
    diff, won, parts = np.asarray(diff, np.float64), np.asarray(won, np.float64), np.asarray(parts)
    labels = np.unique(parts)
    if len(labels) < 2:
        return None
    out = np.empty(len(diff))
    for k in labels:
        held = parts == k
        try:
            out[held] = p_beats(diff[held], fit_sigma(diff[~held], won[~held]))
        except PairwiseError:
            return None
    return out


def _pair_keys(groups, i, folds=None) -> np.ndarray:
    """(P,) the group (and fold) each pair lies in: the unit pairs depend within."""
    g = np.asarray(groups, dtype=object)[i].astype(str)
    if folds is None:
        return g
    return np.char.add(np.char.add(g, "\0"), np.asarray(folds)[i].astype(str))


def _pair_parts(keys, folds_of_pairs, seed: int) -> np.ndarray:
    """(P,) cross-fit part of each pair: its fold, else its group's random part of SKILL_FOLDS."""
    if folds_of_pairs is not None:
        return np.asarray(folds_of_pairs)
    uniq, inv = np.unique(keys, return_inverse=True)
    part = np.random.default_rng(seed).permutation(len(uniq)) % SKILL_FOLDS  # (G,)
    return part[inv]


def p_best(pred, sigma: float, nodes: int = 64) -> np.ndarray:
    """(N,) P(candidate i has the highest outcome), outcome_i = pred_i + Normal(0, sigma^2/2).

    P(i best) = E_z[prod_{j != i} Phi((pred_i - pred_j) / s + z)], s = sigma / sqrt(2), by
    Gauss-Hermite quadrature (exact to ~1e-10 here); normalised to sum to 1.
    """
    pred = np.asarray(pred, dtype=np.float64)  # (N,)
    x, w = np.polynomial.hermite_e.hermegauss(nodes)  # standard-normal nodes and weights
    w = w / w.sum()
    s = sigma / np.sqrt(2.0)
    gap = (pred[:, None] - pred[None, :]) / s  # (N, N)
    cdf = stats.norm.cdf(gap[:, :, None] + x[None, None, :])  # (N, N, Q)
    idx = np.arange(len(pred))
    cdf[idx, idx, :] = 1.0  # a candidate does not compete with itself
    out = (np.prod(cdf, axis=1) * w[None, :]).sum(axis=1)  # (N,)
    return out / out.sum()


def jackknife_sd(fold_preds) -> np.ndarray:
    """(N, N) grouped-jackknife standard error of pred_i - pred_j from K fold models (K, N).

    var = (K - 1) / K * sum_k (d_k - mean d)^2: the delete-a-fold jackknife, which scales up
    the spread of models that share (K - 2) / (K - 1) of their training data.
    """
    p = np.asarray(fold_preds, dtype=np.float64)  # (K, N)
    k = p.shape[0]
    d = p[:, :, None] - p[:, None, :]  # (K, N, N)
    return np.sqrt((k - 1) / k * ((d - d.mean(axis=0)) ** 2).sum(axis=0))


# ----- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairCalibration:
    """The fitted difference model and how well it was calibrated on held-out pairs.

    sigma: sd of actual - predicted difference (log10 units) on same-channel pairs.
    n_pairs: pairs used; brier: their Brier score with `sigma` (coin flip: 0.25; in-sample
    when sigma was fitted on them); reliability: the table. heldout_brier: the Brier where
    sigma never saw the pair (cross-fitted, or new pairs), heldout_brier_se: its
    channel-clustered standard error; both None for calibrations saved before them.
    heldout_coin_brier: a coin's (P = 0.5) Brier on the same pairs (0.25 x the untied
    share), heldout_gain_se: the clustered standard error of the per-pair difference between
    the two; both None for calibrations saved before them (the coin is then taken as 0.25).
    """

    sigma: float
    n_pairs: int
    brier: float
    reliability: tuple[ReliabilityBin, ...]
    method: str = METHOD
    heldout_brier: float | None = None
    heldout_brier_se: float | None = None
    heldout_coin_brier: float | None = None
    heldout_gain_se: float | None = None

    @property
    def coin_brier(self) -> float:
        """A coin's Brier on the held-out pairs (0.25 for files that did not record it)."""
        return BRIER_COIN if self.heldout_coin_brier is None else self.heldout_coin_brier

    @property
    def skill_margin(self) -> float | None:
        """How far below the coin's Brier the held-out Brier must be to count as skill."""
        se = self.heldout_brier_se if self.heldout_gain_se is None else self.heldout_gain_se
        return None if se is None else SKILL_Z * se

    @property
    def skilful(self) -> bool | None:
        """Held-out calls beat a coin on the same pairs by more than the margin; None: never
        checked."""
        if self.heldout_brier is None or self.skill_margin is None:
            return None
        return self.coin_brier - self.heldout_brier > self.skill_margin

    def to_json_dict(self) -> dict:
        extra = {"skilful": self.skilful, "skill_margin": self.skill_margin}
        return {**asdict(self), "brier_coin": self.coin_brier, **extra, "skill_rule": SKILL_RULE}

    @classmethod
    def from_json_dict(cls, d: dict) -> PairCalibration:
        """Also reads files without the held-out fields: their `skilful` is None (unknown).
        A dict that is not a calibration raises ValueError saying which field (`problem`)."""
        if (problem := calibration_problem(d)) is not None:
            raise ValueError(problem)
        bins = tuple(ReliabilityBin(**b) for b in d["reliability"])
        held = [None if d.get(k) is None else float(d[k]) for k in _HELDOUT_KEYS]
        return cls(
            float(d["sigma"]), int(d["n_pairs"]), float(d["brier"]), bins, d["method"], *held
        )


_HELDOUT_KEYS = ("heldout_brier", "heldout_brier_se", "heldout_coin_brier", "heldout_gain_se")
_BIN_SCHEMA = {"low": Number, "high": Number, "n": int, "mean_p": Number, "observed": Number}
CALIBRATION_SCHEMA = {
    "sigma": Number,
    "n_pairs": int,
    "brier": Number,
    "method": str,
    "reliability": [_BIN_SCHEMA],
    **{k: Optional(Number) for k in _HELDOUT_KEYS},
}


def calibration_problem(d: Any) -> str | None:
    """Why `d` (pairwise.json) is not a calibration this code wrote, or None: types first,
    then what the numbers must satisfy (the bins tile [0, 1] in order and hold every pair)."""
    if (problem := check(d, CALIBRATION_SCHEMA)) is not None:
        return problem
    bins = d["reliability"]
    if not d["sigma"] > 0 or not 0 <= d["brier"] <= 1 or d["n_pairs"] < 0:
        return "sigma must be > 0, brier in [0, 1] and n_pairs >= 0"
    if any(not 0 <= b["low"] < b["high"] <= 1 or b["n"] < 0 for b in bins):
        return "reliability: every bin needs 0 <= low < high <= 1 and n >= 0"
    if any(not (0 <= b[k] <= 1) for b in bins for k in ("mean_p", "observed")):
        return "reliability: mean_p and observed are shares in [0, 1]"
    if any(a["high"] > b["low"] for a, b in zip(bins, bins[1:], strict=False)):
        return "reliability: bins out of order"
    if sum(b["n"] for b in bins) != d["n_pairs"]:
        return "reliability: the bins do not hold n_pairs pairs"
    # The rule a file names says which held-out fields it was written with (issue 22: two;
    # issue 29, against the coin on the same pairs: four); a file with none is older still.
    rule = d.get("skill_rule")
    needed = () if not isinstance(rule, str) else _HELDOUT_KEYS[: 4 if "untied" in rule else 2]
    if missing := [k for k in needed if k not in d]:
        return f"missing {missing[0]!r} (null when skill was never checked)"
    if any(d.get(k) is not None and d[k] < 0 for k in _HELDOUT_KEYS):
        return "held-out Brier scores and their standard errors must be >= 0"
    return None


def calibrate_pairs(pred, y, groups, folds=None, seed: int = 0) -> PairCalibration:
    """Fit sigma on same-group pairs of held-out predictions; judge skill cross-fitted.

    sigma (what `compare` uses) is fitted on all pairs; the held-out Brier scores each pair
    with a sigma fitted on the pairs of the other folds (`folds`: the fold of each row; without
    it, groups are split into SKILL_FOLDS random parts).
    """
    i, j = same_group_pairs(groups, seed=seed, folds=folds)
    if len(i) < 2:
        raise PairwiseError("no two held-out videos share a channel: cannot calibrate P(beats)")
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    diff, won = pred[i] - pred[j], outcome(y[i], y[j])  # (P,)
    sigma = fit_sigma(diff, won)
    p = p_beats(diff, sigma)
    keys = _pair_keys(groups, i, folds)
    p_cf = crossfit_p(
        diff, won, _pair_parts(keys, None if folds is None else np.asarray(folds)[i], seed)
    )
    held = (None,) * 4 if p_cf is None else heldout_skill(p_cf, won, keys)
    return PairCalibration(sigma, len(i), brier(p, won), reliability_table(p, won), METHOD, *held)


def heldout_skill(p, won, keys) -> tuple[float, float, float, float]:
    """(Brier, its clustered se, a coin's Brier on the same pairs, the clustered se of the
    per-pair difference) of held-out P (P,) against outcomes `won` (P,), pairs clustered by
    `keys`. A tied pair (won 0.5) costs the coin nothing, so the coin's Brier is 0.25 x the
    untied share; the difference is paired, so the shared tie share cancels in its se."""
    p, won = np.asarray(p, np.float64), np.asarray(won, np.float64)
    loss, coin = (p - won) ** 2, (0.5 - won) ** 2  # (P,) each
    return (
        brier(p, won),
        clustered_se(loss, keys),
        float(coin.mean()),
        clustered_se(loss - coin, keys),
    )


def score_pairs(pred, y, groups, sigma: float, seed: int = 0) -> PairCalibration:
    """How a FITTED sigma does on new same-channel pairs (what `evaluate` reports)."""
    i, j = same_group_pairs(groups, seed=seed)
    if len(i) == 0:
        raise PairwiseError("no two evaluated videos share a channel")
    diff, won = (
        np.asarray(pred)[i] - np.asarray(pred)[j],
        outcome(np.asarray(y)[i], np.asarray(y)[j]),
    )
    p = p_beats(diff, sigma)
    held = heldout_skill(p, won, _pair_keys(groups, i))
    return PairCalibration(sigma, len(i), held[0], reliability_table(p, won), METHOD, *held)


@dataclass(frozen=True)
class PairVerdict:
    """Whether the leading candidate is reliably ahead of the runner-up, in words and numbers."""

    reliable: bool
    text: str
    p_top_beats_next: float
    jackknife_z: float | None


def verdict(
    pred,
    calibration: PairCalibration,
    fold_preds=None,
    names=None,
    margin: float = DEFAULT_MARGIN,
    z: float = DEFAULT_Z,
) -> PairVerdict:
    """Say "no reliable difference" unless the top candidate is clearly ahead of the second."""
    pred = np.asarray(pred, np.float64)
    order = np.argsort(-pred, kind="stable")
    top, nxt = int(order[0]), int(order[1])
    p = float(p_beats(pred[top] - pred[nxt], calibration.sigma))
    zj = None
    if fold_preds is not None and len(fold_preds) >= 2:
        se = jackknife_sd(np.asarray(fold_preds)[:, [top, nxt]])[0, 1]
        zj = float(abs(pred[top] - pred[nxt]) / se) if se > 0 else float("inf")
    name = names[top] if names is not None else f"candidate {top}"
    if calibration.skilful is None:
        return PairVerdict(False, "no reliable difference claimed (this model's pairwise skill "
                           "was never cross-checked: trained before that check, or with "
                           "same-channel pairs in one fold only)", p, zj)  # fmt: skip
    if not calibration.skilful:
        return PairVerdict(False, "no reliable difference (held-out pairwise calls were not "
                           "clearly better than a coin)", p, zj)  # fmt: skip
    odds = (
        f"the chance the leader really gets more views than the next is {p:.0%} "
        "(50% is a coin flip)"
    )
    if p - 0.5 < margin or (zj is not None and zj < z):
        return PairVerdict(False, f"no reliable difference between the top candidates: {odds}",
                           p, zj)  # fmt: skip
    return PairVerdict(True, f"{name} is likely ahead: {odds}", p, zj)


# ----- the fitted object ---------------------------------------------------------------------
class PairwiseModel:
    """K cross-fit fold models of a predictor plus its same-channel pair calibration.

    Fitted attributes: `fold_models_` (list of `ViewPredictor`), `calibration_`.
    Saved as `<model>/pairwise/pairwise.json` + `<model>/pairwise/fold-<k>/` predictor folders.
    A model kind without cross-fit fold models (a fine-tuned network: one network, too costly
    to refit K times) saves the calibration alone (`from_calibration`): no fold folders, and
    its verdicts have no jackknife term (`fold_predictions` is None).
    """

    @classmethod
    def from_calibration(cls, calibration: PairCalibration) -> PairwiseModel:
        """A calibration of held-out predictions (`calibrate_pairs`) without fold models."""
        self = cls()
        self.fold_models_, self.calibration_ = [], calibration
        return self

    def fit(self, config, blocks, y, channels, fold_groups=None) -> PairwiseModel:
        """Fit K fold models on the training rows; calibrate sigma on their held-out pairs."""
        from thumbview.predict.crossval import group_kfold
        from thumbview.predict.model import ViewPredictor, block_rows

        y = np.asarray(y, dtype=np.float64)
        groups = channels if fold_groups is None else fold_groups
        folds = group_kfold(groups, config.cv_folds, config.seed, n=len(y))
        oof, fold_of = np.empty(len(y)), np.empty(len(y), dtype=np.int64)
        self.fold_models_ = []
        for k, (train, test) in enumerate(folds):
            fold_groups = None if groups is None else np.asarray(groups, dtype=object)[train]
            model = ViewPredictor(config).fit(
                block_rows(blocks, train), y[train], fold_groups, calibrate=False
            )
            oof[test], fold_of[test] = model.predict(block_rows(blocks, test)), k
            self.fold_models_.append(model)
        channels = np.arange(len(y)) if channels is None else channels
        self.calibration_ = calibrate_pairs(oof, y, channels, fold_of, config.seed)
        cal = self.calibration_
        log.info(
            "pairwise sigma %.3f on %d pairs; cross-fitted Brier %s, skilful %s",
            cal.sigma, cal.n_pairs, cal.heldout_brier, cal.skilful,
        )  # fmt: skip
        return self

    def fold_predictions(self, blocks) -> np.ndarray | None:
        """(K, N) predictions of the fold models; None without any (`from_calibration`)."""
        if not self.fold_models_:
            return None
        return np.stack([m.predict(blocks) for m in self.fold_models_])

    def save(self, model_dir: Path) -> Path:
        from thumbview.fileio import atomic_write

        root = Path(model_dir) / PAIRWISE_DIR
        for k, m in enumerate(self.fold_models_):
            m.save(root / f"fold-{k}")
        atomic_write(root / PAIRWISE_FILE, json.dumps(self.calibration_.to_json_dict(), indent=2))
        return root

    @classmethod
    def load(cls, model_dir: Path) -> PairwiseModel | None:
        """The saved pairwise model, or None for models trained before it existed."""
        from thumbview.predict.model import ArtifactError, ViewPredictor
        from thumbview.schema import load_json

        root = Path(model_dir) / PAIRWISE_DIR
        if not (root / PAIRWISE_FILE).is_file():
            return None
        self = cls()
        try:
            self.calibration_ = PairCalibration.from_json_dict(
                load_json(root / PAIRWISE_FILE, ArtifactError)
            )
        except ValueError as e:
            if isinstance(e, ArtifactError):
                raise
            raise ArtifactError(f"{root / PAIRWISE_FILE}: {e}") from e
        folds = sorted(root.glob("fold-*"), key=lambda p: int(p.name.split("-")[1]))
        self.fold_models_ = [ViewPredictor.load(p) for p in folds]
        return self
