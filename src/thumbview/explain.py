"""Why this thumbnail: the model's feature contributions, a fine-tuned network's occlusion
map, or the SAE features it activates (`thumbview explain`, the web page).

Each explanation reads a model loaded once through the inference layer and hands it to the
maths of its kind: `predict.explain.explain_row` (exact for ridge, integrated gradients for
an MLP), `finetune.explain.explain_image` (occlusion), `sae.explain.explain_latents` (the
study's numbers for the active latents). `source_kind` tells the three folders apart.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Literal

from PIL import Image

from thumbview.data.images import load_image
from thumbview.finetune.config import FORMAT as FINETUNED_FORMAT
from thumbview.inference import LoadedPredictor, SaeEncoder
from thumbview.inference.kinds import model_format
from thumbview.layout import MODEL_WEIGHTS, SAE_CONFIG, SAE_SUBDIR
from thumbview.predict.drift import format_feature
from thumbview.predict.explain import (
    ExplainError,
    PredictionExplanation,
    explain_row,
    interpretable_names,
)
from thumbview.sae.explain import FeatureExplanation, StudyIndex, explain_latents, load_study

log = logging.getLogger(__name__)

# Feature names that are jargon to a creator -> plain words shown next to them. Cyclic
# columns: weekday = 2 pi d / 7 (Monday = 0), hour = 2 pi h / 24 (UTC).
PLAIN = {
    "weekday (sin)": "day of the week as a point on a circle: 1 between Tuesday and Wednesday",
    "weekday (cos)": "day of the week as a point on a circle: 1 = Monday",
    "hour of day UTC (sin)": "upload time as a clock position: 1 = 06:00, -1 = 18:00 UTC",
    "hour of day UTC (cos)": "upload time as a clock position: 1 = midnight, -1 = noon UTC",
    "sharpness (log Laplacian variance)": "how crisp the edges are; higher is sharper",
    "luminance entropy (bits)": "how varied the brightness is",
    "colorfulness": "how vivid and varied the colours are",
    "edge density": "share of the picture that is outlines and detail",
}


def feature_label(name: str) -> str:
    """'hour of day UTC (cos): upload time as a clock position ...': jargon, explained."""
    return f"{name}: {PLAIN[name]}" if name in PLAIN else name


def feature_value(name: str, value: float) -> str:
    """'2020' for a year (never '2K'), days or years for an age, counts for subscribers."""
    return format_feature(name, value)


def source_kind(source: Path) -> Literal["finetuned", "model", "sae"]:
    """What `thumbview explain SOURCE` was given: a fine-tuned model, a model, or an SAE."""
    source = Path(source)
    if model_format(source) == FINETUNED_FORMAT:  # a network on pixels: an occlusion heatmap
        return "finetuned"
    if (source / MODEL_WEIGHTS).exists():
        return "model"
    if (source / SAE_CONFIG).exists() or (source / SAE_SUBDIR / SAE_CONFIG).exists():
        return "sae"
    raise ExplainError(
        f"{source} is neither a model folder ({MODEL_WEIGHTS}) nor an SAE folder "
        f"({SAE_CONFIG} in it or in {SAE_SUBDIR}/)"
    )


# ----- IO ---------------------------------------------------------------------------------
def explain_prediction(
    predictor: LoadedPredictor,
    image: Image.Image | str | Path,
    title: str = "",
    top: int = 8,
    context: dict | None = None,
) -> PredictionExplanation:
    """Explain a trained predictor's prediction for one thumbnail (+ title).

    `predictor` is loaded once by the caller (`LoadedPredictor.load(dir)`), so a server
    explains many images with one copy. Exact for a ridge head; approximate (integrated
    gradients) for an MLP head. `context`: the video's date and channel size, as predict
    takes it (default `predictor.context`). The explanation carries the row's out-of-range
    line (`warning`), the one predict shows for it."""
    if top < 1:
        raise ExplainError(f"top must be >= 1, got {top}")
    name = "" if isinstance(image, Image.Image) else str(image)
    picture = image.convert("RGB") if isinstance(image, Image.Image) else load_image(image)
    for message in predictor.missing_inputs([title]):
        log.warning(message)
    blocks = predictor.blocks([picture], [title], context)
    names = {n: interpretable_names(enc) for n, enc in predictor.encoders.items()}
    ex = explain_row(predictor.model, blocks, names, top, image=name, title=title)
    return replace(ex, warning=range_warning(predictor, blocks))


def range_warning(predictor: LoadedPredictor, blocks: dict) -> str:
    """One row's out-of-range line (`LoadedPredictor.out_of_range`), "" when none."""
    report = predictor.out_of_range(blocks)
    return "" if report is None else report.message() or ""


def explain_sae_image(
    image: Image.Image | str | Path | bytes,
    sae_dir: str | Path,
    study: str | Path | StudyIndex,
    top: int = 10,
    device: str = "cpu",
) -> list[FeatureExplanation]:
    """SAE features active in one thumbnail, strongest first, with their group's view ratio.

    `study` is a study folder, its features CSV, or a loaded `StudyIndex`.
    """
    index = study if isinstance(study, StudyIndex) else load_study(study)
    img = image if isinstance(image, Image.Image) else load_image(image)
    z = SaeEncoder.load(sae_dir, device).latents([img])[0]  # (d_sae,)
    return explain_latents(z, index, top)
