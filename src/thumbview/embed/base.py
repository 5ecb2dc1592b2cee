"""The encoder interface: a named, versioned map from a batch of inputs to a float32 matrix.

Encoders are pure with respect to their inputs: the same images/titles and the same
`spec()` always give the same matrix. That is what makes the feature cache safe: the
cache key is the spec plus a digest of each input.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

Modality = Literal["image", "text", "meta"]  # meta: per-row metadata dicts (see context)
# The CLIP checkpoint used when none is named: defined once, here, where the CLI and the
# registry can read it without importing torch.
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


class Encoder(ABC):
    """Base class. Subclasses set `name`, `version`, `modality` and implement `encode`.

    `version` is bumped whenever the output for the same input changes (new descriptor,
    different preprocessing), which invalidates every cache built by the old version.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    modality: ClassVar[Modality]

    @abstractmethod
    def encode(self, inputs: Sequence[Image.Image] | Sequence[str]) -> np.ndarray:
        """Return a float32 array (len(inputs), dim). Images are RGB PIL images; texts are str;
        "meta" inputs are dicts that the encoder's `rows(table)` builds from a dataset table."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Number of output columns."""

    def feature_names(self) -> list[str]:
        """Human names of the columns (shown in explanations); generic for dense embeddings."""
        return [f"{self.name}[{i}]" for i in range(self.dim)]

    def spec(self) -> dict[str, Any]:
        """Everything that determines the output: the cache key. Subclasses extend it."""
        return {"encoder": self.name, "version": self.version, "dim": self.dim}

    def spec_hash(self) -> str:
        """Short stable digest of `spec()`, used in cache file names."""
        blob = json.dumps(self.spec(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
