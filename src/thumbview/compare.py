"""Compare thumbnails (and titles): predicted views, intervals, P(A beats B), P(best), and why.

The predictive distribution of one candidate is its point prediction plus the model's
out-of-fold residual distribution, stored as quantiles at 101 levels. That quantile function
is read as piecewise linear and discretised into M = 100 equally likely atoms (the segment
midpoints, levels 0.005, 0.015, ..., 0.995), so every probability below is exact for that
discrete distribution, not a Monte Carlo estimate.

Residuals of two candidates are treated as INDEPENDENT. That is conservative: two thumbnails
for the same video share the channel and topic error, so the true P(A beats B) is further
from 0.5 than reported. It also gives exact symmetry: identical inputs get exactly 0.5, and
P(A > B) + P(B > A) = 1 (ties, which the discrete atoms make possible, count half).

"Why" reports the interpretable visual descriptors that differ most between the images, in
units of the model's own feature spread (its fitted `block_scale_` for the visual block), and,
with an SAE and its study, the SAE latents whose activations differ most with their view
ratios from the study.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from thumbview.data.images import load_image
from thumbview.embed.base import Encoder
from thumbview.embed.visual import FEATURE_NAMES, describe
from thumbview.frames.rank import fit_frame, format_views
from thumbview.predict.model import ViewPredictor
from thumbview.predict.target import to_views
from thumbview.predict.workflow import combination_blocks, load_model

log = logging.getLogger(__name__)

N_ATOMS = 100
INDEPENDENCE = "independent residuals (conservative; identical inputs give exactly 0.5)"


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
    model: ViewPredictor,
    encoders: dict[str, Encoder],
    images: Sequence[Image.Image],
    names: Sequence[str],
    titles: Sequence[str] = ("",),
    study=None,
    sae_dir: Path | None = None,
    coverage: float = 0.8,
    top_features: int = 5,
    sae_models: tuple | None = None,
    pairwise=None,
    training_range=None,
) -> Comparison:
    """Every image x title, ranked by P(best), with P(A beats B) and the biggest differences.

    `sae_models`: an already loaded (SparseAutoencoder, ClipEncoder) pair, so a server that
    holds them does not reload them per request; otherwise they are loaded from `sae_dir`.
    `pairwise`: the model's `PairwiseModel` (see `predict.pairwise`); with it P(beats) and
    P(best) come from the calibrated difference model and the result says whether the leader
    is reliably ahead; without it (older models) residuals are drawn independently.
    """
    titles = list(titles) or [""]
    if len(images) != len(names):
        raise CompareError(f"{len(images)} images but {len(names)} names")
    if len(images) * len(titles) < 2:
        raise CompareError("need at least two candidates (images x titles) to compare")
    if study is not None and sae_dir is None and sae_models is None:
        raise CompareError("an SAE study needs the SAE it was made with (sae_dir)")
    pairs, blocks = combination_blocks(encoders, images, titles)
    pred = model.predict(blocks)  # (N,)
    best, beats, extra = _probabilities(model, pred, blocks, pairs, names, pairwise)
    if training_range is not None:
        extra["warning"] = training_range.warning(blocks) or ""
    order = np.lexsort((-pred, -best))
    cands = _candidates(model, blocks, pred, best, order, pairs, names, coverage)
    descs, how = _descriptors(model, blocks, images, names, len(titles), top_features)
    sae = _sae(images, study, sae_models or sae_dir, top_features) if study is not None else ()
    p = tuple(tuple(float(beats[a, b]) for b in order) for a in order)
    return Comparison(
        cands, p, descs, sae, tuple(names), model.config.target, coverage, how, **extra
    )


def _probabilities(model, pred, blocks, pairs, names, pairwise):
    """(P(best) (N,), P(beats) (N, N), extra Comparison fields) from the best method available."""
    if pairwise is None:
        atoms = residual_atoms(model)
        return p_best(pred, atoms), p_beats_matrix(pred, atoms), {}
    from thumbview.predict import pairwise as pw

    sigma = pairwise.calibration_.sigma
    labels = [f"{names[i]}" + (f" + {t!r}" if t else "") for i, t in pairs]
    said = pw.verdict(pred, pairwise.calibration_, pairwise.fold_predictions(blocks), labels)
    beats = pw.p_beats(pred[:, None] - pred[None, :], sigma)  # (N, N)
    extra = {"assumption": pw.METHOD, "reliable": said.reliable, "verdict": said.text}
    return pw.p_best(pred, sigma), beats, extra


def _candidates(model, blocks, pred, best, order, pairs, names, coverage) -> tuple[Candidate, ...]:
    """The candidates in `order`, with views (or multipliers) and the conformal interval."""
    lo, hi = model.predict_interval(blocks, coverage)
    scale = to_views(model.config.target)
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


def _sae(images, study, sae_source, top: int) -> tuple[SaeDiff, ...]:
    from thumbview.sae.analyze import encode_sparse, load_sae_encoder

    sae, clip = sae_source if isinstance(sae_source, tuple) else load_sae_encoder(sae_source)
    z = encode_sparse(sae, clip.encode([img.convert("RGB") for img in images])).toarray()
    return sae_diffs(z, study, top)  # z: (I, d_sae)


def compare_files(
    model_dir: Path,
    image_paths: Sequence[Path | str],
    titles: Sequence[str] = ("",),
    sae_dir: Path | None = None,
    study_dir: Path | None = None,
) -> tuple[Comparison, list[Image.Image]]:
    """`compare` from files (for the CLI); returns the decoded images for `save_side_by_side`."""
    from thumbview.predict.drift import TrainingRange
    from thumbview.predict.pairwise import PairwiseModel

    model, encoders = load_model(model_dir)
    pairwise, limits = PairwiseModel.load(model_dir), TrainingRange.load(model_dir)
    images = [load_image(p) for p in image_paths]
    study = None
    if study_dir is not None:
        from thumbview.sae.explain import load_study

        study = load_study(study_dir)
    names = [Path(p).name for p in image_paths]
    found = compare(
        model,
        encoders,
        images,
        names,
        titles,
        study,
        sae_dir,
        pairwise=pairwise,
        training_range=limits,
    )
    return found, images


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
            f"#{k + 1} {c.image}"[:44],
            (c.title or "(no title)")[:44],
            f"{format_views(c.views, target)} views "
            f"({format_views(c.low, target)} - {format_views(c.high, target)})",
            f"P(best) = {100 * c.p_best:.1f}%",
        )
        for j, line in enumerate(lines):
            draw.text((k * cell_w + 6, cell_h + 2 + 20 * j), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
