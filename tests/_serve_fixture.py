"""One small model shared by the web tests (test_serve_api.py, test_serve_security.py).

Trained once per session (a fixture defined in two modules would be built twice, hence
the cache), for 90% intervals rather than the 80% default, so that a coverage hard-coded
anywhere on the way to the client shows.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, dict] = {}
COVERAGE = 0.9


def build_serve_model(root: Path) -> dict:
    """{"model": folder, "paths": thumbnails}: visual-only ridge on 40 synthetic thumbnails."""
    if "model" not in _CACHE:
        from thumbview.data.dataset import load_dataset
        from thumbview.data.synth import SynthConfig, make_synthetic
        from thumbview.predict.model import PredictorConfig
        from thumbview.predict.workflow import train

        make_synthetic(root / "ds", SynthConfig(n=40, seed=0))
        ds = load_dataset(root / "ds")
        config = PredictorConfig(encoders=("visual",), coverage=COVERAGE)
        train(ds, config, root / "model", holdout_frac=0)
        _CACHE["model"] = {"model": root / "model", "paths": ds.paths}
    return _CACHE["model"]
