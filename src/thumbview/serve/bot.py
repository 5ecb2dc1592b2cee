"""The web page's "generate" panel: a router `thumbview serve --bot BOT` mounts.

Self-contained (its own route, page and /static/bot.js: the CSP allows no inline script) so the main page does not change: the
panel lives at /bot and posts to /api/bot/generate. The bot is loaded on first use and
requests run one at a time (generation holds the CPU/GPU anyway).
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse

MAX_CANDIDATES = 16

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>thumbview: generate</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main>
<h1>Generate thumbnails</h1>
<form id="bot-form"><label>Title <input name="title" required maxlength="200" size="50"></label>
<label>Image prompt <input name="prompt" maxlength="300" size="40" placeholder="(the title)"></label>
<label>Candidates <input name="n" type="number" min="1" max="16" value="4"></label>
<label>Show <input name="top" type="number" min="1" max="16" value="4"></label>
<label><input name="no_lora" type="checkbox"> base model</label>
<button type="submit">Generate</button></form>
<p id="bot-status" role="status"></p><div id="bot-results"></div>
<p id="bot-chance-note" class="hint chance-note"></p>
<script src="/static/bot.js" defer></script></main></body></html>"""


def bot_router(bot_dir: str | Path) -> APIRouter:
    """GET /bot (the panel) and POST /api/bot/generate for the bot in `bot_dir`."""
    from thumbview.bot.folder import read_bot

    read_bot(bot_dir)  # fail at start-up, in words, not on the first request
    router = APIRouter()
    lock, loaded = threading.Lock(), {}

    @router.get("/bot", response_class=HTMLResponse, include_in_schema=False)
    def panel() -> str:
        return PAGE

    @router.post("/api/bot/generate")
    def generate_endpoint(
        title: str = Form(..., min_length=1, max_length=200),
        prompt: str = Form("", max_length=300),
        n: int = Form(4, ge=1, le=MAX_CANDIDATES),
        top: int = Form(4, ge=1, le=MAX_CANDIDATES),
        no_lora: bool = Form(False),
        seed: int = Form(0, ge=0),
    ) -> dict:
        from thumbview.bot.generate import LoadedBot, generate

        with lock:
            if "bot" not in loaded:
                loaded["bot"] = LoadedBot.load(bot_dir)
            images: dict[str, bytes] = {}
            result = generate(
                loaded["bot"], title, prompt or None, n, top, seed, not no_lora, sink=images
            )
        payload = result.to_json_dict()
        for cand in payload["candidates"]:
            cand["png"] = base64.b64encode(images[str(cand["seed"])]).decode("ascii")
        return payload

    return router
