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


def build_context_model(root: Path) -> dict:
    """{"model", "paths"}: visual + context ridge on 60 synthetic videos published 2006-2015
    (views counted 2016-01-01, no subscribers column), with a hold-out: what the page's
    context fields and notes are tested with (test_serve_api.py, test_serve_browser.py)."""
    if "context" not in _CACHE:
        import pandas as pd

        from thumbview.data.dataset import load_dataset
        from thumbview.data.synth import SynthConfig, make_synthetic
        from thumbview.predict.model import PredictorConfig
        from thumbview.predict.workflow import train

        make_synthetic(root / "ctx", SynthConfig(n=60, seed=1))
        table = pd.read_csv(root / "ctx" / "metadata.csv", dtype=str, keep_default_na=False)
        when = pd.to_datetime(table["published_at"], utc=True) - pd.DateOffset(years=10)
        table["published_at"] = when.dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # 2005-2015
        table["collected_at"] = "2016-01-01T00:00:00Z"
        table.drop(columns=["subscribers"]).to_csv(root / "ctx" / "metadata.csv", index=False)
        ds = load_dataset(root / "ctx")
        train(ds, PredictorConfig(encoders=("visual", "context")), root / "ctx-model")
        _CACHE["context"] = {"model": root / "ctx-model", "paths": ds.paths}
    return _CACHE["context"]


def free_port() -> int:
    """A loopback port nothing listens on (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_server(config, timeout: float = 30.0):
    """Run uvicorn `config` in a daemon thread; yields once it has started, stops after."""
    import threading
    import time

    import uvicorn

    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield
    srv.should_exit = True
    thread.join(10)
