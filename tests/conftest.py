"""Fixtures shared by every test module: a tiny random CLIP, the real dataset when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "yt-virality"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches go to a temp folder, never the developer's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    os.environ.pop("THUMBVIEW_CACHE_DIR", None)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised CLIP vision tower + processor config saved like a Hub checkpoint.

    Same code path as a real model loaded from a local directory, without any download.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=30,
        patch_size=10,
        projection_dim=16,
    )
    out = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(config).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real yt-virality dataset beside the repo; tests that need it skip cleanly without it."""
    if not (SHARED_DATA / "metadata.csv").exists():
        pytest.skip("../shared/data/yt-virality is not present")
    return SHARED_DATA
