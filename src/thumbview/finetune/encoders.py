"""The inputs of a fine-tuned model as feature blocks: resized pixels and title tokens.

A fine-tuned network reads pixels, not frozen features. Exposing the preprocessed pixels as
an `Encoder` block lets every consumer of `LoadedPredictor` (predict, compare, frames, serve)
pass images through unchanged: `blocks(images, titles)` then `predict(blocks)`.
Training and inference share `to_pixels`, so what the model saw is what it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from thumbview.embed.base import Encoder

TITLE_MAX_TOKENS = 32


def to_pixels(image: Image.Image, size: int, crop: tuple[float, ...] | None = None) -> np.ndarray:
    """uint8 (3, size, size): the whole frame (or the `crop` box, as fractions) squashed to a square.

    Squashing instead of centre-cropping keeps the text and faces near a 16:9 thumbnail's
    edges, which carry signal; the model learns on the same squashed geometry.
    """
    image = image.convert("RGB")
    box = None
    if crop is not None:
        w, h = image.size
        box = (crop[0] * w, crop[1] * h, crop[2] * w, crop[3] * h)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, S, S)


def augmented_pixels(
    image: Image.Image, size: int, rng: np.random.Generator, hflip: bool, jitter: float
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
    pixels = to_pixels(image, size, (x0, y0, x0 + cw, y0 + ch))
    if hflip and rng.random() < 0.5:
        pixels = pixels[:, :, ::-1].copy()
    return pixels


class PixelEncoder(Encoder):
    """Images -> float32 (B, 3*S*S) of the squashed 0-255 pixels (normalisation is in the net)."""

    name = "pixels"
    version = "1"
    modality = "image"

    def __init__(self, image_size: int = 64) -> None:
        self.image_size = int(image_size)

    @property
    def dim(self) -> int:
        return 3 * self.image_size * self.image_size

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "image_size": self.image_size}

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        if not len(inputs):
            return np.zeros((0, self.dim), np.float32)
        arrays = [to_pixels(im, self.image_size).reshape(-1) for im in inputs]
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
