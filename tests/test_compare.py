"""Comparing thumbnails: planted effects win, probabilities are exact and symmetric."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from _model_fixture import model_dir  # noqa: F401  (shared session fixture)
from thumbview.compare import (
    CompareError,
    Comparison,
    compare,
    compare_files,
    p_beats_matrix,
    p_best,
    save_side_by_side,
)
from thumbview.data.synth import render_thumbnail
from thumbview.inference import LoadedPredictor


def _thumb(seed: int, **flags: int) -> Image.Image:
    return Image.fromarray(render_thumbnail(np.random.default_rng(seed), flags))


@pytest.fixture(scope="module")
def loaded(model_dir):  # noqa: F811
    return LoadedPredictor.load(model_dir)


@pytest.fixture(scope="module")
def high_low(loaded):
    images = [_thumb(11, warm_colours=1, big_text=1), _thumb(12, dark_blurry=1)]
    return compare(loaded, images, ["high.jpg", "low.jpg"]), images


def test_planted_high_beats_low(high_low):
    result, _ = high_low
    first, second = result.candidates
    assert first.image == "high.jpg" and first.p_best > 0.5
    assert result.p_beats[0][1] > 0.5
    assert first.low < first.views < first.high
    assert first.p_best + second.p_best == pytest.approx(1.0)
    assert result.p_beats[0][1] == pytest.approx(first.p_best)  # two candidates: the same thing
    assert result.descriptors and result.descriptor_scale == "model feature sd"
    spreads = [d.spread for d in result.descriptors]
    assert spreads == sorted(spreads, reverse=True)
    text = [d for d in result.descriptors if d.feature.startswith("text")]
    assert text and all(d.highest == "high.jpg" for d in text)  # the planted big text
    assert all(d.effect is not None for d in result.descriptors)
    readings = [d.note for d in text]  # planted: more text, more views
    assert any(r.startswith("highest in high.jpg; more of it tends to help") for r in readings)
    assert all(d.note == d.reading(["high.jpg", "low.jpg"]) for d in result.descriptors)


def test_identical_inputs_give_exactly_one_half(loaded):
    img = _thumb(5, warm_colours=1)
    result = compare(loaded, [img, img.copy()], ["a.jpg", "b.jpg"])
    assert result.p_beats[0][1] == 0.5 and result.p_beats[1][0] == 0.5
    assert [c.p_best for c in result.candidates] == [0.5, 0.5]
    assert result.descriptors == ()


def test_pair_probabilities_sum_to_one_exactly():
    rng = np.random.default_rng(0)
    atoms = np.sort(rng.normal(0, 0.4, 100))
    pred = rng.normal(4, 0.3, 6)
    p = p_beats_matrix(pred, atoms)
    assert np.allclose(p + p.T, 1.0, atol=1e-15, rtol=0)
    assert np.all(np.diag(p) == 0.5)
    # a plain reference: every pair of atoms, ties half
    a, b = pred[0] + atoms[:, None], pred[1] + atoms[None, :]
    assert p[0, 1] == pytest.approx(((a > b) + 0.5 * (a == b)).mean(), abs=1e-12)
    best = p_best(pred, atoms)
    assert best.sum() == pytest.approx(1.0) and np.argmax(best) == np.argmax(pred)


def test_json_round_trip_and_picture(high_low, tmp_path):
    result, images = high_low
    again = Comparison.from_json_dict(json.loads(json.dumps(result.to_json_dict())))
    assert again == result
    png = save_side_by_side(result, images, tmp_path / "side.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width <= 1260  # readable when shown at full size


def test_images_x_titles_and_files(model_dir, tmp_path):  # noqa: F811
    paths = []
    for i, flags in enumerate(({"warm_colours": 1}, {})):
        paths.append(tmp_path / f"t{i}.jpg")
        _thumb(20 + i, **flags).save(paths[-1])
    result, images = compare_files(model_dir, paths, titles=["one", "two"])
    assert len(result.candidates) == 4 and len(images) == 2
    assert {(c.image, c.title) for c in result.candidates} == {
        (p.name, t) for p in paths for t in ("one", "two")
    }
    assert sum(c.p_best for c in result.candidates) == pytest.approx(1.0)


def test_bad_inputs(loaded):
    img = _thumb(1)
    with pytest.raises(CompareError, match="at least two"):
        compare(loaded, [img], ["a"])
    with pytest.raises(CompareError, match="names"):
        compare(loaded, [img, img], ["a"])
    with pytest.raises(CompareError, match="needs the SAE"):
        compare(loaded, [img, img], ["a", "b"], study=object())


def test_a_model_without_a_pairwise_model_says_it_falls_back(model_dir, tmp_path):  # noqa: F811
    """Independent residuals (the method that scored like a coin flip on same-channel pairs)
    are used only when the model has no pairwise calibration, and then said in one line."""
    import shutil

    from typer.testing import CliRunner

    from thumbview.cli import app
    from thumbview.compare import FALLBACK_NOTE, INDEPENDENCE
    from thumbview.predict.pairwise import METHOD, PAIRWISE_DIR

    old = tmp_path / "old-model"
    shutil.copytree(model_dir, old, ignore=shutil.ignore_patterns(PAIRWISE_DIR))
    images = [_thumb(11, warm_colours=1, big_text=1), _thumb(12, dark_blurry=1)]
    current = compare(LoadedPredictor.load(model_dir), images, ["a.jpg", "b.jpg"])
    assert current.assumption == METHOD and current.note == ""
    fallback = compare(LoadedPredictor.load(old), images, ["a.jpg", "b.jpg"])
    assert fallback.assumption == INDEPENDENCE and fallback.note == FALLBACK_NOTE
    assert "coin flip" in fallback.note
    # the fallback's verdict: the leader must beat the runner-up 3 times in 4
    assert fallback.reliable == (fallback.p_beats[0][1] >= 0.75) and fallback.verdict
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for image, path in zip(images, paths, strict=True):
        image.save(path)
    said = CliRunner().invoke(app, ["compare", *map(str, paths), "--model", str(old)])
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())  # the console wraps at its width
    assert text.count("independent residuals") == 1 and f"note: {FALLBACK_NOTE}" in text


def test_best_chances_use_the_pairwise_model_when_there_is_one(model_dir):  # noqa: F811
    """The bot ranks its candidates by the rule compare uses: the calibrated difference model
    when the predictor has one, else independent residuals and the fallback note."""
    from thumbview.compare import FALLBACK_NOTE, best_chances, p_best, residual_atoms
    from thumbview.predict import pairwise as pw

    loaded = LoadedPredictor.load(model_dir)
    pred = np.array([3.4, 3.5, 3.3])
    assert loaded.pairwise is not None
    chances, note = best_chances(loaded, pred)
    assert note == "" and np.allclose(chances, pw.p_best(pred, loaded.pairwise.calibration_.sigma))
    loaded.__dict__["pairwise"] = None  # as a model saved before pairwise calibrations
    chances, note = best_chances(loaded, pred)
    assert note == FALLBACK_NOTE
    assert np.allclose(chances, p_best(pred, residual_atoms(loaded.model)))
    assert chances.argmax() == 1 and abs(chances.sum() - 1) < 1e-9


def test_a_descriptor_reading_names_ties_together_and_says_help_or_hurt():
    """Never "highest in A" when A, B and C are equal; help or hurt is the model's sign."""
    from thumbview.compare import DescriptorDiff

    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    tied = DescriptorDiff("brightness", (0.7, 0.7, 0.7, 0.2), 1.0, "a.jpg", effect=0.05)
    said = tied.reading(names)
    assert said.startswith("lowest in d.jpg; more of it tends to help"), said
    assert "highest in a.jpg" not in said and "x1.12" in said  # 10 ** 0.05
    two = DescriptorDiff("text boxes", (3.0, 3.0, 0.0, 0.0), 1.0, "a.jpg", effect=-0.1)
    assert two.reading(names).startswith("highest in a.jpg and b.jpg; more of it tends to hurt")
    spread = DescriptorDiff("contrast", (1.0, 2.0, 3.0, 4.0), 1.0, "d.jpg", effect=None)
    assert spread.reading(names) == (
        "highest in d.jpg, lowest in a.jpg; the model does not read it directly"
    )
    assert DescriptorDiff("x", (1.0, 0.0), 1.0, "a", effect=0.0).helps is None
    # a hair above zero is still zero to a creator: 0, 0.00001 and 0.0014 are "lowest in a, b"
    hue = DescriptorDiff("hue: purple", (0.0, 1e-5, 0.0014), 1.0, "c.jpg", effect=None)
    assert hue.reading(names).startswith("highest in c.jpg;"), hue.reading(names)


def _cli_compare(paths, model, *extra):
    from typer.testing import CliRunner

    from thumbview.cli import app

    said = CliRunner().invoke(
        app, ["compare", *map(str, paths), "--model", str(model), *extra], env={"COLUMNS": "200"}
    )
    assert said.exit_code == 0, said.output
    return said.output


def test_no_reliable_difference_names_no_winner_anywhere(model_dir, tmp_path):  # noqa: F811
    """Two copies of one thumbnail x two titles: the CLI, the JSON and the PNG all say
    "no reliable difference", rank them "=1", and summarise per thumbnail and per title."""
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path in paths:
        _thumb(5, warm_colours=1).save(path)
    titles = ["--title", "one", "--title", "two"]
    text = _cli_compare(paths, model_dir, *titles, "--png", str(tmp_path / "side.png"))
    assert "winner" not in text.lower() and "likely ahead" not in text
    assert "verdict: no reliable difference" in text and "=1" in text
    # every candidate tied: chance best is "-" (and the summaries' chances), said why
    from thumbview.compare import NO_CHANCE_BEST

    assert NO_CHANCE_BEST in " ".join(text.split())
    assert "chance best: how often each candidate comes out on top" not in text
    assert "per thumbnail" in text and "per title" in text
    assert not any("%" in line for line in text.splitlines() if "=1" in line)
    got = json.loads(_cli_compare(paths, model_dir, *titles, "--json"))
    assert got["reliable"] is False and got["tied"] == 4
    assert got["rank_labels"] == ["=1"] * 4 and got["chance_best_shown"] is False
    assert {s["name"] for s in got["by_image"]} == {"a.jpg", "b.jpg"}
    assert sum(s["p_best"] for s in got["by_title"]) == pytest.approx(1.0)
    with Image.open(tmp_path / "side.png") as im:
        assert im.getpixel((3, 3)) == (255, 236, 196)  # the amber "too close to call" band
        assert im.width <= 1260 and im.height >= 400  # big cells, not a 264-pixel strip


def test_a_clear_leader_is_named_and_a_tie_reason_takes_it_away(high_low, loaded, tmp_path):
    """The planted high thumbnail is reliably ahead (green band, rank 1); a tie reason (e.g.
    a model with no demonstrated skill) turns the same result into a full tie everywhere."""
    result, images = high_low
    assert result.reliable and result.winner == result.candidates[0]
    assert result.rank_labels() == ["1", "2"] and "likely ahead" in result.verdict
    png = save_side_by_side(result, images, tmp_path / "clear.png")
    with Image.open(png) as im:
        assert im.getpixel((3, 3)) == (214, 240, 218)  # green
    reason = "this model did not beat the median on held-out videos"
    for tie in (
        result.as_tie(reason),
        compare(loaded, images, ["high.jpg", "low.jpg"], tie_reason=reason),
    ):
        assert tie.winner is None and tie.reliable is False
        assert tie.rank_labels() == ["=1", "=1"] and reason in tie.verdict
        assert Comparison.from_json_dict(json.loads(json.dumps(tie.to_json_dict()))) == tie


def test_chance_best_is_hidden_in_every_renderer_when_every_candidate_ties(
    high_low, loaded, tmp_path
):
    """A full tie ("=1" for all) shows "-" for chance best in the PNG's cells and summaries
    and says why in its heading; the JSON keeps the numbers, flagged as no ranking. A clear
    leader, and a partial tie (some candidate ranked apart), keep the percentages."""
    from dataclasses import replace as swap

    from thumbview.compare import (
        CHANCE_BEST,
        NO_CHANCE_BEST,
        Summary,
        _cell_lines,
        _heading_lines,
        _summary_line,
    )

    result, images = high_low
    best = result.candidates[0]
    assert result.shows_chance_best and result.chance_best_note == CHANCE_BEST
    assert _cell_lines(result, best, "1")[-1][0].endswith(f"chance best {best.p_best:.0%}")
    tie = result.as_tie("this model did not beat the median on held-out videos")
    assert not tie.shows_chance_best and tie.chance_text(0.73) == "-"
    cells = [line for c in tie.candidates for line, _ in _cell_lines(tie, c, "=1")]
    chance = [line for line in cells if "chance best" in line]
    assert len(chance) == 2 and all(line.endswith("interval; chance best -") for line in chance)
    heading = [text for text, _, _ in _heading_lines(tie)]
    assert NO_CHANCE_BEST in heading and CHANCE_BEST not in heading
    got = json.loads(json.dumps(tie.to_json_dict()))
    assert got["chance_best_shown"] is False and got["chance_best_note"] == NO_CHANCE_BEST
    assert sum(c["p_best"] for c in got["candidates"]) == pytest.approx(1.0)  # kept, flagged
    again = Comparison.from_json_dict(got)
    assert again == tie and not again.shows_chance_best
    rows = (Summary("high.jpg", 3000.0, 2000.0, 4000.0, 0.8),)
    crossed = swap(tie, by_image=rows, by_title=rows)
    assert _summary_line(rows[0], crossed).endswith("chance the best pair uses it -")
    assert _summary_line(rows[0], result).endswith("chance the best pair uses it 80%")
    png = save_side_by_side(crossed, images, tmp_path / "tie.png")  # the tied path draws
    with Image.open(png) as im:
        assert im.getpixel((3, 3)) == (255, 236, 196)  # amber


def test_a_partial_tie_keeps_chance_best_and_a_full_one_hides_it(loaded):
    images = [_thumb(11, warm_colours=1, big_text=1), _thumb(12, dark_blurry=1), _thumb(13)]
    three = compare(loaded, images, ["high.jpg", "low.jpg", "mid.jpg"])
    partial = replace(three, reliable=False, tied=2, tie=True)
    assert partial.rank_labels()[:2] == ["=1", "=1"] and partial.rank_labels()[2] != "=1"
    assert partial.shows_chance_best and partial.chance_text(0.25) == "25%"
    full = replace(three, reliable=False, tied=3, tie=True)
    assert full.rank_labels() == ["=1"] * 3 and not full.shows_chance_best
    said = replace(three, no_skill_note="no demonstrated skill at choosing ...")
    assert not said.shows_chance_best


def test_a_model_with_no_pairwise_skill_ties_every_candidate(loaded):
    """Held-out pairwise calls no better than a coin: the model cannot order candidates at
    all, so even a planted high-vs-low pair is shown as a full tie, said in words."""
    import copy
    from dataclasses import replace as swap

    pairwise = copy.copy(loaded.pairwise)
    pairwise.calibration_ = swap(pairwise.calibration_, heldout_brier=0.25, heldout_brier_se=0.01)
    assert pairwise.calibration_.skilful is False
    images = [_thumb(11, warm_colours=1, big_text=1), _thumb(12, dark_blurry=1), _thumb(13)]
    result = compare(loaded, images, ["high.jpg", "low.jpg", "mid.jpg"], pairwise=pairwise)
    assert result.reliable is False and result.tied == 3 and result.winner is None
    assert result.rank_labels() == ["=1", "=1", "=1"]
    assert "not clearly better than a coin" in result.verdict
    assert not result.shows_chance_best  # no chances shown for a model that cannot rank
    assert loaded.pairwise.calibration_.skilful is not False  # the override did not stick
