"""Metrics, channel-disjoint splits, cross-validation against baselines, and the PNG plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from thumbview.predict.crossval import (
    CVResult,
    EvalResult,
    EvaluationError,
    Metrics,
    compute_metrics,
    cross_validate,
    evaluate_predictor,
    group_kfold,
    group_train_test_split,
)
from thumbview.predict.model import PredictorConfig, ViewPredictor
from thumbview.predict.plots import (
    PlotError,
    format_factor,
    format_views,
    plot_pred_vs_actual,
    plot_residual_hist,
    plot_training_curve,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(n: int = 800, seed: int = 0):
    """y = X @ w + noise in an informative 'visual' block, next to a pure-noise 'clip' block."""
    rng = np.random.default_rng(seed)
    visual = rng.normal(size=(n, 10)).astype(np.float32)
    clip = rng.normal(size=(n, 48)).astype(np.float32)
    y = 4.0 + visual @ rng.normal(size=10) * 0.3 + 0.15 * rng.normal(size=n)
    groups = np.array([f"ch{c}" for c in rng.integers(0, 90, size=n)], dtype=object)
    return {"visual": visual, "clip": clip}, y, groups


def test_compute_metrics_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = compute_metrics(y, y)
    assert (m.spearman, m.pearson, m.mae_log10, m.r2, m.n) == (1.0, 1.0, 0.0, 1.0, 4)
    m = compute_metrics(y, [4.0, 3.0, 2.0, 1.0])
    assert m.spearman == pytest.approx(-1.0) and m.mae_log10 == 2.0
    assert set(m.to_dict()) == {"spearman", "pearson", "mae_log10", "r2", "n"}


def test_compute_metrics_degenerate_inputs_give_nan_not_crash():
    const = compute_metrics([1.0, 2.0, 3.0, 4.0], [3.0] * 4)
    assert math.isnan(const.spearman) and math.isnan(const.pearson)
    assert const.r2 == pytest.approx(-0.2) and const.mae_log10 == 1.0
    tiny = compute_metrics([1.0, 2.0], [1.0, 3.0])
    assert math.isnan(tiny.spearman) and tiny.n == 2
    assert math.isnan(compute_metrics([], []).mae_log10)
    with pytest.raises(EvaluationError, match="equal-length"):
        compute_metrics([1.0, 2.0], [1.0])
    with pytest.raises(EvaluationError, match="finite"):
        compute_metrics([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_kfold_never_shares_a_group(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, size=60)  # very unequal channels
    groups = np.repeat([f"c{i}" for i in range(60)], sizes)
    folds = group_kfold(groups, k=5, seed=seed)
    assert len(folds) == 5
    tests = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(groups)))  # a partition
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(groups)
    fold_sizes = [len(t) for _, t in folds]
    assert max(fold_sizes) - min(fold_sizes) <= sizes.max()  # row-balanced
    again = group_kfold(groups, k=5, seed=seed)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))


def test_group_kfold_without_groups_and_missing_ids():
    folds = group_kfold(None, k=4, seed=0, n=10)
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(10))
    groups = np.array(["a", "a", None, None, "b", "b", ""], dtype=object)
    folds = group_kfold(groups, k=2, seed=0)  # missing ids are singleton groups
    for train, test in folds:
        assert not {"a", "b"} & set(groups[train]) & set(groups[test])
    with pytest.raises(EvaluationError, match="cannot make 5 folds from 3 groups"):
        group_kfold(["a", "b", "c"], k=5)
    with pytest.raises(EvaluationError, match="groups or the number of rows"):
        group_kfold(None, k=2)


def test_group_train_test_split():
    groups = np.repeat(np.arange(100), 10)
    train, test = group_train_test_split(groups, test_frac=0.25, seed=3)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == 1000 and 0.2 <= len(test) / 1000 <= 0.3
    train, test = group_train_test_split(None, test_frac=0.2, seed=0, n=50)
    assert len(test) == 10
    with pytest.raises(EvaluationError, match="test_frac"):
        group_train_test_split(groups, test_frac=1.5)


def test_cross_validate_and_baselines():
    blocks, y, groups = synthetic()
    config = PredictorConfig(("visual", "clip"))
    cv, baselines = cross_validate(blocks, y, groups, config, k=4)
    assert isinstance(cv, CVResult) and len(cv.folds) == 4
    assert cv.mean.spearman > 0.9 and cv.mean.n == len(y)
    assert 0 < cv.std["spearman"] < 0.1
    base = {name: b.mean for name, b in baselines.items()}
    assert set(base) == {"global-median", "visual-only", "clip-only"}
    median = base["global-median"]
    assert (
        math.isnan(median.spearman) and -0.1 < median.r2 <= 0.0
    )  # ranks nothing, explains nothing
    assert base["visual-only"].spearman > 0.9
    assert abs(base["clip-only"].spearman) < 0.2  # pure noise block
    assert cv.mean.mae_log10 < median.mae_log10 / 3


def test_evaluate_predictor_json():
    blocks, y, groups = synthetic(300)
    result, cv = evaluate_predictor(blocks, y, groups, PredictorConfig(("visual",)), k=3)
    assert result.model == cv.mean  # one K-fold pass serves both
    assert isinstance(result, EvalResult) and set(result.baselines) == {
        "global-median",
        "visual-only",
    }
    d = result.to_json_dict()
    assert set(d) == {
        "spearman",
        "pearson",
        "mae_log10",
        "r2",
        "n",
        "baselines",
        "interval_coverage",
        "interval_level",
        "interval_method",
        "conditional_coverage",
        "pairwise",
        "warning",
        "out_of_range",
    }
    assert (
        d["interval_coverage"] is None and d["out_of_range"] is None
    )  # no range in CV  # cross-validation scores point predictions only
    assert d["baselines"]["global-median"]["spearman"] is None  # NaN -> null, strict JSON
    json.dumps(d, allow_nan=False)
    # A single-block ridge predictor and the same-block baseline see identical folds.
    assert d["spearman"] == pytest.approx(d["baselines"]["visual-only"]["spearman"], abs=1e-9)


def test_cross_validate_rejects_misaligned_blocks():
    blocks, y, groups = synthetic(100)
    with pytest.raises(EvaluationError, match="'clip' has 99 rows"):
        cross_validate(
            {**blocks, "clip": blocks["clip"][:99]}, y, groups, PredictorConfig(("visual",))
        )


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 200


def test_plots_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.uniform(2, 6, size=300)
    pred = y + rng.normal(0, 0.3, size=300)
    _assert_png(plot_pred_vs_actual(y, pred, tmp_path / "sub" / "pred.png"))
    _assert_png(plot_pred_vs_actual(y - 4, pred - 4, tmp_path / "rel.png", relative=True))
    _assert_png(plot_residual_hist(y - pred, tmp_path / "resid.png", interval=(-0.4, 0.4)))
    history = [(e, 1.0 / e + 0.1, 1.2 / e + 0.15 + 0.002 * e) for e in range(1, 40)]
    _assert_png(plot_training_curve(history, tmp_path / "curve.png"))
    with pytest.raises(PlotError, match="lengths differ"):
        plot_pred_vs_actual(y, pred[:-1], tmp_path / "x.png")
    with pytest.raises(PlotError, match="history"):
        plot_training_curve([(1, 2)], tmp_path / "x.png")


def test_axis_labels_are_in_views():
    assert format_views(np.log10(1001)) == "1K" and format_views(np.log10(1 + 2.5e6)) == "2.5M"
    assert format_factor(1.0) == "\u00d710" and format_factor(np.log10(0.5)) == "\u00d70.5"


def test_metrics_dataclass_is_frozen():
    m = Metrics(0.1, 0.2, 0.3, 0.4, 5)
    with pytest.raises(AttributeError):
        m.n = 3


def test_baselines_are_the_same_model_in_train_and_cv():
    """`cv` and a trained model's saved baselines use one definition (`baseline_config`)."""
    from thumbview.predict.crossval import baseline_config

    config = PredictorConfig(("visual", "clip"), head="mlp", seed=3)
    single = baseline_config(config, "visual")
    assert single.encoders == ("visual",) and single.head == "ridge" and single.seed == 3
    blocks, y, groups = synthetic(200)
    _, baselines = cross_validate(blocks, y, groups, PredictorConfig(("visual", "clip")), k=3)
    folds = group_kfold(groups, 3, 0, n=len(y))
    want = []
    for train, test in folds:
        m = ViewPredictor(single).fit(
            {"visual": blocks["visual"][train]}, y[train], calibrate=False
        )
        want.append(
            compute_metrics(y[test], m.predict({"visual": blocks["visual"][test]})).spearman
        )
    assert baselines["visual-only"].mean.spearman == pytest.approx(np.mean(want), abs=1e-12)


def test_coverage_by_predicted_views_reads_in_order_and_merges_small_sets():
    """D1, D2, ..., D10 in order (not first-seen), and with few rows fewer, larger groups
    instead of deciles of one or two videos each; the command line prints them in order."""
    from thumbview.cli.predict import _print_eval_extras
    from thumbview.predict.crossval import EvalResult, conditional_coverage, coverage_strata

    rng = np.random.default_rng(3)
    pred = rng.normal(size=400)
    cov = conditional_coverage(pred, pred - 1, pred + 1, coverage_strata(pred, [1, 30] * 200))
    assert [r["stratum"] for r in cov["predicted decile"]] == [f"D{k}" for k in range(1, 11)]
    assert [r["stratum"] for r in cov["channel size"]] == ["1 video", "20+ videos"]
    small = rng.normal(size=45)
    ((name, rows),) = conditional_coverage(small, small, small, coverage_strata(small)).items()
    assert name == "predicted views in 2 equal groups" and [r["stratum"] for r in rows] == [
        "G1",
        "G2",
    ]
    assert min(r["n"] for r in rows) >= 20
    from thumbview.cli._shared import console

    with console.capture() as said:
        _print_eval_extras(EvalResult(Metrics(0, 0, 0, 0, 1), {}, conditional_coverage=cov))
    line = " ".join(said.get().split())  # the console wraps at its width
    assert line.index("D2 ") < line.index("D3 ") < line.index("D9 ") < line.index("D10 ")


def test_the_brier_line_says_what_brier_is():
    from thumbview.cli.predict import _pairwise_line

    line = _pairwise_line({"n_pairs": 12, "brier": 0.21, "skilful": None})
    assert "Brier 0.210 (the mean squared miss of those chances" in line
    assert "a coin flip scores 0.250" in line
