"""One verdict on a ranking of candidates: is the leader reliably ahead, or is it a tie?

`compare` (its table, its PNG, the web page) and `frames` (its table, contact sheet and the
page's stills) all render the one `RankVerdict` made here, so they cannot disagree: when it
says "no reliable difference", nothing anywhere names a winner, and the top `tied`
candidates are shown as equal ("=1").

Chances come from the model's calibrated difference model (`predict.pairwise`) when it has
one. Models saved before it existed fall back to independent residual draws (the model's
out-of-fold residual quantiles as `N_ATOMS` equally likely atoms); that method scored like
a coin flip on same-channel pairs, so `FALLBACK_NOTE` says so, and the leader is called
ahead only when it beats the runner-up at least `FALLBACK_RELIABLE` of the time.

A model with no demonstrated skill for the question, or any other reason to distrust the
ranking, forces the tie: `judge(..., tie_reason=...)` or `RankVerdict.forced_tie(...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thumbview.predict.model import ViewPredictor

N_ATOMS = 100
FALLBACK_RELIABLE = 0.75  # independent residuals: the leader must win 3 times in 4
INDEPENDENCE = "independent residuals (the fallback: this model has no pairwise calibration)"
FALLBACK_NOTE = (
    "P(beats) and P(best) assume independent residuals: this model has no pairwise "
    "calibration (trained before it existed), and that method scored like a coin flip on "
    "same-channel pairs; retrain the model for calibrated chances"
)
# What "chance it's the best" means, in words, wherever that number is shown.
CHANCE_BEST = (
    "chance best: how often each candidate comes out on top when the model's typical "
    "errors are replayed (the chances add up to 100%; with N equal candidates each gets 1/N)"
)
# What stands in for "chance best" when every candidate is tied ("=1"): compare's table, PNG
# and page, and the bot's table, JSON and page show "-" in its place and say this line.
NO_CHANCE_BEST = (
    "chance best: not shown (-) because every candidate is tied: the model cannot tell them "
    "apart, so each one's chance of coming out on top would only rank noise"
)


def chance_best_shown(n: int, reliable: bool | None, tied: int, no_skill: str = "") -> bool:
    """The one rule for showing chance best beside `n` ranked candidates: not when all of
    them share rank "=1" (`reliable` False with `tied` >= n, or a `no_skill` line: no
    demonstrated skill ties every one), since their chances would rank noise. A partial tie
    keeps them: they show how far behind the candidates ranked apart are."""
    all_tied = reliable is False and max(tied, 2) >= n
    return not (all_tied or no_skill)


def chance_best_note(shown: bool, meaning: str = CHANCE_BEST) -> str:
    """The line under the ranking: what chance best means, or why it is not shown."""
    return meaning if shown else NO_CHANCE_BEST


def chance_text(p: float, shown: bool) -> str:
    """'55%' (a candidate's chance best), or '-' when none is shown."""
    return f"{p:.0%}" if shown else "-"


@dataclass(frozen=True)
class RankVerdict:
    """Whether the leader is reliably ahead; `tied`: how many at the top are not told apart.

    `reliable` True: the leader is named (`tied` = 1). False: "no reliable difference",
    and the first `tied` (>= 2) candidates in ranked order are shown as a tie.
    `p_top_beats_next`: the chance the leader really gets more views than the runner-up.
    """

    reliable: bool
    text: str
    tied: int
    p_top_beats_next: float

    def forced_tie(self, reason: str, n: int) -> RankVerdict:
        """The same ranking with every one of the `n` candidates tied, for `reason`."""
        return RankVerdict(False, f"no reliable difference: {reason}", n, self.p_top_beats_next)


def rank_labels(n: int, tied: int, values: Sequence[float] | None = None) -> list[str]:
    """['=1', '=1', '3', ...]: the first `tied` share rank 1; below them, candidates with
    equal `values` (ranked order, e.g. the same prediction) share a rank too ('=3', '=3')."""
    top = tied if tied >= 2 else 0  # how many share rank 1
    first: list[int] = []  # the place of the first candidate each one is equal to
    for k in range(n):
        same = values is not None and k - 1 >= top and abs(values[k] - values[k - 1]) < 1e-12
        first.append(0 if k < top else first[-1] if same else k)
    return [("=" if first.count(first[k]) > 1 else "") + str(first[k] + 1) for k in range(n)]


def chance_words(p: float, leader: str, runner_up: str) -> str:
    """'P = 53%' said in words: what the number is, and what a coin flip would give."""
    return (
        f"the chance that {leader} really gets more views than {runner_up} is {p:.0%} "
        "(50% would be a coin flip)"
    )


# ----- probabilities (pure) ------------------------------------------------------------------
def residual_atoms(model: ViewPredictor, n: int = N_ATOMS) -> np.ndarray:
    """(n,) equally likely residuals: the quantile function at the midpoints of n segments."""
    return np.asarray(model.residual_quantile((np.arange(n) + 0.5) / n), dtype=np.float64)


def p_beats_matrix(pred: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """(N, N) P(pred_i + R_i > pred_j + R_j), R iid over `atoms`, ties counted half.

    Exact: the difference R_i - R_j takes M^2 equally likely values; counting those above
    pred_j - pred_i in integers keeps identical inputs at exactly 0.5.
    """
    pred = np.asarray(pred, dtype=np.float64)  # (N,)
    m = len(atoms)
    diffs = np.sort((atoms[:, None] - atoms[None, :]).ravel())  # (M^2,) symmetric around 0
    delta = pred[None, :] - pred[:, None]  # (N, N) pred_j - pred_i
    below_or_eq = np.searchsorted(diffs, delta, side="right")  # (N, N) count <= delta
    below = np.searchsorted(diffs, delta, side="left")  # count < delta
    greater = m * m - below_or_eq
    ties = below_or_eq - below
    return (2 * greater + ties) / (2.0 * m * m)


def p_best(pred: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """(N,) P(candidate i is the best of all), independent residuals over `atoms`.

    For each atom of i, the chance that every other candidate falls below it (ties half,
    via the mid-CDF); renormalised to sum to 1, which only corrects for multi-way ties.
    With two candidates it equals `p_beats_matrix`.
    """
    pred = np.asarray(pred, dtype=np.float64)  # (N,)
    sorted_atoms = np.sort(atoms)
    m = len(atoms)
    values = pred[:, None] + sorted_atoms[None, :]  # (N, M) outcomes of each candidate
    prob = np.ones_like(values)
    for k in range(len(pred)):
        x = values - pred[k]  # (N, M) what candidate k's residual must stay below
        mid_cdf = (
            np.searchsorted(sorted_atoms, x, side="left")
            + np.searchsorted(sorted_atoms, x, side="right")
        ) / (2.0 * m)
        mid_cdf[k] = 1.0  # a candidate does not compete with itself
        prob *= mid_cdf
    out = prob.mean(axis=1)
    return out / out.sum()


@dataclass(frozen=True)
class Chances:
    """P(best) (N,) and P(i beats j) (N, N) by the best method the model has."""

    best: np.ndarray
    beats: np.ndarray
    assumption: str
    note: str  # FALLBACK_NOTE for independent residuals, "" otherwise


def chances(predictor, pred: np.ndarray) -> Chances:
    """The model's calibrated difference model when it has one, else independent residuals."""
    pairwise = predictor.pairwise
    if pairwise is None:
        atoms = residual_atoms(predictor.model)
        return Chances(
            p_best(pred, atoms), p_beats_matrix(pred, atoms), INDEPENDENCE, FALLBACK_NOTE
        )
    from thumbview.predict import pairwise as pw

    sigma = pairwise.calibration_.sigma
    beats = pw.p_beats(pred[:, None] - pred[None, :], sigma)  # (N, N)
    return Chances(pw.p_best(pred, sigma), np.asarray(beats), pw.METHOD, "")


# ----- the verdict ---------------------------------------------------------------------------
def judge(
    predictor,
    pred: np.ndarray,
    blocks: dict[str, np.ndarray],
    labels: Sequence[str],
    order: Sequence[int],
    beats: np.ndarray,
    tie_reason: str = "",
    pairwise=None,
) -> RankVerdict:
    """The one verdict on candidates shown in `order` (indices into `pred` (N,), best first).

    `beats` (N, N): P(i beats j) as shown. The tie group is the leader and every following
    candidate it does not reliably beat (P below the reliability threshold). `tie_reason`
    (e.g. "this model did not beat the median on held-out videos") forces a full tie.
    """
    pred = np.asarray(pred, dtype=np.float64)
    order = [int(k) for k in order]
    top, nxt = order[0], order[1]
    p = float(beats[top, nxt])
    pairwise = predictor.pairwise if pairwise is None else pairwise
    if pairwise is None:
        threshold, reliable, reason = FALLBACK_RELIABLE, p >= FALLBACK_RELIABLE, ""
    else:
        reliable, reason, threshold = _pairwise_call(pairwise, pred, blocks, labels)
    # No skill shown at all (`reason`): the model cannot order these candidates, so all tie.
    tied = 1 if reliable else len(order) if reason else _tie_group(beats, order, threshold)
    if reliable:
        text = f"{labels[top]} is likely ahead: {chance_words(p, labels[top], labels[nxt])}"
    else:
        text = reason or (
            f"no reliable difference between the top {tied}: "
            f"{chance_words(p, labels[top], labels[nxt])}"
        )
    verdict = RankVerdict(bool(reliable), text, tied, p)
    return verdict.forced_tie(tie_reason, len(order)) if tie_reason else verdict


def _pairwise_call(pairwise, pred, blocks, labels) -> tuple[bool, str, float]:
    """(reliable, the reason when skill was never shown or "", the P threshold)."""
    from thumbview.predict import pairwise as pw

    said = pw.verdict(pred, pairwise.calibration_, pairwise.fold_predictions(blocks), labels)
    skill = pairwise.calibration_.skilful
    return said.reliable, "" if skill else said.text, 0.5 + pw.DEFAULT_MARGIN


def _tie_group(beats: np.ndarray, order: list[int], threshold: float) -> int:
    """How many candidates, from the top, the leader does not reliably beat (at least 2)."""
    top, k = order[0], 1
    while k < len(order) and beats[top, order[k]] < threshold:
        k += 1
    return max(k, 2)
