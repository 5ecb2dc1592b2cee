"""Folders written by an older thumbview still load and give the outputs recorded then.

Issue 21 (item 5): after a restructure, saved model, SAE and bot folders from before must
still load. `tests/data/legacy/d7022a0/` holds tiny folders written by commit d7022a0's CLI
and, in `reference.json`, what that code computed from them on fixed inputs
(`tests/data/legacy/make_legacy.py`; README there). Each test loads a folder through the
public entry point today's commands use and compares, to float rounding.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _bot_fixture import tiny_base  # noqa: F401
from thumbview.cli import app
from thumbview.data.images import load_image
from thumbview.inference import LoadedPredictor
from thumbview.sae.folder import (
    encode_sparse,
    load_sae,  # sae train writes it, sae.folder reads it
)
from thumbview.sae.shards import ShardedActivations

HERE = Path(__file__).parent / "data" / "legacy"
LEGACY = HERE / "d7022a0"
INPUTS = LEGACY / "inputs"
IMAGES = ("a.jpg", "b.jpg", "c.jpg")
TITLES = ("I tried it for 30 days", "")  # what make_legacy.py predicted with
BOT_TITLE, BOT_SEEDS = "worst cake ever", (0, 1)
# Frozen features and ridge arithmetic repeat to the last bits; the fine-tuned network and
# MiniLM sum floats in an order that may differ between CPUs, hence its looser bound.
RTOL = {"model": 1e-6, "finetuned": 1e-5}
PIXEL_TOL = 0.02  # mean |new - recorded| of the bot's uint8 samples
SPEC_CHANGED = "differs from the one the model was trained with"


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((LEGACY / "reference.json").read_text(encoding="utf-8"))


def _close(actual, expected, rtol: float) -> None:
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float),
                               rtol=rtol, atol=rtol)  # fmt: skip


def _images() -> list:
    return [load_image(INPUTS / name) for name in IMAGES]


@pytest.mark.parametrize("kind", ["model", "finetuned"])
def test_model_folder_predicts_what_it_predicted_when_written(kind, ref, caplog):
    """predict_images (every image x title), blocks -> predict / intervals, range and pairwise."""
    want, rtol = ref[kind], RTOL[kind]
    with caplog.at_level(logging.WARNING, logger="thumbview"):
        loaded = LoadedPredictor.load(LEGACY / kind)
    # An encoder computing something else would warn. `visual` version 3 (letterbox bars cut
    # before describing, issue 27) is a deliberate change: it warns, and the fixture's inputs,
    # which have no bars, still predict exactly what they did (asserted below).
    changed = [line for line in caplog.text.splitlines() if SPEC_CHANGED in line]
    assert all("encoder visual differs" in line for line in changed), changed
    got = loaded.predict_images(_images(), IMAGES, TITLES)
    assert [(p.image, p.title) for p in got] == [(i, t) for i in IMAGES for t in TITLES]
    assert [p.title for p in got] == [w["title"] for w in want["predictions"]]
    for field in ("log10", "views", "low", "high", "coverage"):
        _close([getattr(p, field) for p in got], [w[field] for w in want["predictions"]], rtol)
    blocks = loaded.blocks(_images(), [TITLES[0]] * len(IMAGES))  # {encoder: (3, D)}
    lo, hi = loaded.intervals(blocks)
    _close(loaded.predict(blocks), want["predict"], rtol)
    _close(lo, want["low"], rtol)
    _close(hi, want["high"], rtol)
    if "range_warning" in want:
        assert loaded.training_range.warning(blocks) == want["range_warning"]
    if "pairwise_sigma" in want:
        _close(loaded.pairwise.calibration_.sigma, want["pairwise_sigma"], rtol)
        _close(loaded.pairwise.fold_predictions(blocks), want["fold_predictions"], rtol)
    else:
        assert loaded.pairwise is None


def test_the_frozen_model_keeps_its_pairwise_and_range_files(ref):
    """The recorded model has both (else the checks above would pass by skipping them)."""
    assert (LEGACY / "model" / "pairwise" / "pairwise.json").is_file()
    assert (LEGACY / "model" / "training_range.json").is_file()
    assert {"pairwise_sigma", "fold_predictions", "range_warning"} <= set(ref["model"])


@pytest.mark.parametrize("kind", ["model", "finetuned"])
def test_check_accepts_the_old_folders(kind):
    LoadedPredictor.check(LEGACY / kind)  # raises ArtifactError on anything it cannot read


def test_cli_predict_json_prints_what_the_old_cli_printed(ref):
    result = CliRunner().invoke(
        app, ["predict", str(LEGACY / "model"), *(str(INPUTS / n) for n in IMAGES), "--json"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = [{**row, "image": Path(row["image"]).name} for row in json.loads(result.stdout)]
    want = ref["cli_predict"]
    # Every field the old CLI printed, with its value; fields added since are named here.
    added = {"warning"}  # issue 22: each row's out-of-range line ("" when inside)
    added |= {"predicts", "assumed", "ignored", "no_skill_note"}  # issue 28: ModelNotes
    assert [sorted(set(r) - added) for r in rows] == [sorted(w) for w in want]
    numbers = ("log10", "views", "low", "high", "coverage")
    assert [[r[k] for k in w if k not in numbers] for r, w in zip(rows, want, strict=True)] == [
        [w[k] for k in w if k not in numbers] for w in want
    ]
    for field in numbers:
        _close([r[field] for r in rows], [w[field] for w in want], RTOL["model"])


def _sae_inputs(kind: str) -> np.ndarray | ShardedActivations:
    """What the SAE was trained on: the dataset's visual features, or the shard folder."""
    if kind == "sae-topk":
        return np.load(INPUTS / "sae-topk-activations.npy")  # (120, 26)
    return ShardedActivations(INPUTS / "shards")  # (200, 8) in two shards


@pytest.mark.parametrize("kind, arch", [("sae-topk", "topk"), ("sae-relu", "relu-l1")])
def test_sae_folder_encodes_as_when_written(kind, arch, ref):
    """Latents and reconstructions of 16 rows, and every row's codes = the old codes.npz."""
    import scipy.sparse as sp
    import torch

    want = ref[kind]
    sae = load_sae(LEGACY / kind)
    assert sae.cfg.arch == arch and sae.cfg.d_sae == want["d_sae"]
    x = _sae_inputs(kind)
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(np.asarray(x[:16])).float())  # (16, d_sae)
        recon = sae.decode(z)  # (16, d_in)
    _close(z, want["latents"], 1e-5)
    _close(recon, want["reconstruction"], 1e-5)
    codes = sp.load_npz(LEGACY / kind / "codes.npz")  # written by the old `sae train`
    assert codes.shape == (len(x), sae.cfg.d_sae)
    _close(encode_sparse(sae, x).toarray(), codes.toarray(), 1e-5)


def _generator():
    """make_legacy.py as a module: the test digests the tiny base the way it did."""
    spec = importlib.util.spec_from_file_location("make_legacy", HERE / "make_legacy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _movable_bot(tmp_path: Path, base: Path) -> Path:
    """A copy of the bot folder whose bot.json points at this machine's base and predictor
    (it stores the paths it was trained with, which only existed where it was written)."""
    bot = shutil.copytree(LEGACY / "bot", tmp_path / "bot")
    meta = json.loads((bot / "bot.json").read_text(encoding="utf-8"))
    meta.update(base=str(base), predictor=str((LEGACY / "model").resolve()))
    (bot / "bot.json").write_text(json.dumps(meta), encoding="utf-8")
    return bot


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("diffusers", "peft")),
    reason="the bot needs thumbview[bot] (diffusers, peft)",
)
def test_bot_folder_generates_what_it_generated_when_written(ref, tiny_base, tmp_path):  # noqa: F811
    """LoadedBot.load + generate (`bot generate`, the serve panel): same samples, same ranking."""
    from thumbview.bot.generate import LoadedBot, generate
    from thumbview.bot.reward import predictor_digest

    want = ref["bot"]
    assert _generator().tensor_digest(tiny_base) == want["base_digest"], "tiny base changed"
    meta = json.loads((LEGACY / "bot" / "bot.json").read_text(encoding="utf-8"))
    assert predictor_digest(LEGACY / "model") == meta["predictor_digest"]
    bot = LoadedBot.load(_movable_bot(tmp_path, tiny_base))
    old = np.load(INPUTS / "bot-images.npy").astype(float)  # (LoRA/base, seeds, H, W, 3)
    for i, lora in enumerate((True, False)):
        new = np.stack([np.asarray(im) for im in bot.images([BOT_TITLE] * 2, BOT_SEEDS, lora=lora)])
        diff = np.abs(new - old[i])  # (seeds, H, W, 3); float noise can round a pixel 1 off
        worst, mean = float(diff.max()), float(diff.mean())
        assert worst <= 1 and mean < PIXEL_TOL, (f"lora={lora}", worst, mean)
    assert want["lora_effect"] > 10 * PIXEL_TOL  # so a LoRA that did not load fails above
    result = generate(bot, BOT_TITLE, n=2, seed=0)
    got = result.candidates
    assert [c.seed for c in got] == [c["seed"] for c in want["candidates"]]
    for field in ("log10", "views", "low", "high"):
        _close([getattr(c, field) for c in got], [c[field] for c in want["candidates"]], 1e-5)
    # P(best) changed on purpose since d7022a0: it now comes from the predictor's pairwise
    # calibration (this one has it), as in `compare`, not from independent residuals.
    from thumbview.compare import best_chances

    chances, note = best_chances(
        LoadedPredictor.load(LEGACY / "model"), np.array([c.log10 for c in got])
    )
    _close([c.p_best for c in got], chances, 1e-9)
    assert note == "" and result.note == ""
