"""Prediction explanations: additive splits that recover planted effects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thumbview.embed.visual import FEATURE_NAMES, N_FEATURES
from thumbview.explain import explain_prediction
from thumbview.predict.explain import (
    ExplainError,
    explain_row,
    integrated_gradients,
    linear_attribution,
)
from thumbview.predict.model import PredictorConfig, PredictorError, ViewPredictor

BRIGHT = FEATURE_NAMES.index("brightness")
NAMES = {"visual": list(FEATURE_NAMES), "title": None}


def _blocks(n: int, seed: int = 0):
    """Visual descriptors with a planted brightness effect (+0.6 log10 per sd), noise titles."""
    rng = np.random.default_rng(seed)
    visual = rng.normal(0.5, 0.2, (n, N_FEATURES))  # (N, 26)
    title = rng.normal(0.0, 1.0, (n, 8))  # (N, 8)
    y = 4.0 + 3.0 * (visual[:, BRIGHT] - 0.5) + 0.05 * rng.normal(size=n)  # 3 * 0.2 sd = 0.6
    return {"visual": visual, "title": title}, y


def _row(blocks, brightness: float):
    """One row (1, D) per block: every feature at its training mean except brightness."""
    visual = blocks["visual"].mean(0)
    visual[BRIGHT] = brightness
    return {"visual": visual[None, :], "title": blocks["title"].mean(0, keepdims=True)}


@pytest.fixture(scope="module")
def ridge():
    blocks, y = _blocks(300)
    model = ViewPredictor(PredictorConfig(encoders=("visual", "title")))
    return model.fit(blocks, y, calibrate=False), blocks


def test_linear_attribution_is_exact_with_column_scaling():
    rng = np.random.default_rng(1)
    x, coef, mean, scale = rng.normal(size=(4, 5))
    scale = np.abs(scale) + 0.5
    baseline, contrib = linear_attribution(x, coef, 0.7, mean, scale)
    assert baseline + contrib.sum() == pytest.approx(((x - mean) / scale) @ coef + 0.7, abs=1e-12)
    assert baseline == pytest.approx(((0 - mean) / scale) @ coef + 0.7, abs=1e-12)


def test_integrated_gradients_matches_a_quadratic_analytically():
    """For f(x) = sum(x**2) the midpoint rule is exact: contribution_j = x_j**2."""
    x = np.array([1.0, -2.0, 0.5])
    baseline, contrib = integrated_gradients(lambda X: (X**2).sum(dim=1), x, steps=4)
    assert baseline == 0.0
    np.testing.assert_allclose(contrib, x**2, atol=1e-12)


def test_ridge_split_is_exact_and_names_the_planted_feature(ridge):
    model, blocks = ridge
    for brightness, sign in ((0.9, 1), (0.1, -1)):
        row = _row(blocks, brightness)
        ex = explain_row(model, row, NAMES, top=5)
        assert ex.method == "exact-linear"
        assert ex.log10 == pytest.approx(model.predict(row)[0], abs=1e-12)
        total = ex.baseline_log10 + sum(b.contribution_log10 for b in ex.blocks)
        assert total == pytest.approx(ex.log10, abs=1e-10)
        assert abs(ex.residual_log10) < 1e-10
        top = ex.features[0]
        assert top.name == "brightness" and top.value == pytest.approx(brightness)
        assert np.sign(top.contribution_log10) == sign
        assert top.contribution_log10 == pytest.approx(3.0 * (brightness - 0.5), abs=0.1)
        assert top.factor == pytest.approx(10**top.contribution_log10)
        assert top.typical == pytest.approx(blocks["visual"][:, BRIGHT].mean())
        assert len(ex.features) == 5
        assert [abs(f.contribution_log10) for f in ex.features] == sorted(
            (abs(f.contribution_log10) for f in ex.features), reverse=True
        )


def test_baseline_is_the_prediction_at_the_training_mean(ridge):
    model, blocks = ridge
    mean_row = {k: v.mean(0, keepdims=True) for k, v in blocks.items()}
    ex = explain_row(model, _row(blocks, 0.9), NAMES)
    assert ex.baseline_log10 == pytest.approx(model.predict(mean_row)[0], abs=1e-10)
    assert ex.baseline_log10 == pytest.approx(model.head_.intercept_, abs=1e-12)
    # dense blocks come as one number and never as named features
    kinds = {b.name: b.interpretable for b in ex.blocks}
    assert kinds == {"visual": True, "title": False}
    assert all(f.block == "visual" for f in ex.features)


def test_mlp_split_is_approximately_additive():
    blocks, y = _blocks(240, seed=2)
    config = PredictorConfig(
        encoders=("visual", "title"), head="mlp", mlp={"hidden": 32, "max_epochs": 40}
    )
    model = ViewPredictor(config).fit(blocks, y, calibrate=False)
    row = _row(blocks, 0.95)
    ex = explain_row(model, row, NAMES, top=3)
    assert ex.method == "integrated-gradients"
    assert ex.log10 == pytest.approx(model.predict(row)[0], abs=1e-9)
    spread = abs(ex.log10 - ex.baseline_log10)
    assert abs(ex.residual_log10) < 0.02 * max(spread, 0.1)
    assert ex.features[0].name == "brightness" and ex.features[0].contribution_log10 > 0


@pytest.mark.parametrize("head", ["gbm", "stacked"])
def test_tree_heads_split_exactly_and_name_the_planted_feature(head):
    blocks, y = _blocks(300, seed=3)
    encoders = ("visual",) if head == "gbm" else ("visual", "title")
    model = ViewPredictor(PredictorConfig(encoders=encoders, head=head))
    model.fit(blocks, y, np.arange(300) % 40, calibrate=False)
    row = _row(blocks, 0.95)
    ex = explain_row(model, row, NAMES, top=3)
    assert ex.log10 == pytest.approx(model.predict(row)[0], abs=1e-9)
    assert abs(ex.residual_log10) < 1e-9  # tree paths (and ridge terms) add up exactly
    assert ex.features[0].name == "brightness" and ex.features[0].contribution_log10 > 0


def test_bad_inputs_are_refused_in_words(ridge):
    model, blocks = ridge
    with pytest.raises(ExplainError, match="top must be"):
        explain_row(model, _row(blocks, 0.5), NAMES, top=0)
    with pytest.raises(PredictorError, match="expected \\(1, D\\)"):
        explain_row(model, {k: v[:3] for k, v in blocks.items()}, NAMES)
    with pytest.raises(PredictorError, match="missing feature block 'title'"):
        explain_row(model, {"visual": blocks["visual"][:1]}, NAMES)


def test_explain_a_saved_model_end_to_end(tmp_path):
    from thumbview.data.dataset import load_dataset
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.inference import LoadedPredictor
    from thumbview.inference.predictor import predict_files
    from thumbview.predict.workflow import train

    data = load_dataset(make_synthetic(tmp_path / "synth", SynthConfig(n=80, seed=0)))
    out = tmp_path / "model"
    train(data, PredictorConfig(encoders=("visual",)), out, holdout_frac=0)
    image = data.paths[0]
    ex = explain_prediction(LoadedPredictor.load(out), image, top=6)
    assert ex.image == str(image) and len(ex.features) == 6
    assert {f.name for f in ex.features} <= set(FEATURE_NAMES)
    assert ex.log10 == pytest.approx(predict_files(out, [image])[0].log10, abs=1e-9)
    assert ex.baseline_log10 + ex.blocks[0].contribution_log10 == pytest.approx(ex.log10)
    assert json.loads(json.dumps(ex.to_json_dict()))["features"][0]["name"] in FEATURE_NAMES
    with pytest.raises(ValueError, match="no such model folder"):
        LoadedPredictor.load(tmp_path / "nope")


def test_a_mixed_block_lists_only_its_named_columns():
    """`imagenet`: 1,280 unnamed pooled features + named class probabilities. The planted
    effect sits on an unnamed column and on one named class; only named columns are listed,
    and the block's total still carries the unnamed one."""
    from thumbview.embed.imagenet import ImagenetEncoder
    from thumbview.predict.explain import interpretable_names

    names = interpretable_names(ImagenetEncoder())
    assert names[0] == "" and "espresso" in names[1280 + 967]
    rng = np.random.default_rng(1)
    block = rng.normal(0, 1, (300, 6))  # columns 0-2 unnamed, 3-5 named
    y = 2.0 * block[:, 0] + 1.0 * block[:, 4] + 0.01 * rng.normal(size=300)
    model = ViewPredictor(PredictorConfig(encoders=("imagenet",))).fit(
        {"imagenet": block}, y, calibrate=False
    )
    row = {"imagenet": np.array([[3.0, 0, 0, 0, 1.0, 0]])}
    ex = explain_row(model, row, {"imagenet": ["", "", "", "cat", "dog", "cup"]}, top=5)
    assert [f.name for f in ex.features][0] == "dog"
    assert {f.name for f in ex.features} <= {"cat", "dog", "cup"}
    assert ex.blocks[0].contribution_log10 == pytest.approx(ex.log10 - ex.baseline_log10, abs=1e-9)


def test_explain_shows_a_year_as_a_year_and_explains_cyclic_columns(tmp_path):
    """A context model's explanation: the publication year reads "2020", never "2K", and the
    clock-angle columns carry plain words next to their names."""
    import re

    from typer.testing import CliRunner

    from thumbview.cli import app
    from thumbview.data.dataset import load_dataset
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.predict.workflow import train

    data = load_dataset(make_synthetic(tmp_path / "synth", SynthConfig(n=80, seed=0)))
    train(data, PredictorConfig(encoders=("context",)), tmp_path / "model", holdout_frac=0)
    said = CliRunner().invoke(
        app, ["explain", str(tmp_path / "model"), str(data.paths[0]), "--top", "8"],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert said.exit_code == 0, said.output
    year = next(line for line in said.output.splitlines() if "publication year" in line)
    assert re.search(r"\b(19|20)\d\d\b", year) and "2K" not in year, year
    assert "upload time as a clock position" in said.output
