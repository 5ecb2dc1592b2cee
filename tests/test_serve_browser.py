"""The page in a real browser: drop two thumbnails, type a title, see predictions and ranking.

Runs uvicorn in a thread on a free loopback port and drives headless Chromium with
Playwright. Skips cleanly without Playwright or /usr/bin/chromium. Screenshots go under
tmp_path and, when THUMBVIEW_SCREENSHOT_DIR is set, are copied there for people to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn")
if not CHROMIUM.exists():
    pytest.skip("/usr/bin/chromium is not installed", allow_module_level=True)

from thumbview.data.dataset import load_dataset  # noqa: E402
from thumbview.data.synth import SynthConfig, make_synthetic  # noqa: E402
from thumbview.predict.model import PredictorConfig  # noqa: E402
from thumbview.predict.workflow import train  # noqa: E402
from thumbview.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, two thumbnail paths) of a live server with a small trained model."""
    root = tmp_path_factory.mktemp("browser")
    make_synthetic(root / "ds", SynthConfig(n=40, seed=0))
    ds = load_dataset(root / "ds")
    train(ds, PredictorConfig(encoders=("visual",)), root / "model", holdout_frac=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(root / "model"), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", ds.paths[:2]
    srv.should_exit = True
    thread.join(10)


def _keep(shot: Path) -> None:
    out = os.environ.get("THUMBVIEW_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / shot.name)


@pytest.mark.parametrize("viewport", [(1280, 900), (390, 844)], ids=["laptop", "phone"])
def test_compare_two_thumbnails_in_the_browser(server, viewport, tmp_path):
    url, thumbs = server
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#status.ok")
            page.set_input_files("#file", [str(t) for t in thumbs])
            assert page.locator("#thumbs li").count() == 2
            page.fill("#title-0", "I tried the spiciest noodles in the world")
            page.click("#go")
            page.wait_for_selector("#ranking tbody tr", timeout=30_000)
            assert page.locator("#ranking tbody tr").count() == 2
            assert page.locator("#chart svg .dot").count() == 2
            assert "views" in page.inner_text("#winner")
            assert "%" in page.inner_text("#ranking tbody")  # P(beats the others)
            assert page.inner_text("#msg") == ""
            shot = tmp_path / f"serve_{viewport[0]}x{viewport[1]}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert errors == []
        finally:
            browser.close()
    _keep(shot)
