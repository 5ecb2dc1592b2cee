"""Units and layout: how numbers read, round ticks, interval labels, file names, JSON writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thumbview import layout, units
from thumbview.fileio import write_json
from thumbview.schema import MapOf, Optional, SchemaError, check, read_json


@pytest.mark.parametrize(
    "views, text",
    [
        (0, "0"),
        (999, "999"),
        (999.6, "1K"),
        (1000, "1K"),
        (1234, "1.2K"),
        (9960, "10K"),
        (12_345, "12K"),
        (123_456, "123K"),
        (999_999, "1M"),
        (3_500_000, "3.5M"),
        (2.5e9, "2.5B"),
        (float("nan"), "?"),
    ],
)
def test_format_count_reads_like_youtube(views, text):
    assert units.format_count(views) == text
    assert units.format_views(views, "log10") == text


def test_relative_target_reads_as_a_multiplier():
    assert units.format_views(1.8, "channel-relative") == "x1.80"
    assert units.format_range(0.5, 12.4, "channel-relative") == "x0.50 - x12"
    assert units.unit_name("channel-relative") == "x channel median"


@pytest.mark.parametrize("coverage, label", [(0.8, "80% interval"), (0.9, "90% interval")])
def test_interval_label_follows_the_coverage(coverage, label):
    assert units.interval_label(coverage) == label


@pytest.mark.parametrize(
    "value, text", [(2960.0, "3K"), (9.11e-05, "0.0001"), (0.42, "0.42"), (-3.14159, "-3.14")]
)
def test_numbers_never_use_scientific_notation(value, text):
    assert units.format_number(value) == text
    assert "e" not in units.format_number(value)


def test_round_ticks_are_1_2_5():
    assert list(units.round_ticks(800, 12_000)) == [1000, 2000, 5000, 10_000]
    wide = units.round_ticks(1, 1e7)
    assert len(wide) <= 8 and all(math.log10(t) == round(math.log10(t)) for t in wide)
    from thumbview.predict.plots import format_views, views_ticks

    assert [format_views(t) for t in views_ticks(2.9, 4.1)] == ["1K", "2K", "5K", "10K"]


@pytest.mark.parametrize(
    "text, width, want",
    [
        ("short title", 44, "short title"),
        ("I tried the INSANE secret trick and it worked", 20, "I tried the INSANE…"),
        ("Supercalifragilisticexpialidocious", 10, "Supercali…"),
    ],
)
def test_shorten_cuts_at_a_word_with_an_ellipsis(text, width, want):
    got = units.shorten(text, width)
    assert got == want and len(got) <= width


def test_default_study_folder_is_decided_once(tmp_path):
    from thumbview.layout import default_study_dir, resolve_sae_dir

    sae = tmp_path / "sae-out"
    (sae / layout.SAE_SUBDIR).mkdir(parents=True)
    (sae / layout.SAE_SUBDIR / layout.SAE_CONFIG).write_text("{}")
    (sae / layout.SAE_SUBDIR / layout.SAE_WEIGHTS).write_bytes(b"")
    (sae / layout.SAE_METRICS).write_text("{}")  # what `sae train --out` leaves beside it
    assert resolve_sae_dir(sae) == sae / "sae"  # the `--out` folder is accepted
    assert resolve_sae_dir(sae / "sae") == sae / "sae"
    assert default_study_dir(sae) == sae / "study"
    assert layout.find_study_dir(sae) is None
    (sae / "study").mkdir()
    (sae / "study" / layout.STUDY_ALL_FEATURES).write_text("latent\n")
    assert layout.find_study_dir(sae) == sae / "study"
    assert layout.find_study_dir(sae / "sae") == sae / "study"  # either folder finds it


def test_write_json_is_strict_and_atomic(tmp_path):
    path = write_json(tmp_path / "a" / "x.json", {"v": np.float32(1.5), "bad": float("nan")})
    assert json.loads(path.read_text()) == {"v": 1.5, "bad": None}
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_schema_names_the_field(tmp_path):
    schema = {"a": int, "b": MapOf([str]), "c": Optional(float)}
    assert check({"a": 1, "b": {"x": ["y"]}}, schema) is None
    assert "a: expected an integer, got bool" in check({"a": True, "b": {}}, schema)
    assert "b.x[0]" in check({"a": 1, "b": {"x": [3]}}, schema)
    (tmp_path / "f.json").write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(SchemaError, match=r"f\.json: nested too deeply \(over 100 levels\)"):
        read_json(tmp_path / "f.json", schema)
