"""benchmarks/fullsize.py --quick: every part's code path at tiny sizes, so the script cannot rot.

The full-size figures themselves are measured by hand (BENCHMARKS.md); these tests only
check that each part still runs through thumbview's code and reports a usable row.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fullsize.py"


@pytest.fixture(scope="module")
def fullsize():
    spec = importlib.util.spec_from_file_location("fullsize_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


EXPECTED_TASKS = {
    "clip": {"embed", "residual stream, layer -2, all 17 tokens"},
    "finetune": {"train step, gradient checkpointing"},
    "sae": {"train step (no dead latents)"},
    "bot": {"`bot train` step, draft K=1, 1 DDIM step", "`bot train` step, ddpo, 1 DDIM step"},
}


@pytest.mark.parametrize("part", ["clip", "finetune", "sae", "bot"])
def test_quick_part_runs_through_the_product_code_on_cpu(fullsize, part):
    torch = pytest.importorskip("torch")
    if part == "bot":
        pytest.importorskip("diffusers")
        pytest.importorskip("peft")
    torch.set_num_threads(1)
    lines: list[str] = []
    rows = fullsize.run("cpu", quick=True, only=(part,), echo=lines.append)
    assert {r.task for r in rows} == EXPECTED_TASKS[part]
    for r in rows:
        assert r.part == part and r.device.startswith("CPU")
        assert math.isfinite(r.rate) and r.rate > 0 and r.seconds > 0
        assert math.isclose(r.rate * r.seconds, r.batch, rel_tol=1e-9)  # items per call
        assert r.peak_mb > 50  # the process's resident set: torch alone is more
        assert r.note == "quick: tiny config"
    assert len(lines) == len(rows) and all(line.count("|") == 12 for line in lines)
    if part == "clip":  # both towers, both precisions, each task
        assert {(r.model.split()[1], r.precision) for r in rows} == {
            (t, d) for t in ("ViT-B/32", "ViT-L/14") for d in ("float32", "bfloat16")
        }


def test_a_part_in_its_own_process_streams_its_rows(fullsize):
    rows = fullsize.run("cpu", quick=True, only=("sae",), isolate=True)
    assert [r.task for r in rows] == ["train step (no dead latents)"] and rows[0].rate > 0


def test_a_child_that_fails_leaves_a_row_saying_why(fullsize):
    (row,) = fullsize.run_isolated("no-such-part", "cpu", True)
    assert row.task == "failed" and "KeyError" in row.note and "rc 1" in row.note
    assert "| - | - | - |" in fullsize.format_row(row)


def test_bad_device_or_part_is_one_clear_error(fullsize):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            fullsize.run("cuda", quick=True)
    with pytest.raises(SystemExit, match="cpu or cuda"):
        fullsize.run("tpu", quick=True)
    with pytest.raises(SystemExit, match="no part matches clip-vit-b32"):
        fullsize.run("cpu", quick=True, only=("nope",))


def test_out_of_memory_keeps_the_row_with_a_note(fullsize):
    torch = pytest.importorskip("torch")

    def too_big():
        raise torch.OutOfMemoryError("CUDA out of memory")

    got = fullsize.measure(too_big, "cpu", warmup=0, repeats=1)
    assert got == (None, "out of memory")
    fields = {"part": "sae", "model": "m", "task": "t", "precision": "fp32", "batch": 8}
    row = fullsize.make_row(got, 8, "", "cpu", resolution="-", unit="activations/s", **fields)
    assert row.note == "out of memory" and math.isnan(row.rate)
