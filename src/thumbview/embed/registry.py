"""Encoders by name, so the CLI and configs can say "clip" / "title" / "visual".

Imports happen inside `get_encoder`: asking for the visual encoder must not import
torch-heavy CLIP code, and a missing optional model only fails when it is asked for.
"""

from __future__ import annotations

import inspect
from typing import Any

from thumbview.embed.base import DEFAULT_CLIP_MODEL, Encoder

ENCODER_NAMES = ("imagenet", "clip", "title", "visual", "context", "title-desc")
__all__ = [
    "DEFAULT_CLIP_MODEL",
    "ENCODER_NAMES",
    "EncoderOptionError",
    "UnknownEncoderError",
    "encoder_class",
    "get_encoder",
]


class UnknownEncoderError(ValueError):
    """A name that is not one of ENCODER_NAMES."""


class EncoderOptionError(ValueError):
    """Options that the named encoder's constructor does not take."""


def encoder_class(name: str) -> type[Encoder]:
    """The class registered as `name`, imported on demand."""
    if name == "visual":
        from thumbview.embed.visual import VisualEncoder

        return VisualEncoder
    if name == "title":
        from thumbview.embed.title import TitleEncoder

        return TitleEncoder
    if name == "context":
        from thumbview.embed.context import ContextEncoder

        return ContextEncoder
    if name == "title-desc":
        from thumbview.embed.title_desc import TitleDescriptorEncoder

        return TitleDescriptorEncoder
    if name == "imagenet":
        from thumbview.embed.imagenet import ImagenetEncoder

        return ImagenetEncoder
    if name == "clip":
        from thumbview.embed.clip import ClipEncoder

        return ClipEncoder
    raise UnknownEncoderError(
        f"unknown encoder {name!r}; known encoders: {', '.join(ENCODER_NAMES)}"
    )


def get_encoder(name: str, **options: Any) -> Encoder:
    """Build the encoder called `name` with its constructor keyword `options`."""
    cls = encoder_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        raise EncoderOptionError(f"bad options for encoder {name!r}: {e}") from e
    return cls(**options)
