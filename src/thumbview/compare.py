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
import textwrap
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
from thumbview.inference.verdict import (
    CHANCE_BEST,
    FALLBACK_NOTE,
    INDEPENDENCE,
    N_ATOMS,
    NO_CHANCE_BEST,
    RankVerdict,
    chance_best_note,
    chance_best_shown,
    chance_text,
    chances,
    judge,
    p_beats_matrix,
    p_best,
    rank_labels,
    residual_atoms,
)
from thumbview.layout import find_study_dir
from thumbview.predict.card import WITHIN_CHANNEL
from thumbview.predict.target import to_views
from thumbview.units import format_range, format_views, interval_label, shorten

log = logging.getLogger(__name__)

__all__ = [
    "CHANCE_BEST",
    "FALLBACK_NOTE",
    "INDEPENDENCE",
    "NO_CHANCE_BEST",
    "N_ATOMS",
    "Candidate",
    "CompareError",
    "Comparison",
    "DescriptorDiff",
    "SaeDiff",
    "Summary",
    "best_chances",
    "compare",
    "compare_files",
    "descriptor_diffs",
    "p_beats_matrix",
    "p_best",
    "residual_atoms",
    "sae_diffs",
    "save_side_by_side",
]


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
    highest: str  # the image(s) at the largest value, joined with ", " when several are equal
    # change in the leader's predicted log10 views when this descriptor goes from the lowest
    # to the highest value among the images (its other features kept); None when the model
    # does not read the descriptors (no `visual` encoder)
    effect: float | None = None
    note: str = ""  # `reading(names)`: where it is highest or lowest, and whether it helps

    @property
    def helps(self) -> bool | None:
        """More of it raises the prediction (True), lowers it (False), or is not weighed."""
        return None if not self.effect else self.effect > 0

    def reading(self, names: Sequence[str]) -> str:
        """'highest in a.jpg and c.jpg; more of it tends to help (x1.12 views ...)'.

        Equal values are named together (never "highest in A" when A, B and C are equal);
        the side named is the smaller group. Help or hurt is the model's own sign."""
        v = np.asarray(self.values, dtype=np.float64)  # (I,)
        near = 0.02 * (v.max() - v.min())  # closer than this to an extreme counts as equal
        top, low = (_at(v, v.max(), names, near), _at(v, v.min(), names, near))
        where = f"highest in {_join(top)}" if len(top) <= len(low) else f"lowest in {_join(low)}"
        if len(v) > 2 and len(top) == len(low) == 1:
            where = f"highest in {top[0]}, lowest in {low[0]}"
        if self.effect is None:
            return f"{where}; the model does not read it directly"
        if self.helps is None:
            return f"{where}; the model gives it no weight"
        change = f"x{10**self.effect:.2f} predicted views from the lowest to the highest here"
        return f"{where}; more of it tends to {'help' if self.helps else 'hurt'} ({change})"


def _at(values: np.ndarray, level: float, names: Sequence[str], near: float = 0.0) -> list[str]:
    """The names whose value equals `level` (to float precision, or within `near`)."""
    same = np.isclose(values, level, rtol=1e-6, atol=max(near, 1e-9))
    return [names[i] for i in np.flatnonzero(same)]


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


@dataclass(frozen=True)
class SaeDiff:
    """An SAE latent whose activation differs between images; ratio/q from the study."""

    latent: int
    activations: tuple[float, ...]
    ratio: float | None
    q: float | None


@dataclass(frozen=True)
class Summary:
    """One thumbnail across every title (or one title across every thumbnail).

    views: the typical prediction (geometric mean of its candidates; views or multiplier);
    low, high: its lowest and highest candidate's point prediction; p_best: the chance the
    best candidate uses it (the sum of its candidates' chances)."""

    name: str
    views: float
    low: float
    high: float
    p_best: float


@dataclass(frozen=True)
class Comparison:
    """Candidates ranked by P(best); `p_beats[i][j]` = P(candidate i beats candidate j).

    `reliable`, `verdict` and `tied` are the one verdict (`inference.verdict.RankVerdict`)
    that the CLI table, the PNG and the web page all render: when `reliable` is False no
    winner is named anywhere and the first `tied` candidates share rank "=1".

    Chance best (`Candidate.p_best`, `Summary.p_best`) is shown only while some candidate is
    ranked apart (`shows_chance_best`): when every one is "=1" (a model without demonstrated
    skill, or none told apart) every renderer shows "-" and `chance_best_note` says why. The
    JSON keeps the numbers (the model's replayed chances, for reproducibility) beside
    `chance_best_shown` (false: not a ranking; show "-") and `chance_best_note` (the line to
    show under the ranking).
    """

    candidates: tuple[Candidate, ...]
    p_beats: tuple[tuple[float, ...], ...]
    descriptors: tuple[DescriptorDiff, ...]
    sae: tuple[SaeDiff, ...]
    image_names: tuple[str, ...]
    target: str
    coverage: float
    descriptor_scale: str  # "model feature sd" | "relative to the mean magnitude"
    assumption: str = INDEPENDENCE
    # Whether the leader is reliably ahead (None: a result saved before every comparison
    # carried a verdict), and the sentence to show instead of a bare percentage.
    reliable: bool | None = None
    verdict: str = ""
    warning: str = ""  # inputs far outside the training range, in one line ("" when none)
    note: str = ""  # how P(beats) was computed, when the user must know (FALLBACK_NOTE)
    tied: int = 0  # how many candidates from the top are not told apart (1: a clear leader)
    by_image: tuple[Summary, ...] = ()  # per thumbnail, with several titles
    by_title: tuple[Summary, ...] = ()  # per title, with several thumbnails
    chance_best: str = CHANCE_BEST  # what "chance best" means, in words
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

    @property
    def winner(self) -> Candidate | None:
        """The leader, only when it is reliably ahead; None whenever the verdict is a tie."""
        return self.candidates[0] if self.reliable else None

    def rank_labels(self) -> list[str]:
        """'1', '2', ... with a clear leader; '=1' for each tied candidate otherwise."""
        tied = max(self.tied, 2) if self.reliable is False else 1
        return rank_labels(len(self.candidates), tied, [c.log10 for c in self.candidates])

    @property
    def shows_chance_best(self) -> bool:
        """False when every candidate shares rank "=1" (no demonstrated skill, `as_tie`, or
        none told apart): their chances of being best would rank noise, so none is shown. A
        partial tie keeps them: they show how far behind the candidates ranked apart are."""
        n, no_skill = len(self.candidates), self.no_skill_note
        return chance_best_shown(n, self.reliable, self.tied, no_skill)

    @property
    def chance_best_note(self) -> str:
        """The line under the ranking: what chance best means, or why it is not shown."""
        return chance_best_note(self.shows_chance_best, self.chance_best)

    def chance_text(self, p: float) -> str:
        """'55%' (a candidate's or a summary's chance best), or '-' when none is shown."""
        return chance_text(p, self.shows_chance_best)

    def as_tie(self, reason: str) -> Comparison:
        """Every candidate tied, for `reason` (e.g. the model showed no skill): no winner."""
        said = RankVerdict(False, self.verdict, self.tied, 0.5).forced_tie(
            reason, len(self.candidates)
        )
        return replace(self, reliable=False, verdict=said.text, tied=said.tied, tie=True)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["p_beats"] = [list(row) for row in self.p_beats]
        d["rank_labels"] = self.rank_labels()
        d["chance_best_shown"] = self.shows_chance_best
        d["chance_best_note"] = self.chance_best_note
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
            tied=d.get("tied", 0),
            by_image=tuple(Summary(**x) for x in d.get("by_image", ())),
            by_title=tuple(Summary(**x) for x in d.get("by_title", ())),
            chance_best=d.get("chance_best", CHANCE_BEST),
            **{k: d.get(k, "") for k in ("predicts", "assumed", "ignored", "no_skill_note")},
            tie=bool(d.get("tie", False)),
        )


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
            ", ".join(_at(values[:, f], values[:, f].max(), names)),
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
    tie_reason: str = "",
    context: dict | None = None,
) -> Comparison:
    """Every image x title, ranked by P(best), with P(A beats B) and the biggest differences.

    The predictor and the SAE are loaded once by the caller (`LoadedPredictor.load`,
    `SaeEncoder.load`): a server compares many uploads with one copy of each. Intervals are
    at the model's own calibrated coverage. P(beats) and P(best) come from the model's
    calibrated difference model (`predictor.pairwise`, see `predict.pairwise`), and the
    result carries the one verdict (`inference.verdict.judge`) on whether the leader is
    reliably ahead; models trained before it existed fall back to independent residual
    draws, and `note` says so. `tie_reason` forces "no reliable difference"; a model without
    demonstrated within-channel skill forces it too, with its `no_skill_note`. `pairwise`
    overrides the model's own (tests). `context`: the video's publication date, subscribers
    and channel size (`context_from_options`), shared by every candidate; what is missing is
    the training median, and the result says so (`predicts`, `assumed`, `ignored`).
    """
    titles = _checked(images, names, list(titles) or [""], study, sae)
    for message in predictor.missing_inputs(titles):
        log.warning(message)
    pairs, blocks = predictor.combinations(images, titles, context)
    pred = predictor.predict(blocks)  # (N,)
    notes = predictor.notes(WITHIN_CHANNEL, context)
    tie_reason = tie_reason or notes.no_skill
    if pairwise is not None:
        predictor = replace(predictor)  # a copy: the override must not stick to the caller's
        predictor.__dict__["pairwise"] = pairwise
    odds = chances(predictor, pred)
    order = np.lexsort((-pred, -odds.best))
    labels = [f"{names[i]}" + (f" + {t!r}" if t else "") for i, t in pairs]
    said = judge(predictor, pred, blocks, labels, order, odds.beats, tie_reason)
    report = predictor.out_of_range(blocks, predicted=pred)
    cands = _candidates(predictor, blocks, pred, odds.best, order, pairs, names)
    descs, how = _descriptors(predictor.model, blocks, images, names, len(titles), top_features)
    descs = _with_effects(predictor, blocks, int(order[0]), descs)
    descs = tuple(replace(d, note=d.reading(names)) for d in descs)
    diffs = sae_diffs(sae.latents(images), study, top_features) if study is not None else ()
    p = tuple(tuple(float(odds.beats[a, b]) for b in order) for a in order)
    return Comparison(
        cands, p, descs, diffs, tuple(names), predictor.target, predictor.coverage, how,
        assumption=odds.assumption, reliable=said.reliable, verdict=said.text, tied=said.tied,
        warning=(report.message() or "") if report is not None else "", note=odds.note,
        by_image=_summaries(cands, "image", predictor.target) if len(titles) > 1 else (),
        by_title=_summaries(cands, "title", predictor.target) if len(images) > 1 else (),
        **notes.context.to_json_dict(), no_skill_note=notes.no_skill,
        tie=bool(notes.no_skill) or said.reliable is False,
    )  # fmt: skip


def _checked(images, names, titles: list[str], study, sae) -> list[str]:
    """The titles, once the inputs make a comparison (CompareError in words otherwise)."""
    if len(images) != len(names):
        raise CompareError(f"{len(images)} images but {len(names)} names")
    if len(images) * len(titles) < 2:
        raise CompareError("need at least two candidates (images x titles) to compare")
    if study is not None and sae is None:
        raise CompareError("an SAE study needs the SAE it was made with (sae)")
    return titles


def best_chances(predictor: LoadedPredictor, pred: np.ndarray) -> tuple[np.ndarray, str]:
    """(P(best) (N,), the note to show): from the model's calibrated difference model when it
    has one, else independent residuals and `FALLBACK_NOTE`. For ranked candidates without
    blocks kept, by the same rule `compare` uses."""
    odds = chances(predictor, np.asarray(pred, dtype=np.float64))
    return odds.best, odds.note


def _summaries(cands: Sequence[Candidate], key: str, target: str) -> tuple[Summary, ...]:
    """Per thumbnail (key "image") or per title: typical prediction and share of P(best)."""
    scale, out = to_views(target), []
    for name in dict.fromkeys(getattr(c, key) for c in cands):  # first-seen (ranked) order
        mine = [c for c in cands if getattr(c, key) == name]
        logs = [c.log10 for c in mine]
        out.append(Summary(name, scale(float(np.mean(logs))), scale(min(logs)), scale(max(logs)),
                           float(sum(c.p_best for c in mine))))  # fmt: skip
    return tuple(out)


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


# ----- the picture ---------------------------------------------------------------------------
GREEN, AMBER, RED, INK, GREY = (
    (214, 240, 218),
    (255, 236, 196),
    (150, 20, 20),
    (20, 20, 20),
    (90, 90, 90),
)
PNG_COLUMNS, CELL_W, CELL_H, PAD = 3, 420, 236, 12


def save_side_by_side(comparison: Comparison, images: Sequence[Image.Image], path: Path) -> Path:
    """PNG readable at a glance: the verdict (and the range warning) on top, then each
    candidate in ranked order ('=1' when tied) with views, interval and chance best, and
    per-thumbnail / per-title summaries with several of each. At most 3 columns."""
    fonts = {size: ImageFont.load_default(size=size) for size in (16, 20, 26)}
    width = PNG_COLUMNS * CELL_W if len(comparison.candidates) > 2 else 2 * CELL_W
    head = _png_heading(comparison, width, fonts)
    cells = _png_cells(comparison, images, width, fonts)
    foot = _png_summaries(comparison, width, fonts)
    sheet = Image.new("RGB", (width, sum(p.height for p in (head, cells, foot))), "white")
    y = 0
    for part in (head, cells, foot):
        sheet.paste(part, (0, y))
        y += part.height
    return atomic_write(path, lambda tmp: sheet.save(tmp, "PNG"))


def _wrapped(text: str, font, width: int) -> list[str]:
    """`text` in lines no wider than `width` pixels (by the font's own average width)."""
    per_char = max(font.getlength("abcdefghij klmnopqrstuvwxyz") / 27, 1.0)
    return textwrap.wrap(text, max(int(width / per_char), 10)) or [""]


def _text_block(lines: Sequence[tuple[str, Any, tuple]], width: int, fill) -> Image.Image:
    """A band of `lines` ((text, font, colour)), each wrapped to `width`, on `fill`."""
    rows = [(w, f, c) for text, f, c in lines for w in _wrapped(text, f, width - 2 * PAD)]
    height = PAD + sum(int(f.size * 1.3) for _, f, _ in rows) + PAD
    band = Image.new("RGB", (width, height), fill)
    draw, y = ImageDraw.Draw(band), PAD
    for text, font, colour in rows:
        draw.text((PAD, y), text, fill=colour, font=font)
        y += int(font.size * 1.3)
    return band


def _png_heading(comparison: Comparison, width: int, fonts) -> Image.Image:
    """The verdict in large type (green: a leader; amber: a tie), then warnings and notes."""
    lines = [(text, fonts[size], colour) for text, size, colour in _heading_lines(comparison)]
    return _text_block(lines, width, GREEN if comparison.winner is not None else AMBER)


def _heading_lines(comparison: Comparison) -> list[tuple[str, int, tuple]]:
    """The PNG's heading as (text, font size, colour): verdict, warning, note, chance best."""
    winner = comparison.winner
    verdict = comparison.verdict or "the model cannot say how sure this ranking is"
    if winner is not None:
        title = f"Likely best: {winner.image}" + (f" + {winner.title!r}" if winner.title else "")
    else:
        title = "No reliable difference: too close to call"
    lines = [(title, 26, INK), (verdict, 20, INK)]
    if comparison.warning:
        lines.append((f"Warning: {comparison.warning}", 16, RED))
    if comparison.note:
        lines.append((f"Note: {comparison.note}", 16, GREY))
    lines.append((comparison.chance_best_note, 16, GREY))
    return lines


def _png_cells(comparison: Comparison, images, width: int, fonts) -> Image.Image:
    """Every candidate: its thumbnail and four lines of large text."""
    cols = width // CELL_W
    n, text_h = len(comparison.candidates), 4 * 26 + PAD
    rows = -(-n // cols)
    sheet = Image.new("RGB", (width, rows * (CELL_H + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (c, rank) in enumerate(
        zip(comparison.candidates, comparison.rank_labels(), strict=True)
    ):
        x, y = (k % cols) * CELL_W, (k // cols) * (CELL_H + text_h)
        rgb = np.asarray(images[c.image_index].convert("RGB"))
        sheet.paste(
            fit_frame(rgb, (CELL_W - 2 * PAD, CELL_H - PAD), "letterbox"), (x + PAD, y + PAD)
        )
        for j, (line, size) in enumerate(_cell_lines(comparison, c, rank)):
            draw.text((x + PAD, y + CELL_H + 26 * j), line, fill=INK, font=fonts[size])
    return sheet


def _cell_lines(comparison: Comparison, c: Candidate, rank: str) -> list[tuple[str, int]]:
    """The four (text, font size) lines under one candidate's thumbnail in the PNG."""
    target = comparison.target
    return [
        (shorten(f"{rank}  {c.image}", 34), 20),
        (shorten(c.title or "(no title)", 40), 16),
        (f"{format_views(c.views, target)} views ({format_range(c.low, c.high, target)})", 20),
        (f"{comparison.interval_label}; chance best {comparison.chance_text(c.p_best)}", 16),
    ]


def _png_summaries(comparison: Comparison, width: int, fonts) -> Image.Image:
    """Per thumbnail across the titles, per title across the thumbnails (when both vary)."""
    lines = []
    for heading, rows in (("Per thumbnail", comparison.by_image),
                          ("Per title", comparison.by_title)):  # fmt: skip
        if rows and comparison.by_image and comparison.by_title:
            lines.append((heading, fonts[20], INK))
            lines += [(_summary_line(s, comparison), fonts[16], INK) for s in rows]
    return _text_block(lines, width, "white") if lines else Image.new("RGB", (width, 0))


def _summary_line(s: Summary, comparison: Comparison) -> str:
    """'a.jpg: typically 3.1K views (2.8K to 3.5K); chance the best pair uses it 55%' ('-'
    in place of the chance when every candidate is tied)."""
    target = comparison.target
    return (
        f"{shorten(s.name or '(no title)', 48)}: typically {format_views(s.views, target)} views "
        f"({format_views(s.low, target)} to {format_views(s.high, target)}); "
        f"chance the best pair uses it {comparison.chance_text(s.p_best)}"
    )
