"""The ablation: every encoder subset x head on the same folds, planted signal recovered."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from thumbview.cli import app
from thumbview.data.synth import SynthConfig, make_synthetic
from thumbview.predict.ablation import ablate, markdown_table, plot_bars, subsets, write_csv


def _planted(n=360, seed=0):
    """`lin` carries a linear effect, `inter` only an interaction (x0 * x1), `noise` nothing."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 60, n).astype(str)
    lin, inter, noise = (rng.normal(size=(n, 3)) for _ in range(3))
    y = 0.6 * lin[:, 0] + 0.8 * np.sign(inter[:, 0] * inter[:, 1]) + rng.normal(0, 0.5, n)
    return {"lin": lin, "inter": inter, "noise": noise}, y, groups


def test_subsets_are_all_non_empty_combinations():
    assert subsets(["a", "b", "c"]) == [
        ("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")
    ]  # fmt: skip


def test_ablation_recovers_planted_blocks_and_the_interaction(tmp_path):
    blocks, y, groups = _planted()
    rows = ablate(blocks, y, groups, k=3, gbm_iter=120)
    got = {(r.encoders, r.head): r for r in rows}
    assert len(rows) == 7 * 3  # every block is narrow: all three heads everywhere
    assert got[("lin", "ridge")].spearman > 0.3 > got[("noise", "ridge")].spearman
    assert abs(got[("noise", "ridge")].spearman) < 0.15
    # only trees can use an interaction: gbm beats ridge on `inter`, ridge sees ~nothing
    assert got[("inter", "gbm")].spearman > got[("inter", "ridge")].spearman + 0.3
    assert got[("lin+inter", "stacked")].spearman > got[("lin", "ridge")].spearman
    assert all(r.n_folds == 3 and r.spearman_sd >= 0 for r in rows)
    csv = write_csv(rows, tmp_path / "a.csv").read_text().splitlines()
    assert len(csv) == 22 and csv[0].startswith("encoders,head,spearman")
    assert plot_bars(rows, tmp_path / "a.png").stat().st_size > 1000
    assert markdown_table(rows).count("\n") == 22


def test_cli_cv_ablate_writes_csv_and_chart(tmp_path):
    root = tmp_path / "data"
    make_synthetic(root, SynthConfig(n=90, seed=2, n_channels=25, width=64, height=36))
    res = CliRunner().invoke(
        app,
        [
            "cv",
            str(root),
            "--encoders",
            "context,title-desc",
            "--ablate",
            "--json",
            "-k",
            "3",
            "--out",
            str(tmp_path / "abl"),
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["protocol"] == "channel-disjoint"
    names = {(r["encoders"], r["head"]) for r in got["rows"]}
    assert ("context+title-desc", "stacked") in names and ("title-tfidf", "ridge") in names
    assert (tmp_path / "abl" / "ablation.csv").exists() and (
        tmp_path / "abl" / "ablation.png"
    ).exists()


def test_wide_blocks_get_ridge_only():
    rng = np.random.default_rng(0)
    blocks = {"wide": rng.normal(size=(60, 100)), "narrow": rng.normal(size=(60, 3))}
    rows = ablate(blocks, rng.normal(size=60), None, k=3, gbm_iter=5)
    got = sorted((r.encoders, r.head) for r in rows)
    assert ("wide", "ridge") in got and ("wide", "gbm") not in got
    assert not any(head == "gbm" and "wide" in enc for enc, head in got)
    assert ("narrow+wide", "stacked") in got or ("wide+narrow", "stacked") in got


def test_chosen_combos_score_only_those_and_match_the_full_ablation():
    blocks, y, groups = _planted(n=240)
    full = {(r.encoders, r.head): r for r in ablate(blocks, y, groups, k=3, gbm_iter=0)}
    rows = ablate(blocks, y, groups, k=3, gbm_iter=0, combos=[("lin",), ("lin", "noise")])
    assert [(r.encoders, r.head) for r in rows] == [("lin", "ridge"), ("lin+noise", "ridge")]
    for r in rows:  # same folds, same fits: the same numbers as in the full ablation
        assert r.spearman == full[(r.encoders, r.head)].spearman
