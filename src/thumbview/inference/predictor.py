"""`LoadedPredictor`: a saved model folder, loaded once, turned into predictions.

One object holds the fitted predictor and the encoders rebuilt with the settings it was
trained with, so every consumer computes features and intervals the same way, at the
model's own configured coverage (never a hard-coded 80%).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from thumbview.embed.base import Encoder
from thumbview.embed.registry import get_encoder
from thumbview.finetune.model import is_finetuned
from thumbview.predict.model import PredictorError, ViewPredictor
from thumbview.predict.target import to_views

log = logging.getLogger(__name__)

ENCODERS_FILE = "encoders.json"


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
    coverage: float = 0.8


@dataclass
class LoadedPredictor:
    """A fitted `ViewPredictor` with its encoders; build with `LoadedPredictor.load(dir)`."""

    model: ViewPredictor
    encoders: dict[str, Encoder]
    model_dir: Path

    @classmethod
    def load(cls, model_dir: str | Path) -> LoadedPredictor:
        """The predictor and freshly built encoders with the settings it was trained with."""
        model_dir = Path(model_dir)
        if is_finetuned(model_dir):  # `thumbview finetune`: a network reading its own blocks
            from thumbview.finetune.model import load_finetuned

            return cls(*load_finetuned(model_dir), model_dir)
        model = ViewPredictor.load(model_dir)
        saved = _read_encoder_specs(model_dir)
        encoders = {}
        for name in model.config.encoders:
            if name not in saved:
                raise PredictorError(f"{model_dir / ENCODERS_FILE} has no entry for {name!r}")
            encoders[name] = get_encoder(name, **saved[name].get("options", {}))
            if json.loads(json.dumps(encoders[name].spec())) != saved[name].get("spec"):
                log.warning("encoder %s differs from the one the model was trained with", name)
        return cls(model, encoders, model_dir)

    # ----- what the model is ------------------------------------------------------------------
    @property
    def coverage(self) -> float:
        """The interval coverage the model was trained (calibrated) for."""
        return float(self.model.config.coverage)

    @property
    def target(self) -> str:
        return self.model.config.target

    # ----- features -----------------------------------------------------------------------------
    def blocks(self, images: Sequence[Image.Image], titles: Sequence[str]) -> dict[str, np.ndarray]:
        """{encoder: (N, D)} for N (image, title) rows given side by side (equal lengths)."""
        if len(images) != len(titles):
            raise PredictorError(f"{len(images)} images but {len(titles)} titles")
        return {
            name: enc.encode(list(titles) if enc.modality == "text" else list(images))
            for name, enc in self.encoders.items()
        }

    def combinations(
        self, images: Sequence[Image.Image], titles: Sequence[str]
    ) -> tuple[list[tuple[int, str]], dict[str, np.ndarray]]:
        """Every image x title, image-major: ([(image index, title)], blocks one row per pair).

        One definition of the order, shared by predict, compare and the web page.
        """
        pairs = [(i, t) for i in range(len(images)) for t in (list(titles) or [""])]
        return pairs, self.blocks([images[i] for i, _ in pairs], [t for _, t in pairs])

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
    ) -> list[Prediction]:
        """Every image x title combination with its interval, in `combinations` order."""
        pairs, blocks = self.combinations(images, titles)
        point, (lo, hi) = self.predict(blocks), self.intervals(blocks)
        scale = to_views(self.target)
        return [
            Prediction(
                names[i], t, float(p), scale(p), scale(a), scale(b), self.target, self.coverage
            )
            for (i, t), p, a, b in zip(pairs, point, lo, hi, strict=True)
        ]


def _read_encoder_specs(model_dir: Path) -> dict:
    path = model_dir / ENCODERS_FILE
    if not path.exists():
        raise PredictorError(
            f"{model_dir} has no {ENCODERS_FILE}; was it written by `thumbview train`?"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise PredictorError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        raise PredictorError(f"{path} must be an object of {{encoder: {{options, spec}}}}")
    return saved
