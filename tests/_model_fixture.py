"""Trained models shared by test_frames.py, test_compare.py, test_inference.py and serve tests.

Building one costs ~30 s (OCR over 300 synthetic thumbnails), so each is built once per
session: a pytest fixture defined in two modules would be built twice, hence the cache.
`model_dir_90` is the same data and encoder calibrated for 90% intervals (its features come
from the cache the first model filled), for tests that intervals and their labels follow the
model's own coverage everywhere (predict, compare, frames, serve).
"""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict[str, Path] = {}


def build_model_dir(root: Path, coverage: float = 0.8) -> Path:
    """Synthetic data (n=300, seed 0) -> a visual-only ridge model at `coverage`, trained once."""
    key = f"model-{coverage:g}"
    if key not in _CACHE:
        from thumbview.data.dataset import load_dataset
        from thumbview.data.synth import SynthConfig, make_synthetic
        from thumbview.predict.model import PredictorConfig
        from thumbview.predict.workflow import train

        if "data" not in _CACHE:
            _CACHE["data"] = make_synthetic(root / "synth", SynthConfig(n=300, seed=0))
        dataset = load_dataset(_CACHE["data"])
        out = root / key
        config = PredictorConfig(encoders=("visual",), coverage=coverage)
        train(dataset, config, out, holdout_frac=0)
        _CACHE[key] = out
    return _CACHE[key]


def _root(tmp_path_factory) -> Path:
    if "root" not in _CACHE:
        _CACHE["root"] = tmp_path_factory.mktemp("shared-model")
    return _CACHE["root"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(_root(tmp_path_factory))


@pytest.fixture(scope="session")
def model_dir_90(tmp_path_factory) -> Path:
    """The same model calibrated for 90% intervals."""
    return build_model_dir(_root(tmp_path_factory), coverage=0.9)
