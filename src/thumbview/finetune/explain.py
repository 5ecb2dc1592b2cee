"""Why a fine-tuned model predicts what it does for one thumbnail: an occlusion heatmap.

A network on pixels has no named features, so the explanation is spatial: grey out one cell
of a G x G grid at a time and record how much the prediction drops (log10 units). Cells
whose loss lowers the prediction most are what the model relies on. Occlusion needs only
forward passes, so it works for every backbone and precision and explains exactly the model
that serves predictions (Zeiler & Fergus 2014).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from thumbview.predict.target import to_views


@dataclass(frozen=True)
class Saliency:
    """One explained prediction.

    grid: (G, G) prediction minus the prediction with that cell greyed out, in log10 units
    (> 0: the cell pushes views up). heatmap: the PNG written, if any. warning: the
    image's out-of-range line (`LoadedPredictor.out_of_range`), "" inside or without a range.
    """

    image: str
    title: str
    target: str
    log10: float
    views: float
    grid: np.ndarray
    heatmap: Path | None
    warning: str = ""

    def to_json_dict(self) -> dict:
        return {"image": self.image, "title": self.title, "target": self.target,
                "log10": self.log10, "views": self.views, "grid": self.grid.tolist(),
                "heatmap": None if self.heatmap is None else str(self.heatmap),
                "warning": self.warning}  # fmt: skip


def occlusion_grid(
    predict: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, grid: int = 8
) -> tuple[float, np.ndarray]:
    """(prediction, (G, G) drops) for `pixels` (3, S, S); `predict` maps (B, 3, S, S) -> (B,)."""
    _, size, _ = pixels.shape
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    fill = pixels.reshape(3, -1).mean(axis=1)[:, None, None]  # (3, 1, 1) the image's mean colour
    batch = np.repeat(pixels[None].astype(np.float32), grid * grid + 1, axis=0)  # (G*G+1, 3, S, S)
    for r in range(grid):
        for c in range(grid):
            cell = batch[1 + r * grid + c]
            cell[:, edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = fill
    pred = predict(batch)  # (G*G+1,)
    return float(pred[0]), (pred[0] - pred[1:]).reshape(grid, grid)


def explain_image(loaded, image: Image.Image, name: str, title: str = "", grid: int = 8,
                  heatmap: Path | None = None) -> Saliency:  # fmt: skip
    """Occlusion map of a loaded fine-tuned model (`LoadedPredictor`) for one image + title."""
    blocks = loaded.blocks([image], [title])
    size = loaded.model.arch_["image_size"]
    pixels = blocks["pixels"][0].reshape(3, size, size)

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = {k: np.repeat(v, len(batch), axis=0) for k, v in blocks.items()}
        rows["pixels"] = batch.reshape(len(batch), -1)
        return loaded.predict(rows)

    point, drops = occlusion_grid(predict, pixels, grid)
    if loaded.model.arch_.get("frame", "squash") != "squash":  # the grid covers the letterbox
        image = Image.fromarray(pixels.transpose(1, 2, 0).astype(np.uint8))  # (S, S, 3)
    path = save_heatmap(image, drops, heatmap) if heatmap is not None else None
    views = to_views(loaded.target)(point)
    report = loaded.out_of_range(blocks)  # the image as given, not its occluded copies
    warning = "" if report is None else report.message() or ""
    return Saliency(name, title, loaded.target, point, views, drops, path, warning)


def save_heatmap(image: Image.Image, drops: np.ndarray, path: Path) -> Path:
    """The thumbnail beside it with the grid overlaid: red pushes views up, blue down."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from thumbview.fileio import atomic_write

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(7, 7 * h / w / 1.0 + 0.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rgb)
    limit = float(np.abs(drops).max()) or 1e-9
    shown = ax.imshow(drops, cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.5,
                      extent=(0, w, h, 0), interpolation="bilinear")  # fmt: skip
    fig.colorbar(shown, ax=ax, fraction=0.03, label="effect of this area (log10 views)")
    ax.set_axis_off()
    ax.set_title("occlusion: red areas raise the prediction, blue ones lower it")
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    return path
