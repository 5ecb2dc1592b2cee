"""Regression heads: planted effects recovered, LOO ridge == sklearn RidgeCV, exact round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV

from thumbview.predict.heads import (
    DEFAULT_ALPHAS,
    HeadError,
    MLPHead,
    RidgeHead,
    head_from_arrays,
    ridge_loo,
)

FAST_MLP = {"hidden": 64, "max_epochs": 60, "patience": 8, "batch_size": 128}


def linear_data(n: int, d: int = 40, noise: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, size=d) + rng.normal(size=d)  # scales vary
    w = rng.normal(size=d) / X.std(axis=0)
    return X.astype(np.float32), X @ w / np.sqrt(d) * 3 + noise * rng.normal(size=n)


def interaction_data(n: int, seed: int):
    """y = x0 * x1 + noise: invisible to any linear model, easy for an MLP."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 10)).astype(np.float32)
    return X, X[:, 0] * X[:, 1] + 0.1 * rng.normal(size=n)


@pytest.mark.parametrize("shape", [(200, 30), (60, 300), (150, 150)])
def test_ridge_loo_matches_sklearn_ridgecv(shape):
    rng = np.random.default_rng(1)
    X = rng.normal(size=shape) * rng.uniform(0.1, 3, size=shape[1]) + 1.0
    y = X @ rng.normal(size=shape[1]) / np.sqrt(shape[1]) + rng.normal(size=shape[0]) + 5.0
    alpha, coef, intercept, mse = ridge_loo(X, y, DEFAULT_ALPHAS)
    ref = RidgeCV(alphas=DEFAULT_ALPHAS).fit(X, y)
    assert alpha == ref.alpha_
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-9)
    assert intercept == pytest.approx(ref.intercept_, abs=1e-9)
    assert mse == pytest.approx(-ref.best_score_, rel=1e-8)


def test_ridge_recovers_linear_signal_and_tunes_alpha():
    X, y = linear_data(2000)
    head = RidgeHead().fit(X[:1000], y[:1000])
    assert spearmanr(y[1000:], head.predict(X[1000:])).statistic > 0.9
    assert head.alpha_ in DEFAULT_ALPHAS and head.predict(X).shape == (2000,)
    X, y = linear_data(300, d=100, noise=5.0)  # mostly noise -> heavier penalty
    assert RidgeHead().fit(X, y).alpha_ > head.alpha_


def test_mlp_beats_ridge_on_interaction():
    X, y = interaction_data(3000, seed=0)
    Xt, yt = interaction_data(1000, seed=1)
    ridge = RidgeHead().fit(X, y)
    mlp = MLPHead(**FAST_MLP).fit(X, y)
    rho_ridge = spearmanr(yt, ridge.predict(Xt)).statistic
    rho_mlp = spearmanr(yt, mlp.predict(Xt)).statistic
    assert abs(rho_ridge) < 0.1 and rho_mlp > 0.8, (rho_ridge, rho_mlp)


def test_mlp_history_early_stopping_and_determinism():
    X, y = linear_data(600, d=20)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = MLPHead(**{**FAST_MLP, "patience": 3, "max_epochs": 200}, seed=7).fit(X, y)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = MLPHead(**{**FAST_MLP, "patience": 3, "max_epochs": 200}, seed=7).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    epochs = [h[0] for h in a.history_]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 200  # stopped early
    assert all(len(h) == 3 and h[1] > 0 and h[2] > 0 for h in a.history_)
    assert a.history_[a.best_epoch_ - 1][2] == min(h[2] for h in a.history_)
    c = MLPHead(**{**FAST_MLP, "patience": 3}, seed=8).fit(X, y)
    assert not np.array_equal(a.predict(X), c.predict(X))


def _round_trip(head, tmp_path):
    """Through a real safetensors file, as the predictor saves it."""
    save_file({k: np.ascontiguousarray(v) for k, v in head.to_arrays().items()}, tmp_path / "h.st")
    return head_from_arrays(head.config(), load_file(tmp_path / "h.st"))


@pytest.mark.parametrize("make", [lambda: RidgeHead(), lambda: MLPHead(**FAST_MLP)])
def test_round_trip_is_exact(make, tmp_path):
    X, y = linear_data(300, d=12)
    head = make().fit(X, y)
    again = _round_trip(head, tmp_path)
    assert type(again) is type(head)
    np.testing.assert_array_equal(again.predict(X), head.predict(X))
    assert again.config() == head.config()


def test_bad_inputs_give_clear_errors():
    X, y = linear_data(50, d=5)
    with pytest.raises(HeadError, match="not fitted"):
        RidgeHead().predict(X)
    with pytest.raises(HeadError, match="not fitted"):
        MLPHead().predict(X)
    head = RidgeHead().fit(X, y)
    with pytest.raises(HeadError, match="4 columns but the head was fit on 5"):
        head.predict(X[:, :4])
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(HeadError, match="NaN"):
        RidgeHead().fit(X_nan, y)
    with pytest.raises(HeadError, match="target has shape"):
        RidgeHead().fit(X, y[:-1])
    with pytest.raises(HeadError, match="2-d"):
        RidgeHead().fit(X[:, 0], y)
    with pytest.raises(HeadError, match="dropout"):
        MLPHead(dropout=1.5)
    with pytest.raises(HeadError, match="unknown head kind"):
        head_from_arrays({"kind": "forest"}, {})


def test_standardize_false_keeps_caller_scaling():
    """Without inner standardising, shrinking a column's scale makes ridge penalise it more."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = X[:, 0] + X[:, 1] + 0.1 * rng.normal(size=400)
    X[:, 1] *= 0.01
    raw = RidgeHead(alphas=[100.0], standardize=False).fit(X, y)
    std = RidgeHead(alphas=[100.0]).fit(X, y)
    assert raw.coef_[1] * 0.01 < 0.1 < std.coef_[1]  # column 1's effect crushed only in raw


# ----- gbm -------------------------------------------------------------------------------------
def _interaction_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = X[:, 0] + np.sign(X[:, 1] * X[:, 2]) + rng.normal(0, 0.3, n)
    return X, y, rng.integers(0, 40, n)


def test_gbm_head_matches_sklearn_round_trips_and_explains_additively():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from thumbview.predict.heads import GBMHead, head_from_arrays

    X, y, groups = _interaction_data()
    head = GBMHead(max_iter=60).fit(X, y, groups)
    reference = HistGradientBoostingRegressor(
        max_iter=head.n_trees_, early_stopping=False, random_state=0, learning_rate=0.06,
        max_leaf_nodes=15, min_samples_leaf=30, l2_regularization=1.0,
    ).fit(X, y)  # fmt: skip
    assert np.allclose(head.predict(X), reference.predict(X), atol=1e-10)
    again = head_from_arrays(head.config(), head.to_arrays())
    assert np.array_equal(again.predict(X), head.predict(X))
    bias, contrib = head.contributions(X[:20])
    assert np.allclose(bias + contrib.sum(axis=1), head.predict(X[:20]), atol=1e-10)
    # the planted features carry the contributions, the noise columns little
    assert np.abs(contrib[:, :3]).mean() > 3 * np.abs(contrib[:, 3:]).mean()


def test_gbm_early_stopping_keeps_few_trees_on_pure_noise():
    from thumbview.predict.heads import GBMHead

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(300, 4)), rng.normal(size=300)
    assert GBMHead(max_iter=200).fit(X, y, rng.integers(0, 30, 300)).n_trees_ < 60


def test_gbm_head_says_so_when_scikit_learn_stores_trees_differently():
    from sklearn.ensemble import HistGradientBoostingRegressor

    from thumbview.predict.heads import HeadError, _tree_arrays

    rng = np.random.default_rng(2)
    est = HistGradientBoostingRegressor(max_iter=5).fit(
        rng.normal(size=(80, 3)), rng.normal(size=80)
    )
    baseline, nodes = _tree_arrays(est)
    assert len(nodes) == 5 and np.isfinite(baseline)
    del est._predictors  # what a scikit-learn that renamed its internals would look like
    with pytest.raises(HeadError, match="scikit-learn .* stores its boosted trees differently"):
        _tree_arrays(est)


def test_view_predictor_with_gbm_head_saves_and_loads(tmp_path):
    from thumbview.predict.model import PredictorConfig, ViewPredictor

    X, y, groups = _interaction_data(seed=2)
    model = ViewPredictor(PredictorConfig(encoders=("f",), head="gbm")).fit({"f": X}, y, groups)
    model.save(tmp_path)
    again = ViewPredictor.load(tmp_path)
    assert np.array_equal(again.predict({"f": X}), model.predict({"f": X}))
    assert model.cv_metrics_.spearman > 0.5


# ----- stacked ---------------------------------------------------------------------------------
def _wide_and_narrow(n=500, seed=3):
    """A wide block with a linear signal and a narrow block with an interaction."""
    rng = np.random.default_rng(seed)
    wide, narrow = rng.normal(size=(n, 80)), rng.normal(size=(n, 3))
    y = wide[:, :5].sum(axis=1) * 0.4 + 1.5 * np.sign(narrow[:, 0] * narrow[:, 1])
    return {"wide": wide, "narrow": narrow}, y + rng.normal(0, 0.3, n), rng.integers(0, 50, n)


def test_stacked_head_is_the_average_of_its_parts_and_explains_exactly():
    from thumbview.predict.heads import GBMHead, RidgeHead, StackedHead

    blocks, y, groups = _wide_and_narrow()
    X = np.concatenate([blocks["wide"], blocks["narrow"]], axis=1)
    cols = [80, 81, 82]
    head = StackedHead(cols, max_iter=80).fit(X, y, groups)
    ridge = RidgeHead(standardize=False).fit(X, y)
    trees = GBMHead(max_iter=80).fit(X[:, cols], y, groups)
    assert np.allclose(head.predict(X), (ridge.predict(X) + trees.predict(X[:, cols])) / 2)
    bias, contrib = head.contributions(X[:30])
    assert np.allclose(bias + contrib.sum(axis=1), head.predict(X[:30]), atol=1e-9)
    # only the planted columns matter: 5 linear wide columns and the 2 interacting narrow ones
    planted = np.abs(contrib[:, [0, 1, 2, 3, 4, 80, 81]]).mean()
    assert planted > 4 * np.abs(contrib[:, 10:80]).mean()


def test_view_predictor_stacked_beats_each_part_on_mixed_signal_and_round_trips(tmp_path):
    from thumbview.predict.model import PredictorConfig, ViewPredictor

    blocks, y, groups = _wide_and_narrow()
    test_blocks, y_test, _ = _wide_and_narrow(seed=4)
    scores = {}
    for head in ("ridge", "gbm", "stacked"):
        encoders = ("narrow",) if head == "gbm" else ("wide", "narrow")
        model = ViewPredictor(PredictorConfig(encoders=encoders, head=head)).fit(blocks, y, groups)
        scores[head] = np.corrcoef(model.predict(test_blocks), y_test)[0, 1]
    assert scores["stacked"] > max(scores["ridge"], scores["gbm"]) + 0.02
    model.save(tmp_path)
    again = ViewPredictor.load(tmp_path)
    assert np.array_equal(again.predict(test_blocks), model.predict(test_blocks))


def test_stacked_head_without_a_narrow_block_says_why():
    from thumbview.predict.model import PredictorConfig, PredictorError, ViewPredictor

    blocks, y, groups = _wide_and_narrow()
    with pytest.raises(PredictorError, match="narrow block"):
        ViewPredictor(PredictorConfig(encoders=("wide",), head="stacked")).fit(blocks, y, groups)
