"""The inference layer: one way to load a model, intervals from the model, hostile folders.

- importing the consumers (inference, frames, compare) never pulls in matplotlib or the
  training workflow (checked in a fresh interpreter);
- a model calibrated for 90% gives 90% intervals and "90% interval" labels through
  predict, compare and frames (the 80% bug);
- every damaged or hostile model folder is refused with the file named, never a
  RecursionError/TypeError, and non-finite weights never load.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from _model_fixture import model_dir, model_dir_90  # noqa: F401  (shared session fixtures)
from thumbview.data.synth import render_thumbnail
from thumbview.inference import LoadedPredictor
from thumbview.predict.model import ArtifactError

SRC = Path(__file__).resolve().parents[1] / "src"


def _imported_after(module: str, watch: tuple[str, ...]) -> list[str]:
    """Which of `watch` a fresh interpreter has in sys.modules after `import module`."""
    code = f"import sys; import {module}; print(','.join(m for m in {watch!r} if m in sys.modules))"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize(
    "module", ["thumbview.inference", "thumbview.frames.rank", "thumbview.compare"]
)
def test_consumers_do_not_import_the_training_stack(module):
    heavy = ("matplotlib", "thumbview.predict.workflow", "thumbview.predict.plots")
    assert _imported_after(module, heavy) == []


def _thumb(seed: int, **flags: int) -> Image.Image:
    return Image.fromarray(render_thumbnail(np.random.default_rng(seed), flags))


# ----- intervals at the model's own coverage -------------------------------------------------
def test_a_90_percent_model_says_90_percent_everywhere(model_dir, model_dir_90):  # noqa: F811
    from thumbview.compare import compare

    p80, p90 = LoadedPredictor.load(model_dir), LoadedPredictor.load(model_dir_90)
    assert (p80.coverage, p90.coverage) == (0.8, 0.9)
    assert p90.interval_label == "90% interval"
    images = [_thumb(1, warm_colours=1), _thumb(2, dark_blurry=1)]
    (a80, _), (a90, _) = (p.predict_images(images, ["a", "b"]) for p in (p80, p90))
    assert a90.coverage == 0.9 and a90.interval_label == "90% interval"
    assert a90.log10 == pytest.approx(a80.log10)  # same data, same fit: only the interval differs
    assert a90.low < a80.low and a90.high > a80.high  # 90% is wider than 80%
    c = compare(p90, images, ["a", "b"])
    assert c.coverage == 0.9 and c.interval_label == "90% interval"
    by_name = {x.image: x for x in c.candidates}
    assert by_name["a"].low == pytest.approx(a90.low) and by_name["a"].high == pytest.approx(
        a90.high
    )


# ----- hostile and damaged model folders -----------------------------------------------------
def _deep(n: int = 100_000) -> str:
    return "[" * n + "]" * n


def _nan_weights(d: Path) -> None:
    arrays = load_file(d / "model.safetensors")
    key = sorted(k for k in arrays if arrays[k].dtype.kind == "f")[0]
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan
    save_file(arrays, d / "model.safetensors")


def _inf_weights(d: Path) -> None:
    arrays = load_file(d / "model.safetensors")
    arrays["residual_quantiles"] = np.full_like(arrays["residual_quantiles"], np.inf)
    save_file(arrays, d / "model.safetensors")


def _edit(name: str, change):
    def apply(d: Path) -> None:
        data = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps(change(data)))

    return apply


def _write(name: str, text: str):
    return lambda d: (d / name).write_text(text)


def _set(path: tuple[str, ...], value):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return data

    return change


CASES = {
    "config nested too deeply": (_write("config.json", _deep()), "config.json", "nested"),
    "config not JSON": (_write("config.json", "{nope"), "config.json", "not valid JSON"),
    "config a list": (_write("config.json", "[1, 2]"), "config.json", "not a thumbview"),
    "config NaN constant": (_write("config.json", '{"format": NaN}'), "config.json", "JSON"),
    "format_version a string": (
        _edit("config.json", _set(("format_version",), "1")),
        "config.json",
        "format_version",
    ),
    "coverage a string": (
        _edit("config.json", _set(("config", "coverage"), "high")),
        "config.json",
        "coverage",
    ),
    "block_dims a list": (
        _edit("config.json", _set(("block_dims",), [3])),
        "config.json",
        "block_dims",
    ),
    "y_median missing": (
        _edit("config.json", lambda d: {k: v for k, v in d.items() if k != "y_median"}),
        "config.json",
        "y_median",
    ),
    "encoders nested too deeply": (_write("encoders.json", _deep()), "encoders.json", "nested"),
    "encoders a list": (_write("encoders.json", "[]"), "encoders.json", "object"),
    "encoders missing options": (
        _edit("encoders.json", lambda d: {k: {"spec": v["spec"]} for k, v in d.items()}),
        "encoders.json",
        "options",
    ),
    "encoders missing an encoder": (_write("encoders.json", "{}"), "encoders.json", "visual"),
    "encoders unknown option": (
        _edit("encoders.json", _set(("visual", "options"), {"bogus": 1})),
        "encoders.json",
        "bogus",
    ),
    "encoders.json missing": (lambda d: (d / "encoders.json").unlink(), "encoders.json", ""),
    "config.json missing": (lambda d: (d / "config.json").unlink(), "config.json", "missing"),
    "NaN weights": (_nan_weights, "model.safetensors", "non-finite"),
    "infinite residual quantiles": (_inf_weights, "model.safetensors", "non-finite"),
    "truncated weights": (_write("model.safetensors", "xx"), "model.safetensors", "corrupt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_model_folders_are_refused_naming_the_file(case, model_dir, tmp_path):  # noqa: F811
    damage, file_name, words = CASES[case]
    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    damage(folder)
    for load in (LoadedPredictor.load, LoadedPredictor.check):
        with pytest.raises(ArtifactError) as err:
            load(folder)
        assert file_name in str(err.value) and words in str(err.value), str(err.value)
        assert "\n" not in str(err.value)


def test_predict_json_never_prints_nan(model_dir, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from thumbview.cli import app

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    _nan_weights(folder)
    image = tmp_path / "a.jpg"
    _thumb(3).save(image)
    result = CliRunner().invoke(app, ["predict", str(folder), str(image), "--json"])
    assert result.exit_code == 2 and "non-finite" in result.output
    assert "NaN" not in result.stdout and "Traceback" not in result.output


def test_cli_tables_label_the_models_interval(model_dir_90, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from thumbview.cli import app

    paths = []
    for i, flags in enumerate(({"warm_colours": 1, "big_text": 1}, {"dark_blurry": 1})):
        paths.append(tmp_path / f"candidate {i}.jpg")
        _thumb(30 + i, **flags).save(paths[-1])
    runner = CliRunner()
    for args in (
        ["predict", str(model_dir_90), str(paths[0])],
        ["compare", "--model", str(model_dir_90), *map(str, paths)],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "90% interval" in result.output and "80%" not in result.output
    said = " ".join(result.output.replace("│", " ").split())  # table cells wrap
    assert "tends to help" in said or "tends to hurt" in said
