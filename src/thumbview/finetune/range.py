"""The training range of a fine-tuned network: which new thumbnails (and titles) it has never
seen the like of, so predict, compare, frames, the web page and the bot's reward warn for it
as they do for a head on frozen features (`predict.drift`).

A fine-tuned model's feature blocks are raw pixels (3 x S x S columns) and the title: no
range of raw pixels says whether the network has seen such a picture. What its head reads
does: the backbone's pooled image embedding and the title embedding (`FusionNet.embed`);
beside them, the picture's colour and edge descriptors (`encoders.picture_stats`: what a
weakly trained network's embedding may not separate, colour noise from a thumbnail, and
what a creator can read: "edge density 0.6 is outside the training range 0.1-0.3").
The range is `TrainingRange.fit` on those embeddings, with the network's own predictions as
the `PREDICTED` column, fitted on the rows its weights never trained on (the validation and
hold-out channels): those rows are exchangeable with new rows, so the novelty score's false
alarm rate holds for them, whereas the training rows' embeddings and in-sample predictions
are tighter than any new row's would be. At check time the range maps the blocks a
`LoadedPredictor` computes (pixels, title) to the same inputs (`TrainingRange.inputs`,
set by the folder's loader, `finetune.model.load_folder`).

Below `drift.MIN_NOVELTY_ROWS` such rows no range is written (a note is logged): the
per-feature fallback `train` uses for small sets would be fitted on a few dozen rows with
no stated false-alarm rate and no prediction column, and would warn more than it informs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from thumbview.finetune.encoders import picture_names
from thumbview.finetune.model import FinetunedPredictor
from thumbview.predict.drift import MIN_NOVELTY_ROWS, NOVELTY_FILE, RANGE_FILE, TrainingRange

log = logging.getLogger(__name__)


def fit_range(
    model: FinetunedPredictor, chunks: Iterable[dict[str, np.ndarray]], y, groups=None
) -> TrainingRange | None:
    """The range of held-out rows given as `chunks` of the model's blocks ({encoder: (B, D)},
    as `LoadedPredictor.blocks` computes them; chunks keep a 224-pixel batch to megabytes),
    `y` (N,) their targets, `groups` (N,) their channels. None below MIN_NOVELTY_ROWS rows."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < MIN_NOVELTY_ROWS:
        log.info("no training range recorded: %d held-out rows, the novelty score needs %d "
                 "(no out-of-range warnings for this model)", len(y), MIN_NOVELTY_ROWS)  # fmt: skip
        return None
    parts: dict[str, list[np.ndarray]] = {}
    predicted = []
    for blocks in chunks:
        predicted.append(model.predict(blocks))  # (B,)
        for name, value in model.range_inputs(blocks).items():  # the pass just made
            parts.setdefault(name, []).append(value)
    embedded = {name: np.concatenate(v) for name, v in parts.items()}
    pred = np.concatenate(predicted)
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} rows of blocks but {len(y)} targets")
    # a narrow test backbone's columns read "image embedding dimension 3", not "column 3"
    names = {k: [f"{k} embedding dimension {j + 1}" for j in range(v.shape[1])]
             for k, v in embedded.items()}  # fmt: skip
    names["picture"] = picture_names()
    fitted = TrainingRange.fit(y, embedded, model.config.target, names=names, groups=groups,
                               predicted=pred)  # fmt: skip
    return fitted


def save_range(fitted: TrainingRange | None, out_dir: Path) -> None:
    """Write the range, or remove an older run's (a folder never keeps another model's)."""
    if fitted is not None:
        fitted.save(out_dir)
        return
    for name in (RANGE_FILE, NOVELTY_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)


def heldout_chunks(model: FinetunedPredictor, paths, titles, rows, size: int = 64):
    """The model's blocks for dataset rows `rows`, `size` at a time, computed as a
    `LoadedPredictor` computes them for new thumbnails (the pixel encoder; the dataset's
    title block is what the title encoder gives, computed once for training)."""
    from thumbview.data.images import load_image
    from thumbview.finetune.encoders import PixelEncoder

    encoder = PixelEncoder(model.arch_["image_size"], model.arch_.get("frame", "squash"))
    others = [n for n in model.config.encoders if n != "pixels"]
    for start in range(0, len(rows), size):
        idx = np.asarray(rows[start : start + size])
        blocks = {"pixels": encoder.encode([load_image(paths[i]) for i in idx])}
        for name in others:
            blocks[name] = np.asarray(titles[idx], dtype=np.float32)
        yield blocks
