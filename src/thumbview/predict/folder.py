"""How a frozen-feature model folder loads: the fitted head and its encoders, rebuilt.

`thumbview train --out MODEL` writes `config.json` (format "thumbview-predictor"),
`model.safetensors` and `encoders.json` (each encoder's constructor options and what it
computes). This module is the kind's entry in the inference layer's registry of model kinds
(`thumbview.inference.kinds`, entry point group "thumbview.model_kinds"): `load_folder` and
`check_folder` are all the inference layer knows of it. Fine-tuned models reuse
`encoder_specs`, the one reader of `encoders.json`.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from thumbview.embed.base import Encoder
from thumbview.embed.registry import (
    EncoderOptionError,
    UnknownEncoderError,
    encoder_class,
    get_encoder,
)
from thumbview.layout import MODEL_ENCODERS
from thumbview.predict.drift import PREDICTED, RANGE_FILE, TrainingRange
from thumbview.predict.model import FORMAT, ArtifactError, ViewPredictor
from thumbview.schema import MapOf, read_json

log = logging.getLogger(__name__)

KIND = FORMAT  # the `format` of config.json this module loads
ENCODERS_FILE = MODEL_ENCODERS
# encoders.json: {encoder name: {"options": {constructor kwargs}, "spec": {what it computes}}}
ENCODERS_SCHEMA = MapOf({"options": MapOf((str, int, float, bool, list, type(None))), "spec": dict})


def load_folder(model_dir: Path) -> tuple[ViewPredictor, dict[str, Encoder], TrainingRange | None]:
    """The predictor, freshly built encoders with the settings it was trained with, and the
    range of its training data (None for folders written before it was recorded)."""
    model = ViewPredictor.load(model_dir)
    saved = encoder_specs(model_dir, model.config.encoders)
    encoders = {}
    for name in model.config.encoders:
        try:
            encoders[name] = get_encoder(name, **saved[name]["options"])
        except (EncoderOptionError, UnknownEncoderError, TypeError, ValueError) as e:
            # a name or option it lacks, or an option of the wrong type or value
            raise ArtifactError(f"{model_dir / ENCODERS_FILE}: {name}: {e}") from e
        if json.loads(json.dumps(encoders[name].spec())) != saved[name].get("spec"):
            log.warning("encoder %s differs from the one the model was trained with", name)
    widths = {name: int(model.block_dims_[name]) for name in model.config.encoders}
    return model, encoders, checked_range(model_dir, widths)


def checked_range(model_dir: Path, widths: dict[str, int]) -> TrainingRange | None:
    """The training range, which must describe exactly the blocks `widths` ({block: width}:
    the model's, or a fine-tuned network's embeddings) at their widths: a range missing a
    block would silently never warn about it."""
    found = TrainingRange.load(model_dir)
    if found is None:
        return None
    if found.novelty is not None:  # the novelty score's blocks (per-feature ranges: none)
        held = {name: len(block.names) for name, block in found.novelty.blocks.items()}
        if held.pop(PREDICTED, 1) != 1:  # the model's own prediction: one column
            raise ArtifactError(f"{model_dir / RANGE_FILE}: its {PREDICTED} block is not 1 wide")
    else:
        held = {name: len(block.mean) for name, block in found.blocks.items()}
    if held != widths:
        raise ArtifactError(
            f"{model_dir / RANGE_FILE}: its blocks {sorted(held)} are not the model's "
            f"{list(widths)} at their widths"
        )
    return found


def check_folder(model_dir: Path) -> None:
    """The same checks as `load_folder` without building encoders (no model weights load)."""
    model = ViewPredictor.load(model_dir)
    saved = encoder_specs(model_dir, model.config.encoders)
    for name in model.config.encoders:
        try:  # the options must fit the encoder's constructor (nothing is built)
            inspect.signature(encoder_class(name)).bind(**saved[name]["options"])
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{model_dir / ENCODERS_FILE}: {name}: {e}") from e


def encoder_specs(model_dir: Path, names) -> dict:
    """`encoders.json` of a model folder, checked to have an entry for every name in `names`."""
    path = model_dir / ENCODERS_FILE
    if not path.exists():
        raise ArtifactError(
            f"{model_dir} has no {ENCODERS_FILE}; was it written by `thumbview train`?"
        )
    saved = read_json(path, ENCODERS_SCHEMA, ArtifactError)
    missing = [name for name in names if name not in saved]
    if missing:
        raise ArtifactError(f"{path}: no entry for encoder {missing[0]!r}")
    return saved
