"""Issue 28 through the CLI runner: context the user controls, and a useless model says so.

A model trained on 2006-2015 videos (synthetic, dates moved back ten years, views counted
on 2016-01-01), asked without context, predicts for its own median video and says what it
assumed; `--published` is used by predict, compare and explain (which shows predict's out-of-range
line); `--subscribers` on a model whose data
had no subscribers is said to be ignored. A model trained on shuffled views is flagged by
`train`, `predict`, `explain`, `compare` and `frames` (the bot and the page: test_bot_cli.py,
test_serve_api.py, test_serve_browser.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_cli import _tiny_video, invoke, ok


def _move_to_2006_2015(root: Path, shuffle_views: bool = False) -> Path:
    """Publication dates mapped from 2015-2025 onto 2006-2015, views counted 2016-01-01; no
    subscribers column (so the model cannot use one)."""
    table = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    when = pd.to_datetime(table["published_at"], utc=True)
    start, end = pd.Timestamp("2015-01-01", tz="UTC"), pd.Timestamp("2025-01-01", tz="UTC")
    share = (when - start) / (end - start)
    new_start = pd.Timestamp("2006-01-01", tz="UTC")
    moved = new_start + share * (pd.Timestamp("2015-12-31", tz="UTC") - new_start)
    table["published_at"] = moved.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    table["collected_at"] = "2016-01-01T00:00:00Z"
    table = table.drop(columns=["subscribers"])
    if shuffle_views:  # views that no thumbnail, title or date explains
        table["views"] = np.random.default_rng(0).permutation(table["views"].to_numpy())
    table.to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def old_model(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ctx")
    ok("synth", root / "data", "--n", "150", "--seed", "3")
    data = _move_to_2006_2015(root / "data")
    trained = ok(
        "train", data, "--encoders", "visual,context", "--out", root / "m", "--holdout", "0.25"
    )
    images = sorted((data / "images").glob("*.jpg"))
    views = pd.read_csv(data / "metadata.csv")["views"]
    return {"model": root / "m", "images": images, "train": trained.output, "views": views}


@pytest.fixture(scope="module")
def useless_model(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("noskill")
    ok("synth", root / "data", "--n", "150", "--seed", "4")
    data = _move_to_2006_2015(root / "data", shuffle_views=True)
    trained = ok("train", data, "--encoders", "visual", "--out", root / "m", "--holdout", "0.3")
    return {"model": root / "m", "images": sorted((data / "images").glob("*.jpg")),
            "train": trained.output}  # fmt: skip


def _year(text: str) -> int:
    return int(re.search(r"assumed: published (\d{4})-\d\d-\d\d", text).group(1))


def test_no_context_predicts_for_the_training_median_inside_the_range(old_model):
    a, b = old_model["images"][:2]
    result = ok("predict", old_model["model"], a, b)
    out = " ".join(result.output.split())
    assert 2006 <= _year(out) <= 2015 and "(the training data's medians)" in out
    assert "predicts views about" in out and "after upload" in out
    rows = json.loads(ok("predict", old_model["model"], a, b, "--json").stdout)
    assert all(r["warning"] == "" for r in rows)  # inside the training range
    views = old_model["views"]
    assert all(views.min() <= r["views"] <= views.max() for r in rows)
    assert rows[0]["assumed"].startswith("assumed: published 20")
    assert "years after upload" in rows[0]["predicts"]
    # the old fixed 2020 date is outside this model's years, and the output says so
    late = json.loads(ok("predict", old_model["model"], a, "--published", "2020-01-01",
                         "--json").stdout)  # fmt: skip
    assert "publication year" in late[0]["warning"] and late[0]["views"] != rows[0]["views"]
    assert "published" not in late[0]["assumed"]


def test_compare_accepts_published_and_uses_it(old_model):
    a, b = old_model["images"][:2]
    got = {}
    for year in ("2007", "2014"):
        result = ok("compare", a, b, "-m", old_model["model"], "--published", f"{year}-03-01",
                    "--json")  # fmt: skip
        payload = json.loads(result.stdout)
        assert "published" not in payload["assumed"] and payload["predicts"]
        got[year] = sorted(c["views"] for c in payload["candidates"])
    assert got["2007"] != got["2014"]
    table = ok("compare", a, b, "-m", old_model["model"], "--published", "2010-01-01")
    assert "predicts views about" in " ".join(table.output.split())


def test_explain_shows_the_out_of_range_line_predict_shows(old_model):
    """`explain` of a 2020 upload to a 2006-2015 model: the same line as predict, in --json
    (`warning`) and in the table's output; none for a date inside the training years."""
    a, model = old_model["images"][0], old_model["model"]
    late = ("--published", "2020-01-01")
    said = json.loads(ok("predict", model, a, *late, "--json").stdout)[0]["warning"]
    assert "publication year 2020 is outside the training years" in said
    ex = json.loads(ok("explain", model, a, *late, "--json").stdout)
    assert ex["warning"] == said
    assert said in " ".join(ok("explain", model, a, *late).output.split())
    inside = json.loads(ok("explain", model, a, "--published", "2010-06-01", "--json").stdout)
    assert inside["warning"] == "" and inside["views"] != ex["views"]  # the date is used
    assert "warning" not in ok("explain", model, a, "--published", "2010-06-01").output


def test_an_input_the_model_cannot_use_is_said_to_be_ignored(old_model):
    a = old_model["images"][0]
    runs = [ok("predict", old_model["model"], a, "--subscribers", s, "--json") for s in
            ("100", "5000000")]  # fmt: skip
    rows = [json.loads(r.stdout)[0] for r in runs]
    assert rows[0]["views"] == rows[1]["views"]
    assert rows[0]["ignored"].startswith("ignored: the subscriber count given (the training")
    table = ok("predict", old_model["model"], a, "--subscribers", "100")
    assert "ignored: the subscriber count given" in " ".join(table.output.split())
    bad = invoke("compare", a, a, "-m", old_model["model"], "--channel-videos", "0")
    assert bad.exit_code == 2 and "--channel-videos must be a number >= 1" in bad.output


def test_train_ends_with_its_verdict(old_model):
    assert "verdict: this model" in " ".join(old_model["train"].split())


def test_a_model_worse_than_the_median_is_flagged_everywhere(useless_model, tmp_path):
    said = " ".join(useless_model["train"].split())
    assert re.search(r"verdict: this model (is WORSE than|does not clearly beat) guessing", said)
    assert "will say so beside every result" in said
    model, (a, b, c, d) = useless_model["model"], useless_model["images"][:4]
    out = " ".join(ok("predict", model, a).output.split())
    assert "no demonstrated skill: this model" in out
    assert json.loads(ok("predict", model, a, "--json").stdout)[0]["no_skill_note"]
    assert "no demonstrated skill: this model" in " ".join(ok("explain", model, a).output.split())
    payload = json.loads(ok("compare", a, b, "-m", model, "--json").stdout)
    assert payload["tie"] is True and payload["no_skill_note"].startswith("no demonstrated skill")
    table = ok("compare", a, b, "-m", model).output
    assert "no demonstrated skill at choosing" in " ".join(table.split())
    ranks = re.findall(r"^│ (\S+)\s+│ \S+\.jpg", table, re.MULTILINE)
    assert ranks == ["=1", "=1"]  # ranks shown as a tie, no #1
    video = _tiny_video(tmp_path / "clip.mp4", [a, b, c, d])
    frames = json.loads(ok("frames", video, "-m", model, "--top", "2", "--json").stdout)
    assert frames["no_skill_note"].startswith("no demonstrated skill")
    shown = ok("frames", video, "-m", model, "--top", "2").output
    assert "no demonstrated skill" in " ".join(shown.split())
