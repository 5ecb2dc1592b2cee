"""The page in a real browser: drop two thumbnails, type a title, see predictions and ranking.

Runs uvicorn in a thread on a free loopback port and drives headless Chromium with
Playwright. Skips cleanly without Playwright or /usr/bin/chromium. Screenshots go under
tmp_path and, when THUMBVIEW_SCREENSHOT_DIR is set, are copied there for people to look at.
"""

from __future__ import annotations

import json
import os
import shutil
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

from _serve_fixture import build_serve_model, free_port, live_server  # noqa: E402
from thumbview.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, two thumbnail paths) of a live server with a small model trained for 90%."""
    model = build_serve_model(tmp_path_factory.mktemp("serve"))
    yield from _live(model)


def _live(model: dict):
    """Serve `model["model"]` on a free loopback port in a thread; yields (URL, 2 thumbnails)."""
    port = free_port()
    config = uvicorn.Config(
        create_app(model["model"]), host="127.0.0.1", port=port, log_level="warning"
    )
    for _ in live_server(config, timeout=20):
        yield f"http://127.0.0.1:{port}", model["paths"][:2]


def _keep(shot: Path) -> None:
    out = os.environ.get("THUMBVIEW_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / shot.name)


def _page(browser, viewport=(1280, 900)):
    """A page that records script errors and console errors (CSP violations land there)."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, errors


def _browser(p):
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


@pytest.mark.parametrize("viewport", [(1280, 900), (390, 844)], ids=["laptop", "phone"])
def test_compare_two_thumbnails_in_the_browser(server, viewport, tmp_path):
    url, thumbs = server
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page, errors = _page(browser, viewport)
            page.goto(url)
            page.wait_for_selector("#status.ok")
            page.set_input_files("#file", [str(t) for t in thumbs])
            assert page.locator("#thumbs li").count() == 2
            page.fill("#title-0", "I tried the spiciest noodles in the world")
            page.click("#go")
            page.wait_for_selector("#ranking tbody tr", timeout=30_000)
            assert page.locator("#ranking tbody tr").count() == 2
            assert page.locator("#chart svg .dot").count() == 2
            winner = page.inner_text("#winner")
            assert "views" in winner or "No candidate is reliably ahead" in winner
            ranking = page.inner_text("#ranking tbody")
            if ranking.count("=1") == 2:  # all tied: chance best hidden, and the page says why
                assert "%" not in ranking and "not shown" in page.inner_text("#chance-note")
            else:
                assert "%" in ranking  # P(beats the others)
            # The model was trained for 90% intervals: the page says so, from the model.
            assert page.inner_text("#coverage") == "9 times out of 10"
            assert page.locator("#range-cov").text_content() == "(90%)"  # hidden on phones
            assert page.inner_text("#msg") == ""
            shot = tmp_path / f"serve_{viewport[0]}x{viewport[1]}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert errors == []
        finally:
            browser.close()
    _keep(shot)


def _compare_canned(page, url: str, thumbs, answer: dict) -> None:
    """Compare `thumbs` on the page with /compare answering `answer` (the page's own logic
    under test, not the model's)."""
    page.route(
        "**/compare",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(answer)
        ),
    )
    page.goto(url)
    page.wait_for_selector("#status.ok")
    page.set_input_files("#file", [str(t) for t in thumbs])
    page.click("#go")
    page.wait_for_selector("#ranking tbody tr", timeout=30_000)


def test_no_winner_is_named_when_candidates_are_close(server):
    """Six candidates within a few points: the page says no candidate is reliably ahead."""
    url, thumbs = server
    p_best = [0.19, 0.18, 0.17, 0.16, 0.15, 0.15]
    close = {
        "images": ["a.jpg", "b.jpg"],
        "candidates": [
            {
                "image": "a.jpg" if k % 2 == 0 else "b.jpg",
                "image_index": k % 2,
                "title": f"t{k}",
                "views": 3000 - 10 * k,
                "low": 1000,
                "high": 9000,
                "p_best": pb,
            }
            for k, pb in enumerate(p_best)
        ],
        "p_beats": [[0.5 if i == j else 0.52 for j in range(6)] for i in range(6)],
        "descriptors": [
            {
                "feature": "brightness",
                "values": [0.7, 0.2],
                "spread": 1.0,
                "highest": "a.jpg",
                "effect": 0.05,
                "note": "highest in a.jpg; more of it tends to help (x1.12 predicted views)",
            },
            {
                "feature": "text boxes",
                "values": [3, 0],
                "spread": 1.0,
                "highest": "a.jpg",
                "effect": -0.1,
                "note": "highest in a.jpg; more of it tends to hurt (x0.79 predicted views)",
            },
        ],
        "sae": [],
        "reliable": False,
        "verdict": "no reliable difference between the top 6: the chance that a.jpg really "
        "gets more views than b.jpg is 52% (50% would be a coin flip)",
        "tied": 6,
        "rank_labels": ["=1"] * 6,
        "chance_best": "chance best: how often each candidate comes out on top",
        "by_image": [
            {"name": n, "views": 3000, "low": 2950, "high": 3000, "p_best": 0.5}
            for n in ("a.jpg", "b.jpg")
        ],
        "by_title": [
            {"name": f"t{k}", "views": 3000, "low": 3000, "high": 3000, "p_best": 1 / 3}
            for k in range(3)
        ],
    }
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page, errors = _page(browser)
            _compare_canned(page, url, thumbs, close)
            winner = page.inner_text("#winner")
            assert "No candidate is reliably ahead" in winner and "52%" in winner
            assert "coin flip" in winner and "most likely to win" not in winner.lower()
            assert page.inner_text("#ranking tbody").count("3K") >= 1  # one formatter
            # no green anywhere: the verdict box is amber, as the PNG's band
            background = page.eval_on_selector(
                "#winner", "e => getComputedStyle(e).backgroundColor"
            )
            assert background == "rgb(255, 244, 214)", background
            # no green top row anywhere: not in the table, not in the chart
            assert page.locator("#ranking tr.best").count() == 0
            assert page.locator("#chart .row.best").count() == 0
            ranks = page.locator("#ranking td.rank").all_inner_texts()
            assert ranks == ["=1"] * 6
            assert "how often each candidate comes out on top" in page.inner_text("#chance-note")
            summaries = page.inner_text("#summaries")
            assert "Per thumbnail" in summaries and "Per title" in summaries
            apart = page.inner_text("#descriptors")
            assert "tends to hurt" in apart and "highest in A" not in apart
            assert errors == []
        finally:
            browser.close()


def test_frames_show_the_verdict_and_range_line(server, tmp_path):
    """A frames job whose stills are a tie: the page shows the verdict, the out-of-range
    line and "=1" ranks, not a #1 / #2 ranking."""
    url, thumbs = server
    warning = "20% of the inputs lie outside the training range: text length 11"
    result = {
        "choices": [
            {"timestamp_s": t, "shot_index": k, "predicted_views": v, "low": 1e3, "high": 9e4,
             "path": f"/frames/j1/stills/{k}.jpg", "log10": 4.7}
            for k, (t, v) in enumerate(((9.0, 54_000), (14.0, 52_000)))
        ],
        "reliable": False,
        "verdict": "no reliable difference between the top 2: the chance that the frame at "
        "9.0s really gets more views than the frame at 14.0s is 52% (50% would be a coin flip)",
        "tied": 2,
        "rank_labels": ["=1", "=1"],
        "warning": warning,
    }  # fmt: skip
    job = {"job_id": "j1", "status": "done", "progress": 1.0, "result": result}
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: the routes below answer")
    still = thumbs[0].read_bytes()
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page, errors = _page(browser)
            page.route("**/frames/j1/stills/*", lambda r: r.fulfill(status=200, body=still,
                       content_type="image/jpeg"))  # fmt: skip
            page.route("**/frames/j1", lambda r: r.fulfill(status=200, body=json.dumps(job),
                       content_type="application/json"))  # fmt: skip
            page.route("**/frames", lambda r: r.fulfill(status=200, content_type="application/json",
                       body=json.dumps({"job_id": "j1", "status": "queued"})))  # fmt: skip
            page.goto(url)
            page.wait_for_selector("#status.ok")
            page.set_input_files("#video", str(video))
            page.click("#frames-go")
            page.wait_for_selector("#stills figure", timeout=30_000)
            said = page.inner_text("#frames-verdict")
            assert said.startswith("No reliable difference") and "coin flip" in said
            assert warning in page.inner_text("#frames-warning")
            views = page.locator("#stills .views").all_inner_texts()
            assert [v.split(" ")[0] for v in views] == ["=1", "=1"]
            assert errors == []
        finally:
            browser.close()


def test_api_docs_render_offline(server):
    """/docs renders FastAPI's OpenAPI 3.1 with the bundled Swagger UI: operations shown."""
    url, _ = server
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page, errors = _page(browser)
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
            page.goto(url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert "/predict" in paths and "/compare" in paths
            assert "Unable to render" not in page.inner_text("body")
            assert outside == [] and errors == []
        finally:
            browser.close()


@pytest.fixture(scope="module")
def context_server(tmp_path_factory):
    """(base URL, thumbnails) of a live server whose model reads the context (2005-2015)."""
    from _serve_fixture import build_context_model

    yield from _live(build_context_model(tmp_path_factory.mktemp("ctx")))


def test_the_page_sends_the_upload_date_and_says_what_it_assumed(context_server, tmp_path):
    """Without a date the page says it assumed the training median's; with one typed in the
    date field, the comparison uses it (no longer assumed, other numbers) and says what the
    views are (after how long)."""
    url, thumbs = context_server
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page, errors = _page(browser)
            page.goto(url)
            page.wait_for_selector("#status.ok")
            page.set_input_files("#file", [str(t) for t in thumbs])
            with page.expect_response("**/compare") as first:
                page.click("#go")
            page.wait_for_selector("#model-notes li", timeout=30_000)
            notes = page.inner_text("#model-notes")
            assert "Assumed: published 20" in notes and "after upload" in notes
            page.fill("#ctx-published", "2006-02-01")
            page.fill("#ctx-channel-videos", "3")
            with page.expect_response("**/compare") as second:
                page.click("#go")
            page.wait_for_function(
                "() => !document.querySelector('#model-notes').innerText.includes('published')"
            )
            notes = page.inner_text("#model-notes")
            assert "Assumed: published" not in notes and "Predicts views about" in notes
            before, after = first.value.json(), second.value.json()
            assert [c["views"] for c in before["candidates"]] != [
                c["views"] for c in after["candidates"]
            ]
            shot = tmp_path / "serve_context.png"
            page.screenshot(path=str(shot), full_page=True)
            assert errors == []
        finally:
            browser.close()
    _keep(shot)


def test_a_model_without_within_channel_skill_names_no_winner(server):
    """/compare answers tie with its no-skill line: the page names no winner and says why,
    even when one candidate's chance looks high."""
    url, thumbs = server
    note = "no demonstrated skill at choosing between one video's candidates: treat it as a tie"
    answer = {
        "images": ["a.jpg", "b.jpg"],
        "candidates": [
            {
                "image": n,
                "image_index": k,
                "title": "",
                "views": v,
                "low": 100,
                "high": 9000,
                "p_best": pb,
            }
            for k, (n, v, pb) in enumerate([("a.jpg", 5000, 0.9), ("b.jpg", 900, 0.1)])
        ],  # fmt: skip
        "p_beats": [[0.5, 0.9], [0.1, 0.5]],
        "descriptors": [],
        "sae": [],
        "reliable": True,
        "verdict": "a.jpg is reliably ahead",
        "no_skill_note": note,
        "tie": True,
        "predicts": "predicts views about 3.3 years after upload",
    }
    with playwright_sync.sync_playwright() as p:
        browser = _browser(p)
        try:
            page, errors = _page(browser)
            _compare_canned(page, url, thumbs, answer)
            winner = page.inner_text("#winner")
            assert "most likely to win" not in winner.lower()
            assert "no demonstrated skill" in winner.lower()  # the page capitalises its sentence
            notes = page.inner_text("#model-notes")
            assert "No demonstrated skill at choosing" in notes and "3.3 years" in notes
            assert errors == []
        finally:
            browser.close()
