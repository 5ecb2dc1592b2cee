"""Compare thumbnails (and titles): predicted views, intervals, P(A beats B), P(best), and why.

The predictive distribution of one candidate is its point prediction plus the model's
out-of-fold residual distribution, stored as quantiles at 101 levels. That quantile function
is read as piecewise linear and discretised into M = 100 equally likely atoms (the segment
midpoints, levels 0.005, 0.015, ..., 0.995), so every probability below is exact for that
discrete distribution, not a Monte Carlo estimate.

Those residual draws are the FALLBACK, for models saved without a pairwise calibration
(`predict.pairwise`, used whenever the model has one). They treat the residuals of two
candidates as INDEPENDENT, but two thumbnails for the same video share the channel and topic
error, so the draws are far too wide for them: on same-channel pairs this method scored like
a coin flip. The comparison says so in one line (`Comparison.note`, `FALLBACK_NOTE`). It
does give exact symmetry: identical inputs get exactly 0.5, and P(A > B) + P(B > A) = 1
(ties, which the discrete atoms make possible, count half).

"Why" reports the interpretable visual descriptors that differ most between the images, in
units of the model's own feature spread (its fitted `block_scale_` for the visual block), and,
with an SAE and its study, the SAE latents whose activations differ most with their view
ratios from the study.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from thumbview.data.images import fit_frame, load_image
from thumbview.embed.visual import FEATURE_NAMES, describe
from thumbview.fileio import atomic_write
from thumbview.inference import LoadedPredictor, SaeEncoder
from thumbview.layout import find_study_dir
from thumbview.predict.card import WITHIN_CHANNEL
from thumbview.predict.model import ViewPredictor
from thumbview.predict.target import to_views
from thumbview.units import format_range, format_views, interval_label, shorten

log = logging.getLogger(__name__)

N_ATOMS = 100
INDEPENDENCE = "independent residuals (the fallback: this model has no pairwise calibration)"
FALLBACK_NOTE = (
    "P(beats) and P(best) assume independent residuals: this model has no pairwise "
    "calibration (trained before it existed), and that method scored like a coin flip on "
    "same-channel pairs; retrain the model for calibrated chances"
)


class CompareError(ValueError):
    """Inputs that cannot be compared (too few candidates, mismatched names, no SAE for a study)."""


@dataclass(frozen=True)
class Candidate:
    """One image x title; views are counts (log10 target) or channel multipliers."""

    image: str
    image_index: int
    title: str
    log10: float
    views: float
    low: float
    high: float
    p_best: float


@dataclass(frozen=True)
class DescriptorDiff:
    """A visual descriptor with its value per image; `spread` = (max - min) / scale."""

    feature: str
    values: tuple[float, ...]
    spread: float
    highest: str  # name of the image with the largest value
    # change in the winner's predicted log10 views when this descriptor goes from the lowest
    # to the highest value among the images (its other features kept); None when the model
    # does not read the descriptors (no `visual` encoder)
    effect: float | None = None

    def reading(self, winner: str) -> str:
        """'higher in the winner, and that tends to help': what a creator needs from a diff."""
        where = "higher" if self.highest == winner else "lower"
        if self.effect is None or self.effect == 0:
            return f"{where} in the winner (the model does not weigh it directly)"
        helps = (self.effect > 0) == (where == "higher")
        return f"{where} in the winner, and that tends to {'help' if helps else 'hurt'}"


@dataclass(frozen=True)
class SaeDiff:
    """An SAE latent whose activation differs between images; ratio/q from the study."""

    latent: int
    activations: tuple[float, ...]
    ratio: float | None
    q: float | None


@dataclass(frozen=True)
class Comparison:
    """Candidates ranked by P(best); `p_beats[i][j]` = P(candidate i beats candidate j)."""

    candidates: tuple[Candidate, ...]
    p_beats: tuple[tuple[float, ...], ...]
    descriptors: tuple[DescriptorDiff, ...]
    sae: tuple[SaeDiff, ...]
    image_names: tuple[str, ...]
    target: str
    coverage: float
    descriptor_scale: str  # "model feature sd" | "relative to the mean magnitude"
    assumption: str = INDEPENDENCE
    # Whether the leader is reliably ahead (None: the model has no pairwise calibration),
    # and the sentence to show instead of a bare percentage ("no reliable difference ...").
    reliable: bool | None = None
    verdict: str = ""
    warning: str = ""  # inputs far outside the training range, in one line ("" when none)
    note: str = ""  # how P(beats) was computed, when the user must know (FALLBACK_NOTE)
    # What the numbers are and what was assumed (`ModelNotes`): views after how long, the
    # context filled from the training medians, inputs the model cannot use.
    predicts: str = ""
    assumed: str = ""
    ignored: str = ""
    # One line when the model showed no skill at choosing between one channel's videos
    # (held-out same-channel calls no better than a coin); "" when it did.
    no_skill_note: str = ""
    # True when no candidate may be shown as the winner: no demonstrated within-channel
    # skill (`no_skill_note`) or no reliable difference (`reliable` is False). Renderers
    # show tied ranks then; the order of `candidates` is kept only for stability.
    tie: bool = False

    @property
    def interval_label(self) -> str:
        """'90% interval' for a model calibrated at 90% (never a fixed level)."""
        return interval_label(self.coverage)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["p_beats"] = [list(row) for row in self.p_beats]
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(
            candidates=tuple(Candidate(**c) for c in d["candidates"]),
            p_beats=tuple(tuple(row) for row in d["p_beats"]),
            descriptors=tuple(
                DescriptorDiff(**{**x, "values": tuple(x["values"])}) for x in d["descriptors"]
            ),
            sae=tuple(SaeDiff(**{**x, "activations": tuple(x["activations"])}) for x in d["sae"]),
            image_names=tuple(d["image_names"]),
            target=d["target"],
            coverage=d["coverage"],
            descriptor_scale=d["descriptor_scale"],
            assumption=d["assumption"],
            reliable=d.get("reliable"),
            verdict=d.get("verdict", ""),
            warning=d.get("warning", ""),
            note=d.get("note", ""),
            **{k: d.get(k, "") for k in ("predicts", "assumed", "ignored", "no_skill_note")},
            tie=bool(d.get("tie", False)),
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


# ----- why (pure) ----------------------------------------------------------------------------
def descriptor_diffs(
    values: np.ndarray, scale: np.ndarray, names: Sequence[str], top: int = 5
) -> tuple[DescriptorDiff, ...]:
    """The `top` descriptors with the largest (max - min) / scale across images (I, F)."""
    values = np.asarray(values, dtype=np.float64)  # (I, F)
    spread = (values.max(axis=0) - values.min(axis=0)) / scale  # (F,)
    order = [int(f) for f in np.argsort(-spread, kind="stable") if spread[f] > 0][:top]
    return tuple(
        DescriptorDiff(
            FEATURE_NAMES[f],
            tuple(float(v) for v in values[:, f]),
            float(spread[f]),
            names[int(np.argmax(values[:, f]))],
        )
        for f in order
    )


def sae_diffs(latents: np.ndarray, study, top: int = 5) -> tuple[SaeDiff, ...]:
    """SAE latents (I, d_sae) with the largest activation range, with the study's numbers."""
    z = np.asarray(latents, dtype=np.float64)  # (I, d_sae)
    spread = z.max(axis=0) - z.min(axis=0)  # (d_sae,)
    order = [int(k) for k in np.argsort(-spread, kind="stable") if spread[k] > 0][:top]
    out = []
    for k in order:
        ratio, q, _ = study.stats.get(k, (None, None, None))
        out.append(SaeDiff(k, tuple(float(v) for v in z[:, k]), ratio, q))
    return tuple(out)


# ----- the comparison ------------------------------------------------------------------------
def compare(
    predictor: LoadedPredictor,
    images: Sequence[Image.Image],
    names: Sequence[str],
    titles: Sequence[str] = ("",),
    study=None,
    sae: SaeEncoder | None = None,
    top_features: int = 5,
    pairwise=None,
    context: dict | None = None,
) -> Comparison:
    """Every image x title, ranked by P(best), with P(A beats B) and the biggest differences.

    The predictor and the SAE are loaded once by the caller (`LoadedPredictor.load`,
    `SaeEncoder.load`): a server compares many uploads with one copy of each. Intervals are
    at the model's own calibrated coverage. P(beats) and P(best) come from the model's
    calibrated difference model (`predictor.pairwise`, see `predict.pairwise`), and the
    result says whether the leader is reliably ahead; models trained before it existed fall
    back to independent residual draws, and `note` says so. `pairwise` overrides the
    model's own (tests). `context`: the video's publication date, subscribers and channel
    size (`context_from_options`), shared by every candidate; what is missing is the
    training median, and the result says so (`predicts`, `assumed`, `ignored`). A model
    without demonstrated within-channel skill gets `no_skill_note` and `tie`.
    """
    titles = list(titles) or [""]
    if len(images) != len(names):
        raise CompareError(f"{len(images)} images but {len(names)} names")
    if len(images) * len(titles) < 2:
        raise CompareError("need at least two candidates (images x titles) to compare")
    if study is not None and sae is None:
        raise CompareError("an SAE study needs the SAE it was made with (sae)")
    for message in predictor.missing_inputs(titles):
        log.warning(message)
    model = predictor.model
    pairs, blocks = predictor.combinations(images, titles, context)
    pred = predictor.predict(blocks)  # (N,)
    pairwise = predictor.pairwise if pairwise is None else pairwise
    best, beats, extra = _probabilities(model, pred, blocks, pairs, names, pairwise)
    if (report := predictor.out_of_range(blocks)) is not None:
        extra["warning"] = report.message() or ""
    order = np.lexsort((-pred, -best))
    cands = _candidates(predictor, blocks, pred, best, order, pairs, names)
    descs, how = _descriptors(model, blocks, images, names, len(titles), top_features)
    descs = _with_effects(predictor, blocks, int(order[0]), descs)
    diffs = sae_diffs(sae.latents(images), study, top_features) if study is not None else ()
    p = tuple(tuple(float(beats[a, b]) for b in order) for a in order)
    notes = predictor.notes(WITHIN_CHANNEL, context)
    extra.update(notes.context.to_json_dict(), no_skill_note=notes.no_skill)
    extra["tie"] = bool(notes.no_skill) or extra.get("reliable") is False
    return Comparison(
        cands, p, descs, diffs, tuple(names), predictor.target, predictor.coverage, how, **extra
    )


def best_chances(predictor: LoadedPredictor, pred: np.ndarray) -> tuple[np.ndarray, str]:
    """(P(best) (N,), the note to show): from the model's calibrated difference model when it
    has one, else independent residuals and `FALLBACK_NOTE`. For ranked candidates without
    blocks kept (the bot), by the same rule `compare` uses."""
    pairwise = predictor.pairwise
    if pairwise is None:
        return p_best(pred, residual_atoms(predictor.model)), FALLBACK_NOTE
    from thumbview.predict import pairwise as pw

    return pw.p_best(pred, pairwise.calibration_.sigma), ""


def _probabilities(model, pred, blocks, pairs, names, pairwise):
    """(P(best) (N,), P(beats) (N, N), extra Comparison fields) from the best method available."""
    if pairwise is None:
        atoms = residual_atoms(model)
        return p_best(pred, atoms), p_beats_matrix(pred, atoms), {"note": FALLBACK_NOTE}
    from thumbview.predict import pairwise as pw

    sigma = pairwise.calibration_.sigma
    labels = [f"{names[i]}" + (f" + {t!r}" if t else "") for i, t in pairs]
    said = pw.verdict(pred, pairwise.calibration_, pairwise.fold_predictions(blocks), labels)
    beats = pw.p_beats(pred[:, None] - pred[None, :], sigma)  # (N, N)
    extra = {"assumption": pw.METHOD, "reliable": said.reliable, "verdict": said.text}
    return pw.p_best(pred, sigma), beats, extra


def _candidates(predictor, blocks, pred, best, order, pairs, names) -> tuple[Candidate, ...]:
    """The candidates in `order`, with views (or multipliers) and the conformal interval."""
    lo, hi = predictor.intervals(blocks)  # at the model's calibrated coverage
    scale = to_views(predictor.target)
    return tuple(
        Candidate(
            names[pairs[k][0]],
            pairs[k][0],
            pairs[k][1],
            float(pred[k]),
            scale(pred[k]),
            scale(lo[k]),
            scale(hi[k]),
            float(best[k]),
        )
        for k in order
    )


def _descriptors(model, blocks, images, names, n_titles: int, top: int):
    """Visual descriptors per image: the model's block (scaled by its sd) or computed here."""
    if "visual" in blocks:
        values = np.asarray(blocks["visual"])[::n_titles]  # (I, F) one row per image
        return descriptor_diffs(values, model.block_scale_["visual"], names, top), (
            "model feature sd"
        )
    values = np.stack([describe(np.asarray(img.convert("RGB"))) for img in images])  # (I, F)
    scale = np.maximum(np.abs(values).mean(axis=0), 1e-9)
    return descriptor_diffs(values, scale, names, top), "relative to the mean magnitude"


def _with_effects(predictor, blocks, row: int, descs) -> tuple[DescriptorDiff, ...]:
    """Each descriptor's effect on the winner's prediction, low -> high (see `DescriptorDiff`)."""
    if "visual" not in blocks or not descs:
        return descs
    out = []
    for d in descs:
        f = FEATURE_NAMES.index(d.feature)
        pair = {name: np.repeat(X[row : row + 1], 2, axis=0) for name, X in blocks.items()}
        pair["visual"] = np.array(pair["visual"], dtype=np.float64)  # (2, F)
        pair["visual"][:, f] = (min(d.values), max(d.values))
        low, high = predictor.predict(pair)  # (2,)
        out.append(replace(d, effect=float(high - low)))
    return tuple(out)


def compare_files(
    model_dir: Path,
    image_paths: Sequence[Path | str],
    titles: Sequence[str] = ("",),
    sae_dir: Path | None = None,
    study_dir: Path | None = None,
    context: dict | None = None,
) -> tuple[Comparison, list[Image.Image]]:
    """`compare` from files (for the CLI); returns the decoded images for `save_side_by_side`.

    `sae_dir` may be the folder given to `sae train --out`; the study defaults to the one
    inside it (see `thumbview.layout.find_study_dir`).
    """
    predictor = LoadedPredictor.load(model_dir)
    sae = SaeEncoder.load(sae_dir) if sae_dir is not None else None
    images = [load_image(p) for p in image_paths]
    study = None
    study_dir = study_dir or (find_study_dir(sae_dir) if sae_dir is not None else None)
    if study_dir is not None and sae is not None:
        from thumbview.sae.explain import load_study

        study = load_study(study_dir)
    names = [Path(p).name for p in image_paths]
    return compare(predictor, images, names, titles, study, sae, context=context), images


def save_side_by_side(comparison: Comparison, images: Sequence[Image.Image], path: Path) -> Path:
    """PNG: each candidate (ranked) with predicted views, interval and P(best)."""
    cell_w, cell_h, text_h = 320, 180, 84
    n = len(comparison.candidates)
    sheet = Image.new("RGB", (n * cell_w, cell_h + text_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    target = comparison.target
    for k, c in enumerate(comparison.candidates):
        still = fit_frame(
            np.asarray(images[c.image_index].convert("RGB")), (cell_w - 6, cell_h - 6), "letterbox"
        )
        sheet.paste(still, (k * cell_w + 3, 3))
        lines = (
            shorten(f"#{k + 1} {c.image}", 44),
            shorten(c.title or "(no title)", 44),
            f"{format_views(c.views, target)} views ({format_range(c.low, c.high, target)})",
            f"{comparison.interval_label}; P(best) = {100 * c.p_best:.1f}%",
        )
        for j, line in enumerate(lines):
            draw.text((k * cell_w + 6, cell_h + 2 + 20 * j), line, fill=(0, 0, 0), font=font)
    return atomic_write(path, lambda tmp: sheet.save(tmp, "PNG"))
