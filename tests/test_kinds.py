"""The registry of model kinds: a folder's config.json format picks its loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thumbview.inference import LoadedPredictor, kinds
from thumbview.predict.model import ArtifactError


class _ConstantModel:
    """A model kind nobody wrote into thumbview.inference: predicts 3.0 for every row."""

    class config:  # noqa: N801 - the attribute the ViewPredictor interface has
        coverage, target, encoders = 0.8, "log10", ("constant",)

    def predict(self, blocks):
        return np.full(len(blocks["constant"]), 3.0)

    def predict_interval(self, blocks, coverage):
        n = len(blocks["constant"])
        return np.full(n, 2.5), np.full(n, 3.5)


class _ConstantEncoder:
    name, modality, dim = "constant", "image", 1

    def encode(self, items):
        return np.zeros((len(items), 1), np.float32)


class _ConstantKind:
    calls: list[str] = []

    @classmethod
    def load_folder(cls, model_dir):
        cls.calls.append("load")
        return _ConstantModel(), {"constant": _ConstantEncoder()}, None

    @classmethod
    def check_folder(cls, model_dir):
        cls.calls.append("check")


@pytest.fixture
def constant_kind(monkeypatch, tmp_path) -> Path:
    monkeypatch.setitem(kinds._registered, "test-constant", _ConstantKind)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "test-constant"}))
    return folder


def test_both_shipped_kinds_are_installed_as_entry_points():
    installed = kinds._installed()
    assert installed["thumbview-predictor"] == "thumbview.predict.folder"
    assert installed["thumbview-finetuned"] == "thumbview.finetune.model"


def test_a_registered_kind_loads_through_the_inference_layer(constant_kind):
    from PIL import Image

    LoadedPredictor.check(constant_kind)
    loaded = LoadedPredictor.load(constant_kind)
    assert _ConstantKind.calls[-2:] == ["check", "load"] and loaded.kind == "test-constant"
    (pred,) = loaded.predict_images([Image.new("RGB", (8, 8))], ["x.jpg"])
    assert pred.log10 == 3.0 and pred.low < pred.views < pred.high


def test_a_folder_of_no_known_kind_gets_the_original_loaders_message(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": "someone-elses"}))
    with pytest.raises(ArtifactError, match="model.safetensors|config"):
        LoadedPredictor.load(tmp_path)
    with pytest.raises(ArtifactError, match="no such model folder"):
        LoadedPredictor.load(tmp_path / "missing")


def test_a_kind_without_its_package_says_how_to_fix_it(monkeypatch, tmp_path):
    monkeypatch.setattr(kinds, "_installed", lambda: {})
    with pytest.raises(kinds.KindError, match="pip install -e"):
        LoadedPredictor.load(tmp_path)


def test_model_format_is_cheap_and_tolerant(tmp_path):
    assert kinds.model_format(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text("{not json")
    assert kinds.model_format(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"format": "thumbview-finetuned"}))
    assert kinds.model_format(tmp_path) == "thumbview-finetuned"


def test_the_default_kind_is_the_frozen_feature_format():
    from thumbview.predict.model import FORMAT

    assert kinds.DEFAULT_KIND == FORMAT and FORMAT in kinds._installed()
