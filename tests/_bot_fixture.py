"""Shared by the bot tests: a tiny random Stable Diffusion folder and a fast predictor.

The predictor is a visual-only ridge fitted on synthetic thumbnails with face and text
detection off (OCR on every generated image would dominate the test time); it is saved
in the same layout `thumbview train` writes, so `LoadedPredictor.load` and
`thumbview predict` use it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_CACHE: dict[str, Path] = {}
VISUAL_OPTIONS = {"ocr": False, "faces": False, "workers": 1}


def build_fast_predictor(root: Path, seed: int = 0) -> Path:
    from thumbview.data.dataset import load_dataset
    from thumbview.data.images import load_image
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.embed.visual import VisualEncoder
    from thumbview.predict.drift import TrainingRange
    from thumbview.predict.model import PredictorConfig, ViewPredictor
    from thumbview.predict.target import make_target

    config = SynthConfig(n=120, seed=seed, width=96, height=54, n_channels=12)
    dataset = load_dataset(make_synthetic(root / "synth", config))
    encoder = VisualEncoder(**VISUAL_OPTIONS)
    X = encoder.encode([load_image(p) for p in dataset.paths])  # (N, D)
    y, _ = make_target(dataset.views, "log10")
    model = ViewPredictor(PredictorConfig(encoders=("visual",), seed=seed))
    model.fit({"visual": X}, y, dataset.channels).save(root / "model")
    names = {"visual": encoder.feature_names()}  # the range file `train` writes beside it
    TrainingRange.fit(y, {"visual": X}, names=names, groups=dataset.channels).save(root / "model")
    spec = {"visual": {"options": VISUAL_OPTIONS, "spec": encoder.spec()}}
    (root / "model" / "encoders.json").write_text(json.dumps(spec), encoding="utf-8")
    return root / "model"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A ~0.8M-parameter random pipeline saved like a real base model (no download)."""
    if "base" not in _CACHE:
        import torch

        from thumbview.bot.tiny import save_tiny_base

        torch.set_num_threads(1)
        _CACHE["base"] = save_tiny_base(tmp_path_factory.mktemp("tiny-sd") / "base")
    return _CACHE["base"]


@pytest.fixture(scope="session")
def bot_model_dir(tmp_path_factory) -> Path:
    """The fast visual-only predictor (built once per session)."""
    if "model" not in _CACHE:
        _CACHE["model"] = build_fast_predictor(tmp_path_factory.mktemp("bot-predictor"))
    return _CACHE["model"]


def build_planted_predictor(root: Path, n: int = 60, seed: int = 0) -> Path:
    """A visual ridge on random tinted images whose log10 views rise with warmth (red - blue).

    A known, differentiable effect: `draft` must find it through the torch descriptors.
    """
    import numpy as np
    from PIL import Image

    from thumbview.embed.visual import FEATURE_NAMES, VisualEncoder
    from thumbview.predict.model import PredictorConfig, ViewPredictor

    rng = np.random.default_rng(seed)
    tint = rng.uniform(0, 255, (n, 1, 1, 3))
    pixels = np.clip(tint + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    encoder = VisualEncoder(**VISUAL_OPTIONS)
    X = encoder.encode([Image.fromarray(p) for p in pixels])  # (n, D)
    y = 4.0 + 2.0 * X[:, FEATURE_NAMES.index("warmth (red minus blue)")] + rng.normal(0, 0.05, n)
    model = ViewPredictor(PredictorConfig(encoders=("visual",), seed=seed))
    model.fit({"visual": X}, y).save(root / "planted")
    spec = {"visual": {"options": VISUAL_OPTIONS, "spec": encoder.spec()}}
    (root / "planted" / "encoders.json").write_text(json.dumps(spec), encoding="utf-8")
    return root / "planted"


@pytest.fixture(scope="session")
def planted_model_dir(tmp_path_factory) -> Path:
    if "planted" not in _CACHE:
        _CACHE["planted"] = build_planted_predictor(tmp_path_factory.mktemp("bot-planted"))
    return _CACHE["planted"]
