"""The inputs of a fine-tuned model as feature blocks: resized pixels and title tokens.

A fine-tuned network reads pixels, not frozen features. Exposing the preprocessed pixels as
an `Encoder` block lets every consumer of `LoadedPredictor` (predict, compare, frames, serve)
pass images through unchanged: `blocks(images, titles)` then `predict(blocks)`.
Training and inference share `to_pixels`, so what the model saw is what it is given; its
`frame` (stored with the model) says how the picture becomes a square: squashed whole, or for
the ImageNet backbones letterboxed exactly as the frozen `imagenet` encoder does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from thumbview.data.images import strip_bars, to_rgb
from thumbview.embed import imagenet
from thumbview.embed.base import Encoder
from thumbview.finetune.config import FRAMES, FinetuneError

TITLE_MAX_TOKENS = 32


def to_pixels(
    image: Image.Image, size: int, crop: tuple[float, ...] | None = None, frame: str = "squash"
) -> np.ndarray:
    """uint8 (3, size, size): the whole frame (or the `crop` box, as fractions) as a square.

    "squash": resized whole; squashing instead of centre-cropping keeps the text and faces
    near a 16:9 thumbnail's edges, which carry signal. "letterbox": `imagenet.frame` (dark
    bars cut, aspect kept, centred on grey), the crop taken from the picture inside the bars.
    """
    if frame == "letterbox":
        return _letterboxed(image, size, crop)
    image = image.convert("RGB")
    box = None
    if crop is not None:
        w, h = image.size
        box = (crop[0] * w, crop[1] * h, crop[2] * w, crop[3] * h)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, S, S)


def _letterboxed(image: Image.Image, size: int, crop: tuple[float, ...] | None) -> np.ndarray:
    """uint8 (3, S, S); without `crop`, exactly the frozen encoder's `imagenet.frame`."""
    if crop is not None:
        picture = strip_bars(to_rgb(image))
        w, h = picture.size
        box = (crop[0] * w, crop[1] * h, crop[2] * w, crop[3] * h)
        image = picture.crop(tuple(round(v) for v in box))
    return imagenet.frame(image, size).transpose(2, 0, 1).copy()  # (3, S, S)


def augmented_pixels(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    hflip: bool,
    jitter: float,
    frame: str = "squash",
) -> np.ndarray:
    """A thumbnail-suited random view: a mild crop (80-100% of the area, aspect +-10%).

    Colour jitter is off by default (colour carries signal) and flips are optional (they
    mirror on-image text).
    """
    area = rng.uniform(0.8, 1.0)
    aspect = np.exp(rng.uniform(np.log(0.9), np.log(1.1)))
    cw, ch = min(1.0, np.sqrt(area * aspect)), min(1.0, np.sqrt(area / aspect))
    x0, y0 = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
    if jitter > 0:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image.convert("RGB")).enhance(rng.uniform(1 - jitter, 1 + jitter))
    pixels = to_pixels(image, size, (x0, y0, x0 + cw, y0 + ch), frame)
    if hflip and rng.random() < 0.5:
        pixels = pixels[:, :, ::-1].copy()
    return pixels


def picture_stats(pixels: np.ndarray, size: int) -> np.ndarray:
    """(N, 20) the colour and edge descriptors of `embed.visual` (brightness ... sharpness,
    `PICTURE_NAMES`) of a pixel block (N, 3*S*S), measured on the S x S square the network
    reads. They see what a weakly trained network's embedding may not: colour noise has an
    edge density and sharpness no thumbnail has (the training range, `finetune.range`)."""
    from thumbview.embed.visual import colour_stats, edge_stats

    rows = []
    for row in np.asarray(pixels):
        rgb = np.clip(np.rint(row), 0, 255).astype(np.uint8).reshape(3, size, size)
        rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))  # (S, S, 3)
        gray = np.asarray(Image.fromarray(rgb).convert("L"))  # (S, S) uint8
        rows.append(np.concatenate([colour_stats(rgb, gray), edge_stats(gray)]))
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(picture_names()))


def picture_names() -> list[str]:
    """The names of `picture_stats`' columns: the visual descriptors before the aspect ratio."""
    from thumbview.embed.visual import FEATURE_NAMES

    return list(FEATURE_NAMES[: FEATURE_NAMES.index("sharpness (log Laplacian variance)") + 1])


class PixelEncoder(Encoder):
    """Images -> float32 (B, 3*S*S) of the framed 0-255 pixels (normalisation is in the net)."""

    name = "pixels"
    version = "1"
    modality = "image"

    def __init__(self, image_size: int = 64, frame: str = "squash") -> None:
        if frame not in FRAMES:
            raise FinetuneError(f"unknown pixel frame {frame!r}; one of {', '.join(FRAMES)}")
        self.image_size, self.frame = int(image_size), frame

    @property
    def dim(self) -> int:
        return 3 * self.image_size * self.image_size

    def spec(self) -> dict[str, Any]:
        frame = {} if self.frame == "squash" else {"frame": self.frame}  # older specs: squash
        return {**super().spec(), "image_size": self.image_size, **frame}

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, self.dim), np.float32)
        arrays = [to_pixels(im, self.image_size, frame=self.frame).reshape(-1) for im in inputs]
        return np.stack(arrays).astype(np.float32)  # (B, 3*S*S)


class TitleTokenEncoder(Encoder):
    """Titles -> float32 (B, 2*L): MiniLM token ids then the attention mask (for `--title finetune`)."""

    name = "title-tokens"
    version = "1"
    modality = "text"

    def __init__(self, max_length: int = TITLE_MAX_TOKENS) -> None:
        self.max_length = int(max_length)
        self._tokenizer = None

    @property
    def dim(self) -> int:
        return 2 * self.max_length

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "max_length": self.max_length, "tokenizer": "all-MiniLM-L6-v2"}

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from thumbview.embed.title import default_model_path

            self._tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
        tok = self._tokenizer(
            [str(t) for t in inputs],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        ids, mask = tok["input_ids"], tok["attention_mask"]  # (B, L) each
        return np.concatenate([ids, mask], axis=1).astype(np.float32)  # (B, 2L)


def build_encoder(name: str, options: dict[str, Any]) -> Encoder:
    """The encoders a fine-tuned model reads, by the names in its `encoders.json`."""
    if name == "pixels":
        return PixelEncoder(**options)
    if name == "title-tokens":
        return TitleTokenEncoder(**options)
    from thumbview.embed.registry import get_encoder

    return get_encoder(name, **options)
