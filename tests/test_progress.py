"""The one progress contract: SILENT, rich bars on stderr, fractions for the web, and a guard."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import thumbview
from test_cache import CountingEncoder
from thumbview.data.dataset import load_dataset, write_metadata
from thumbview.embed.cache import embed
from thumbview.progress import SILENT, Bars, Fractions


def _folder(root: Path, n: int) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 9), (20 * i, 0, 0)).save(root / "images" / f"v{i}.png")
    rows = [{"file_name": f"images/v{i}.png", "views": 10 * (i + 1), "title": f"t{i}",
             "video_id": f"v{i}"} for i in range(n)]  # fmt: skip
    write_metadata(root, pd.DataFrame(rows))
    return root


def _bars() -> tuple[Bars, io.StringIO]:
    buf = io.StringIO()
    return Bars(Console(file=buf, width=120)), buf


# ----- SILENT ---------------------------------------------------------------------------------
def test_silent_does_nothing_and_allocates_nothing():
    first, second = SILENT.task("a", 10), SILENT.task("b", None)
    assert first is second  # one shared context: opening a silent task builds no object
    with first as advance:
        assert advance(5) is None
    with second as advance:  # reusable, also after an exception in an earlier task
        advance()


# ----- Bars -----------------------------------------------------------------------------------
def test_bars_complete_to_total_and_nest():
    bars, buf = _bars()
    with bars.task("outer", 5) as advance:
        advance(2)  # less than counted (a cache hit, skipped rows): still ends at 5/5
        with bars.task("inner", 3) as inner:
            inner(1)
    text = buf.getvalue()
    assert "outer" in text and "5/5" in text and "100%" in text
    assert "inner" in text and "3/3" in text


def test_bars_draw_nothing_for_zero_work_and_stop_short_on_error():
    bars, buf = _bars()
    with bars.task("nothing", 0) as advance:
        advance(3)
    assert buf.getvalue() == ""
    with pytest.raises(KeyError), bars.task("failing", 5) as advance:
        advance(2)
        raise KeyError("boom")
    assert "2/5" in buf.getvalue() and "5/5" not in buf.getvalue()


def test_cli_bars_go_to_stderr_and_json_stdout_stays_clean(tmp_path, monkeypatch):
    """`--json` stdout parses while bars are on (forced here: the CLI turns them off for --json)."""
    import thumbview.cli.predict as cli_predict
    from thumbview.cli import app
    from thumbview.cli._shared import err_console
    from thumbview.data.synth import SynthConfig, make_synthetic

    root = make_synthetic(tmp_path / "d", SynthConfig(n=40, seed=0, width=64, height=36))
    bars = Bars(err_console)
    monkeypatch.setattr(cli_predict, "progress_for", lambda as_json=False: bars)
    args = ["cv", str(root), "--encoders", "title", "--folds", "3", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 40
    assert "checking images" in result.stderr and "embed title" in result.stderr
    assert "40/40" in result.stderr


# ----- Fractions ------------------------------------------------------------------------------
def test_fractions_monotone_to_one_across_two_real_tasks(tmp_path):
    seen: list[tuple[float, str]] = []
    progress = Fractions(lambda f, stage: seen.append((f, stage)), shares=(1, 3))
    ds = load_dataset(_folder(tmp_path / "d", 6), progress=progress)  # "checking images"
    embed(ds, CountingEncoder(), tmp_path / "c", batch_size=2, progress=progress)  # "embed ..."
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [s for _, s in seen][0] == "checking images"
    assert [s for _, s in seen][-1] == "embed counting"
    assert max(f for f, s in seen if s == "checking images") == 0.25  # its share, no more
    embedding = sorted({f for f, s in seen if s == "embed counting"})
    assert embedding[0] == 0.25 and len(embedding) >= 4  # three batches of 2 moved the bar


def test_fractions_extra_and_nested_tasks_only_change_the_stage():
    seen: list[tuple[float, str]] = []
    progress = Fractions(lambda f, stage: seen.append((f, stage)))
    with progress.task("main", 4) as advance:
        advance(2)
        with progress.task("inner", 10) as inner:
            inner(10)
        advance(2)
    with progress.task("after", 2) as advance:
        advance(1)
    assert [f for f, s in seen if s == "inner"] == [0.5, 0.5, 0.5]
    assert [f for f, s in seen if s == "after"] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="shares"):
        Fractions(print, shares=())


# ----- the guard ------------------------------------------------------------------------------
def _progress_parameters():
    src = Path(thumbview.__file__).parent
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    if arg.arg == "progress":
                        note = ast.unparse(arg.annotation) if arg.annotation else None
                        yield f"{path.relative_to(src)}:{node.lineno}", note


def test_every_progress_parameter_is_a_progress():
    found = list(_progress_parameters())
    assert len(found) > 20  # the scan sees the library's long functions
    wrong = [(where, note) for where, note in found if note != "Progress"]
    assert not wrong, f"`progress` must be annotated Progress (no bool, no callable): {wrong}"
