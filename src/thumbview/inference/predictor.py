"""`LoadedPredictor`: a saved model folder, loaded once, turned into predictions.

One object holds the fitted predictor and the encoders rebuilt with the settings it was
trained with, so every consumer computes features and intervals the same way, at the
model's own configured coverage (never a hard-coded 80%).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from thumbview.data.images import load_image
from thumbview.embed.base import Encoder
from thumbview.inference.kinds import DEFAULT_KIND, kind_for, model_format
from thumbview.predict.card import (
    POOLED,
    WITHIN_CHANNEL,
    ContextNote,
    HeldOutSkill,
    ModelCard,
    fill_context,
    legacy_skill,
)
from thumbview.predict.drift import DriftReport, TrainingRange
from thumbview.predict.model import PredictorError, ViewPredictor
from thumbview.predict.target import to_views
from thumbview.units import format_range, format_views, interval_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One thumbnail x title.

    log10: the prediction in target units (log10 views, or log10 ratio to the channel).
    views, low, high: the point and the central `coverage` interval as view counts (log10
    target) or as multipliers of the channel's typical views (channel-relative target).
    """

    image: str
    title: str
    log10: float
    views: float
    low: float
    high: float
    target: str
    coverage: float
    warning: str = ""  # this row's out-of-range line (`TrainingRange.row_messages`), "" inside

    def __post_init__(self) -> None:
        if not all(map(math.isfinite, (self.log10, self.views, self.low, self.high))):
            raise PredictorError(f"{self.image}: the model gave a non-finite prediction")

    @property
    def interval_label(self) -> str:
        """'90% interval': the level this prediction's interval was calibrated for."""
        return interval_label(self.coverage)

    def formatted(self) -> tuple[str, str]:
        """('3.5K', '1.2K - 9.8K'): the prediction and its interval as people read them."""
        return format_views(self.views, self.target), format_range(self.low, self.high, self.target)


@dataclass(frozen=True)
class ModelNotes:
    """What a result must say about the model beside its numbers (`LoadedPredictor.notes`).

    context: what is predicted (views after how long) and what was assumed or ignored;
    no_skill: one line when the model showed no skill for the question asked, else "".
    """

    context: ContextNote
    no_skill: str = ""

    def lines(self) -> list[str]:
        return [*self.context.lines(), *([self.no_skill] if self.no_skill else [])]

    def to_json_dict(self) -> dict[str, str]:
        return {**self.context.to_json_dict(), "no_skill_note": self.no_skill}


@dataclass
class LoadedPredictor:
    """A fitted `ViewPredictor` with its encoders; build with `LoadedPredictor.load(dir)`."""

    model: ViewPredictor
    encoders: dict[str, Encoder]
    model_dir: Path
    training_range: TrainingRange | None = None  # warns when inputs are unlike the training set
    context: dict | None = None  # what a "meta" encoder (context) reads: published, subscribers
    card: ModelCard | None = None  # training context and held-out verdict (None: old folder)

    @classmethod
    def load(cls, model_dir: str | Path) -> LoadedPredictor:
        """The predictor and freshly built encoders with the settings it was trained with.

        The folder's kind (its config.json `format`) picks the loader (`inference.kinds`)."""
        model_dir = Path(model_dir)
        model, encoders, training_range = kind_for(model_dir).load_folder(model_dir)
        card = ModelCard.load(model_dir)
        if card is None:
            log.info("%s has no card.json: fixed context values, skill from eval.json", model_dir)
        return cls(model, encoders, model_dir, training_range, card=card)

    @staticmethod
    def check(model_dir: str | Path) -> None:
        """Validate a model folder without building its encoders (no model weights load).

        Commands call this first so that a wrong `--model` fails in a second, before a
        dataset is verified, a video decoded or a server URL printed.
        """
        model_dir = Path(model_dir)
        kind_for(model_dir).check_folder(model_dir)

    # ----- what the model is ------------------------------------------------------------------
    @functools.cached_property
    def pairwise(self):
        """The model's calibrated difference model (`predict.pairwise.PairwiseModel`), or
        None for models trained before it existed. Loaded on first use: only comparisons
        need it, and it brings scipy."""
        from thumbview.predict.pairwise import PairwiseModel

        return PairwiseModel.load(self.model_dir) if self.model_dir.is_dir() else None

    @property
    def kind(self) -> str:
        """The folder's model kind (config.json `format`), e.g. "thumbview-finetuned"."""
        return model_format(self.model_dir) or DEFAULT_KIND

    @property
    def coverage(self) -> float:
        """The interval coverage the model was trained (calibrated) for."""
        return float(self.model.config.coverage)

    @property
    def target(self) -> str:
        return self.model.config.target

    @property
    def interval_label(self) -> str:
        """'90% interval' for a model calibrated at 90%: every table and page uses this."""
        return interval_label(self.coverage)

    @property
    def uses_titles(self) -> bool:
        """True when one of the model's encoders reads the title."""
        return any(enc.modality == "text" for enc in self.encoders.values())

    def missing_inputs(self, titles: Sequence[str]) -> list[str]:
        """What the model uses but was not given, and what is assumed instead (one line each).

        A title+visual model scored without a title predicts as if the title were empty,
        which usually lowers the prediction: people must be told, not left to guess.
        """
        if self.uses_titles and not any(t.strip() for t in titles):
            names = ", ".join(n for n, e in self.encoders.items() if e.modality == "text")
            return [
                f"the model uses the title ({names}) but none was given: predicted as if the "
                "title were empty, which usually lowers the prediction; pass --title"
            ]
        return []

    # ----- context and skill ----------------------------------------------------------------
    @property
    def reads_context(self) -> bool:
        """True when one of the model's encoders reads the context (date, subscribers, ...)."""
        return any(enc.modality == "meta" for enc in self.encoders.values())

    def filled_context(self, context: dict | None = None) -> tuple[dict, ContextNote]:
        """(what the context encoder reads, the note on what was assumed or ignored).

        `context` (default: `self.context`) is what the user gave (`context_from_options`);
        missing values come from the training data's medians (`predict.card.fill_context`).
        """
        from thumbview.embed.context import FILL

        given = self.context if context is None else context
        relative = self.target == "channel-relative"
        trained = None if self.card is None else self.card.context
        return fill_context(given, trained, self.reads_context, FILL, relative)

    @functools.cached_property
    def skill(self) -> HeldOutSkill:
        """The held-out verdict (card.json; for older folders, eval.json and pairwise.json)."""
        if self.card is not None:
            return self.card.skill
        pairwise = self.pairwise
        return legacy_skill(
            self.model_dir, None if pairwise is None else pairwise.calibration_.skilful
        )

    def notes(self, question: str = POOLED, context: dict | None = None) -> ModelNotes:
        """What to say beside a result: `question` is `predict.card.POOLED` (how many views)
        or `WITHIN_CHANNEL` (which of one video's candidates), whose skill must be shown."""
        if question not in (POOLED, WITHIN_CHANNEL):
            raise ValueError(f"unknown question {question!r}")
        return ModelNotes(self.filled_context(context)[1], self.skill.note(question))

    # ----- features -----------------------------------------------------------------------------
    def blocks(
        self, images: Sequence[Image.Image], titles: Sequence[str], context: dict | None = None
    ) -> dict[str, np.ndarray]:
        """{encoder: (N, D)} for N (image, title) rows given side by side (equal lengths).

        `context`: the video's publication date, subscribers, channel size (default:
        `self.context`); what is missing is the training data's median (`filled_context`)."""
        if len(images) != len(titles):
            raise PredictorError(f"{len(images)} images but {len(titles)} titles")
        return {
            name: enc.encode(self._inputs(enc, images, titles, context))
            for name, enc in self.encoders.items()
        }

    def _inputs(self, enc: Encoder, images, titles, context: dict | None) -> list:
        """What one encoder reads: titles, images, or the context dict (same for every row)."""
        if enc.modality == "text":
            return list(titles)
        if enc.modality != "meta":
            return list(images)
        filled, _ = self.filled_context(context)
        return [dict(filled) for _ in images]

    def combinations(
        self, images: Sequence[Image.Image], titles: Sequence[str], context: dict | None = None
    ) -> tuple[list[tuple[int, str]], dict[str, np.ndarray]]:
        """Every image x title, image-major: ([(image index, title)], blocks one row per pair).

        One definition of the order, shared by predict, compare and the web page.
        """
        pairs = [(i, t) for i in range(len(images)) for t in (list(titles) or [""])]
        rows = [images[i] for i, _ in pairs]
        return pairs, self.blocks(rows, [t for _, t in pairs], context)

    # ----- predictions --------------------------------------------------------------------------
    def predict(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """Point predictions (N,) in target units."""
        return self.model.predict(blocks)

    def intervals(self, blocks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each (N,), at the model's configured coverage."""
        return self.model.predict_interval(blocks, self.coverage)

    def predict_images(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        titles: Sequence[str] = ("",),
        context: dict | None = None,
    ) -> list[Prediction]:
        """Every image x title combination with its interval, in `combinations` order."""
        for message in self.missing_inputs(list(titles)):
            log.warning(message)
        pairs = [(i, t) for i in range(len(images)) for t in (list(titles) or [""])]
        return self.predict_rows(
            [images[i] for i, _ in pairs],
            [names[i] for i, _ in pairs],
            [t for _, t in pairs],
            context,
        )

    def predict_rows(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        titles: Sequence[str],
        context: dict | None = None,
    ) -> list[Prediction]:
        """One prediction per (image, name, title) row given side by side (the web batcher);
        `context` is shared by every row (see `blocks`)."""
        return self.predictions(self.blocks(images, titles, context), names, titles)

    def predictions(
        self, blocks: dict[str, np.ndarray], names: Sequence[str], titles: Sequence[str]
    ) -> list[Prediction]:
        """One prediction per row of `blocks` ({encoder: (N, D)}, from `blocks`), for callers
        that keep the features for more (the bot's verdict) instead of computing them twice;
        logs the out-of-range line as `predict_rows` does."""
        point, (lo, hi) = self.predict(blocks), self.intervals(blocks)  # (N,) each
        report = self.out_of_range(blocks, predicted=point)
        if report is not None and (said := report.message()):
            log.warning("%s", said)
        rows = [""] * len(point)
        if report is not None:
            rows = self.training_range.row_messages(blocks, point)
        scale = to_views(self.target)
        return [
            Prediction(n, t, float(p), scale(p), scale(a), scale(b), self.target, self.coverage, w)
            for n, t, p, a, b, w in zip(names, titles, point, lo, hi, rows, strict=True)
        ]

    def out_of_range(
        self, blocks: dict[str, np.ndarray], y=None, predicted=None
    ) -> DriftReport | None:
        """Which rows and features lie outside the training range (`TrainingRange.check`,
        a DriftReport), or None for models without a recorded range: the one check that
        predict, compare, the web page and the bot's reward all use. It includes whether
        the model extrapolates (its predictions (N,), computed when not given, beyond those
        it made for its training rows)."""
        if self.training_range is None:
            return None
        point = self.predict(blocks) if predicted is None else predicted
        return self.training_range.check(blocks, y, point)

    def outside(self, blocks: dict[str, np.ndarray], predicted=None) -> np.ndarray:
        """(N,) True where a row lies outside the training range (`out_of_range`'s rows)."""
        if self.training_range is None:
            return np.zeros(len(next(iter(blocks.values()), ())), dtype=bool)
        point = self.predict(blocks) if predicted is None else predicted
        return self.training_range.features_outside(blocks, point)


# ----- from image files --------------------------------------------------------------------
def predict_files(
    model_dir: Path,
    images: Sequence[Path | str],
    titles: Sequence[str] = ("",),
    context: dict | None = None,
) -> list[Prediction]:
    """Every image x title combination, with the model's interval at its own coverage.

    `context`: what a model with the `context` encoder reads (`context_from_options`)."""
    loaded = LoadedPredictor.load(model_dir)  # a bad model folder is reported before images
    loaded.context = context
    opened = [load_image(p) for p in images]
    return loaded.predict_images(opened, [str(p) for p in images], titles)
