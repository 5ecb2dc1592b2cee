"""The page's number and verdict rules, run in Node on the functions app.js ships.

One view formatter: 999, 1K, 1.2K, 12K, 123K, 3.5M (the rule the Python side uses for
"1.2K views"), and no "most likely to win" when the leader does not reliably beat the
runner-up. Skips without `node`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "src" / "thumbview" / "serve" / "static"
APP_JS, BOT_JS = STATIC / "app.js", STATIC / "bot.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

VIEWS = {
    0: "0",
    7.4: "7",
    999.4: "999",
    999.5: "1K",
    1000: "1K",
    1234: "1.2K",
    2000: "2K",
    9949: "9.9K",
    9950: "10K",
    12_345: "12K",
    123_456: "123K",
    999_499: "999K",
    999_500: "1M",
    3_456_789: "3.5M",
    1.2e9: "1.2B",
}


def _function(name: str, script: Path = APP_JS) -> str:
    """The source of one top-level function (or const) of app.js (or `script`)."""
    text = script.read_text(encoding="utf-8")
    match = re.search(rf"^(function {name}\(|const {name} = ).*?^}};?$", text, re.S | re.M)
    assert match, f"{name} not found in {script.name}"
    return match.group(0)


def _node(script: str):
    out = subprocess.run([NODE, "-e", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_one_view_formatter():
    got = _node(
        _function("formatViews")
        + f"\nconsole.log(JSON.stringify({json.dumps(list(VIEWS))}.map(formatViews)))"
    )
    assert dict(zip(VIEWS, got, strict=True)) == VIEWS


def test_coverage_label_comes_from_the_model():
    got = _node(
        _function("fmtCoverage")
        + "\nconsole.log(JSON.stringify([0.8, 0.9, 0.95, 0.5].map(fmtCoverage)))"
    )
    assert got == ["8 times out of 10", "9 times out of 10", "95% of the time", "5 times out of 10"]


@pytest.mark.parametrize(
    ("p_best", "matrix", "verdict"),
    [
        ([0.19, 0.18, 0.17, 0.16, 0.15, 0.15], [[0.5, 0.53]], False),  # six close ones
        ([0.55, 0.45], [[0.5, 0.55]], False),  # barely better than a coin flip
        ([0.85, 0.15], [[0.5, 0.85]], True),
        ([0.60, 0.25, 0.15], None, True),  # no matrix: 25+ points ahead of the runner-up
        ([0.40, 0.35, 0.25], None, False),
        ([None, None], None, None),  # titles for one image: nothing says how sure
    ],
)
def test_a_winner_is_named_only_when_reliably_ahead(p_best, matrix, verdict):
    rows = [{"pBeats": p} for p in p_best]
    script = (
        "const RELIABLE = 0.75;\n"
        + _function("reliablyAhead")
        + f"\nconsole.log(JSON.stringify(reliablyAhead({json.dumps(rows)}, {json.dumps(matrix)})))"
    )
    assert _node(script) is verdict


@pytest.mark.parametrize(
    ("reliable", "matrix", "expected"),
    [
        (False, [[0.5, 0.9]], False),  # the server's pairwise verdict: not reliably ahead
        (True, [[0.5, 0.6]], True),  # the server's verdict wins over the page's own rule
        (None, [[0.5, 0.9]], True),  # no calibration: the page's 3-in-4 rule decides
    ],
)
def test_the_page_follows_the_servers_verdict(reliable, matrix, expected):
    """compare's `reliable` (from the calibrated difference model) names the winner, not the
    page's own threshold; the threshold only speaks for models without a calibration."""
    rows = [{"pBeats": 0.7}, {"pBeats": 0.3}]
    script = (
        "const RELIABLE = 0.75;\n"
        + _function("reliablyAhead")
        + f"\nconsole.log(JSON.stringify(reliablyAhead({json.dumps(rows)}, "
        + f"{json.dumps(matrix)}, {json.dumps(reliable)})))"
    )
    assert _node(script) is expected


def test_out_of_range_lines_are_shown_once_each():
    """The page shows the server's out-of-range lines (predict: one per title; compare: one)."""
    line = "the input lies outside the training range: brightness 1 is outside ..."
    cases = [[line, "", line], ["", ""], [None], [], ["a", "b"]]
    script = (
        _function("rangeWarning")
        + f"\nconsole.log(JSON.stringify({json.dumps(cases)}.map(rangeWarning)))"
    )
    assert _node(script) == [line, "", "", "", "a · b"]


def test_the_fallback_note_is_shown_in_one_line_and_hidden_without_one():
    """/compare's `note` (the independent-residual fallback) reaches the page; no note, no line."""
    from thumbview.compare import FALLBACK_NOTE

    script = (
        "const box = { textContent: 'old', hidden: false };\n"
        "const $ = () => box;\n"
        "const state = { files: [] };\n"
        + _function("pick")
        + "\n"
        + _function("rangeWarning")
        + "\n"
        + _function("normaliseComparison")
        + "\n"
        + _function("renderNote")
        + f"\nconst out = normaliseComparison({{ candidates: [], note: {json.dumps(FALLBACK_NOTE)} }});"
        + "\nrenderNote(out.note); const shown = { ...box };"
        + "\nrenderNote(normaliseComparison({ candidates: [] }).note);"
        + "\nconsole.log(JSON.stringify([shown, box]))"
    )
    shown, without = _node(script)
    assert shown == {"textContent": f"Note: {FALLBACK_NOTE}.", "hidden": False}
    assert "\n" not in shown["textContent"] and "coin flip" in shown["textContent"]
    assert without == {"textContent": "", "hidden": True}


def test_what_sets_them_apart_shows_the_servers_reading():
    """The page shows compare's own reading (equal images named together, help or hurt),
    never its own "highest in A" when A, B and C are equal."""
    reading = "lowest in d.jpg; more of it tends to help (x1.12 predicted views ...)"
    desc = [{"feature": "brightness", "values": [0.7, 0.7, 0.7, 0.2], "highest": "a.jpg, b.jpg, c.jpg",
             "note": reading}]  # fmt: skip
    script = (
        "const state = { files: [] };\n"
        "const letter = (i) => 'ABCDEF'[i];\n"
        + _function("pick")
        + "\n"
        + _function("fmtValue")
        + "\n"
        + _function("descriptorItems")
        + f"\nconsole.log(JSON.stringify(descriptorItems({json.dumps(desc)}, "
        + "['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'])))"
    )
    (item,) = _node(script)
    assert item["note"] == reading and "highest in A" not in json.dumps(item)


def test_per_thumbnail_and_per_title_summaries_only_for_a_cross_product():
    by_image = [{"name": "a.jpg", "views": 3100, "low": 2800, "high": 3500, "p_best": 0.55}]
    by_title = [{"name": "", "views": 3000, "low": 2000, "high": 4000, "p_best": 1.0}]
    script = (
        "const relativeTarget = () => false;\n"
        + _function("fmtViews")
        + "\n"
        + _function("formatViews")
        + "\n"
        + _function("fmtPct")
        + "\n"
        + _function("summaryTables")
        + f"\nconsole.log(JSON.stringify([summaryTables({json.dumps(by_image)}, "
        + f"{json.dumps(by_title)}), summaryTables({json.dumps(by_image)}, [])]))"
    )
    both, one = _node(script)
    assert [t["head"] for t in both] == ["Per thumbnail", "Per title"]
    assert (
        both[0]["rows"][0][0] == "a.jpg"
        and "55% chance the best pair uses it" in both[0]["rows"][0]
    )
    assert both[1]["rows"][0][0] == "(no title)" and one == []


def test_a_full_tie_shows_no_chance_best_on_the_page():
    """/compare's `chance_best_shown` false (every candidate "=1"): the page keeps no
    percentage to show (table cells and summaries read "-") and shows the server's line on
    why; with a ranking it keeps the chances and the line on what they mean."""
    from thumbview.compare import CHANCE_BEST, NO_CHANCE_BEST

    cands = [
        {"image": n, "image_index": i, "title": "", "views": 3000, "low": 2000, "high": 4000,
         "p_best": p}
        for i, (n, p) in enumerate((("a.jpg", 0.6), ("b.jpg", 0.4)))
    ]  # fmt: skip
    shown = {"images": ["a.jpg", "b.jpg"], "candidates": cands, "p_beats": [[0.5, 0.6], [0.4, 0.5]],
             "rank_labels": ["1", "2"], "reliable": True, "tie": False, "verdict": "a.jpg is likely ahead",
             "no_skill_note": "", "chance_best": CHANCE_BEST, "chance_best_shown": True,
             "chance_best_note": CHANCE_BEST}  # fmt: skip
    tied = {**shown, "rank_labels": ["=1", "=1"], "reliable": False, "tie": True,
            "chance_best_shown": False, "chance_best_note": NO_CHANCE_BEST}  # fmt: skip
    summary = [{"name": "a.jpg", "views": 3000, "low": 2000, "high": 4000, "p_best": 0.6}]
    used = ("pick", "rangeWarning", "normaliseComparison", "fmtViews", "formatViews", "fmtPct")
    script = (
        "const state = {files: []};\nconst relativeTarget = () => false;\n"
        + "\n".join(_function(f) for f in (*used, "summaryTables"))
        + f"\nconst [a, b] = [{json.dumps(shown)}, {json.dumps(tied)}].map(normaliseComparison);"
        + f"\nconst s = {json.dumps(summary)};"
        + "\nconsole.log(JSON.stringify([a, b, summaryTables(s, s, b.chanceHidden)]))"
    )
    ranked, tie, tables = _node(script)
    assert [r["pBeats"] for r in ranked["rows"]] == [0.6, 0.4] and not ranked["chanceHidden"]
    assert ranked["chanceBest"] == CHANCE_BEST
    assert tie["chanceHidden"] is True and tie["chanceBest"] == NO_CHANCE_BEST
    assert [r["pBeats"] for r in tie["rows"]] == [None, None] and tie["pBeatsMatrix"] is None
    assert [r["rankLabel"] for r in tie["rows"]] == ["=1", "=1"]
    assert tables[0]["rows"][0][2] == "chance the best pair uses it: -"


def test_the_bot_panel_shows_no_chance_best_under_a_no_skill_predictor():
    """/api/bot/generate's JSON (`Generation.to_json_dict`, what the router sends): under a
    predictor without demonstrated skill every caption is "#=1" with chance best "-", the
    status does not say "best first", and the line under them is compare's NO_CHANCE_BEST;
    with skill shown the same captions keep their ranks and percentages."""
    from thumbview.bot.generate import Candidate, Generation
    from thumbview.compare import CHANCE_BEST, NO_CHANCE_BEST

    cands = (Candidate(3, None, 3.6, 4000, 2000, 8000, 0.7), Candidate(1, None, 3.5, 3000, 1500, 6000, 0.3))  # fmt: skip
    skilled = Generation("t", "t", cands, 0.9, "log10", True, predicts="predicts views")
    blind = Generation("t", "t", cands, 0.9, "log10", True, no_skill_note="no demonstrated skill at choosing")  # fmt: skip
    used = "".join(_function(f, BOT_JS) + "\n" for f in ("sentence", "botStatus", "botCaption"))
    payloads = json.dumps([g.to_json_dict() for g in (skilled, blind)])
    script = used + (
        f"console.log(JSON.stringify({payloads}.map((d) => [botStatus(d), "
        "d.candidates.map((_, k) => botCaption(d, k)), sentence(d.chance_best_note)])))"
    )
    (status, caps, note), (tied_status, tied_caps, tied_note) = _node(script)
    assert caps == ["#1: 4,000 views (2,000 - 8,000), chance best 70%",
                    "#2: 3,000 views (1,500 - 6,000), chance best 30%"]  # fmt: skip
    assert "best first" in status and note.startswith(CHANCE_BEST[0].upper() + CHANCE_BEST[1:])
    assert tied_caps == ["#=1: 4,000 views (2,000 - 8,000), chance best -",
                         "#=1: 3,000 views (1,500 - 6,000), chance best -"]  # fmt: skip
    assert "best first" not in tied_status and "No demonstrated skill at choosing." in tied_status
    assert tied_note == NO_CHANCE_BEST[0].upper() + NO_CHANCE_BEST[1:] + "."


def test_the_bot_panel_shows_compares_verdict_and_its_ties_under_a_skilled_predictor():
    """With skill shown, the panel says the verdict's sentence once above the candidates and
    captions the ones it cannot tell apart "#=1" (percentages kept: a partial tie), the
    rest by their own rank; a clear leader is said too, without "=" anywhere."""
    from thumbview.bot.generate import Candidate, Generation

    cands = tuple(Candidate(s, None, v, 10**v, 10**v / 2, 10**v * 2, p) for s, v, p in
                  ((3, 4.0, 0.45), (1, 3.99, 0.44), (2, 2.0, 0.11)))  # fmt: skip
    said = "no reliable difference between the top 2: the chance that ... is 51% (50% would be a coin flip)"  # fmt: skip
    tie = Generation("t", "t", cands, 0.9, "log10", True, reliable=False, verdict=said, tied=2)
    lead = Generation("t", "t", cands, 0.9, "log10", True, reliable=True, verdict="the image of seed 3 is likely ahead", tied=1)  # fmt: skip
    used = "".join(_function(f, BOT_JS) + "\n" for f in ("sentence", "botStatus", "botCaption"))
    payloads = json.dumps([g.to_json_dict() for g in (tie, lead)])
    script = used + (
        f"console.log(JSON.stringify({payloads}.map((d) => [botStatus(d), "
        "d.candidates.map((_, k) => botCaption(d, k))])))"
    )
    (status, caps), (lead_status, lead_caps) = _node(script)
    assert "No reliable difference between the top 2: the chance" in status
    assert [c.split(":")[0] for c in caps] == ["#=1", "#=1", "#3"]
    assert caps[0].endswith("chance best 45%") and caps[2].endswith("chance best 11%")
    assert "The image of seed 3 is likely ahead." in lead_status
    assert [c.split(":")[0] for c in lead_caps] == ["#1", "#2", "#3"]
