"""One trained model shared by test_frames.py and test_compare.py.

Building it costs ~30 s (OCR over 300 synthetic thumbnails), so it is built once per
session: a pytest fixture defined in two modules would be built twice, hence the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict[str, Path] = {}


def build_model_dir(root: Path) -> Path:
    """Synthetic data (n=300, seed 0) -> a visual-only ridge model, trained once."""
    if "model" not in _CACHE:
        from thumbview.data.dataset import load_dataset
        from thumbview.data.synth import SynthConfig, make_synthetic
        from thumbview.predict.model import PredictorConfig
        from thumbview.predict.workflow import train

        data = make_synthetic(root / "synth", SynthConfig(n=300, seed=0))
        dataset = load_dataset(data)
        out = root / "model"
        train(dataset, PredictorConfig(encoders=("visual",)), out, holdout_frac=0)
        _CACHE["model"] = out
    return _CACHE["model"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("shared-model"))
