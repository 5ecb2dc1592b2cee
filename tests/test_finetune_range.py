"""A fine-tuned model's training range (`finetune.range`): written from the rows its weights
never trained on, loaded with the folder, and warning through every consumer."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from thumbview.cli import app  # noqa: E402
from thumbview.compare import compare  # noqa: E402
from thumbview.data.dataset import load_dataset  # noqa: E402
from thumbview.data.images import load_image  # noqa: E402
from thumbview.data.synth import SynthConfig, make_synthetic  # noqa: E402
from thumbview.finetune.config import FinetuneConfig  # noqa: E402
from thumbview.finetune.train import finetune  # noqa: E402
from thumbview.inference import LoadedPredictor  # noqa: E402
from thumbview.predict.drift import MIN_NOVELTY_ROWS, NOVELTY_FILE, PREDICTED, RANGE_FILE  # noqa: E402
from thumbview.predict.model import ArtifactError  # noqa: E402

# a small ConvNeXt, the frozen title: 360 rows leave 0.4 x 360 + 0.3 x 216 ~ 209 held out
FAST = {"backbone": "test-cnn", "batch_size": 32, "workers": 0, "patience": 50, "epochs": 2}
SPLIT = {"holdout": 0.4, "val_frac": 0.3}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("ftr") / "ds", SynthConfig(n=360, seed=0,
                                                                             n_channels=36))  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ftr-model") / "model"
    result = finetune(load_dataset(data), FinetuneConfig(**FAST, **SPLIT), out)
    assert result.n_val + result.n_holdout >= MIN_NOVELTY_ROWS
    return out


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> list[Image.Image]:
    """Thumbnails from the same generator, another seed: like the held-out rows."""
    root = make_synthetic(tmp_path_factory.mktemp("ftr-fresh") / "ds",
                          SynthConfig(n=60, seed=7, n_channels=6))  # fmt: skip
    return [load_image(p) for p in load_dataset(root).paths]


def noise(k: int) -> list[Image.Image]:
    """Per-pixel colour noise: nothing like the flat synthetic thumbnails."""
    rng = np.random.default_rng(k)
    return [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(k)]


def test_range_is_written_over_the_network_embeddings_and_loads(model_dir):
    for name in (RANGE_FILE, NOVELTY_FILE):
        assert (model_dir / name).is_file(), name
    loaded = LoadedPredictor.load(model_dir)
    novelty = loaded.training_range.novelty
    assert novelty is not None  # the novelty score, with the network's own prediction
    widths = {b: len(bn.names) for b, bn in novelty.blocks.items()}
    assert widths == {**loaded.model.range_widths, PREDICTED: 1}
    assert set(widths) == {"image", "title", "picture", PREDICTED}  # not the raw pixels
    assert novelty.blocks["picture"].names[-1] == "sharpness (log Laplacian variance)"


def test_noise_images_warn_and_held_out_like_images_mostly_do_not(model_dir, fresh):
    loaded = LoadedPredictor.load(model_dir)
    odd = loaded.predict_rows(noise(8), list("abcdefgh"), ["a title"] * 8)
    warned = [p.warning for p in odd if p.warning]
    assert len(warned) >= 6, [p.warning for p in odd]  # most: 1% of held-out-like rows are
    assert all("outside the training range" in w for w in warned)
    assert not any("title" in w for w in warned)  # named: the picture, not the title
    usual = loaded.predict_rows(fresh, [str(i) for i in range(len(fresh))], ["a title"] * 60)
    assert np.mean([bool(p.warning) for p in usual]) <= 0.1
    # outside(): the same rows as the warnings, and predictions unchanged by the range check
    blocks = loaded.blocks(noise(8), ["a title"] * 8)
    assert loaded.outside(blocks).tolist() == [bool(p.warning) for p in odd]
    assert np.allclose([p.log10 for p in odd], loaded.predict(blocks))


def test_compare_warns_for_a_noise_candidate(model_dir, fresh):
    loaded = LoadedPredictor.load(model_dir)
    result = compare(loaded, [noise(1)[0], fresh[0]], ["noise", "usual"], ["a title"])
    assert "outside the training range" in result.warning
    calm = compare(loaded, fresh[1:3], ["x", "y"], ["a title"])
    assert calm.warning == "" or "outside" in calm.warning  # a 1%-rate false alarm may happen


def test_a_range_of_other_widths_is_refused(model_dir, tmp_path):
    folder = Path(shutil.copytree(model_dir, tmp_path / "m"))
    saved = json.loads((folder / RANGE_FILE).read_text())
    saved["novelty"]["blocks"]["image"]["width"] += 1
    (folder / RANGE_FILE).write_text(json.dumps(saved))
    with pytest.raises(ArtifactError, match=RANGE_FILE):
        LoadedPredictor.load(folder)
    saved = json.loads((model_dir / RANGE_FILE).read_text())
    del saved["novelty"]["blocks"]["title"]  # a range blind to the title
    (folder / RANGE_FILE).write_text(json.dumps(saved))
    with pytest.raises(ArtifactError, match=RANGE_FILE):
        LoadedPredictor.load(folder)


def test_too_few_held_out_rows_write_no_range_and_say_so(data, model_dir, tmp_path, caplog):
    out = Path(shutil.copytree(model_dir, tmp_path / "m"))  # an older run's range is there
    shutil.rmtree(out / "checkpoint")
    config = FinetuneConfig(**{**FAST, "epochs": 1}, title="none", holdout=0.1, val_frac=0.1)
    with caplog.at_level(logging.INFO, logger="thumbview.finetune.range"):
        result = finetune(load_dataset(data), config, out)
    assert result.n_val + result.n_holdout < MIN_NOVELTY_ROWS
    assert "no training range recorded" in caplog.text
    assert not (out / RANGE_FILE).exists() and not (out / NOVELTY_FILE).exists()
    loaded = LoadedPredictor.load(out)
    assert (
        loaded.training_range is None and loaded.out_of_range(loaded.blocks(noise(1), [""])) is None
    )


def test_explain_says_the_line_for_a_noise_image(model_dir, fresh, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the heatmap PNG is written beside the command
    loaded = LoadedPredictor.load(model_dir)
    picked = [(name, im) for name, im in zip("abcdefgh", noise(8), strict=True)
              if loaded.predict_rows([im], [name], ["a title"])[0].warning]  # fmt: skip
    name, odd = picked[0]
    odd.save(tmp_path / "noise.png")
    fresh[0].save(tmp_path / "usual.png")
    runner = CliRunner()
    got = runner.invoke(app, ["explain", str(model_dir), "noise.png", "-t", "a title", "--json"])
    assert got.exit_code == 0, got.output
    expected = loaded.predict_rows([odd], [name], ["a title"])[0].warning
    assert json.loads(got.stdout)["warning"] == expected
    shown = runner.invoke(app, ["explain", str(model_dir), "noise.png", "-t", "a title"])
    assert "outside the training range" in " ".join(shown.output.split())
    calm = runner.invoke(app, ["explain", str(model_dir), "usual.png", "-t", "a title", "--json"])
    usual = loaded.predict_rows([fresh[0]], ["u"], ["a title"])[0].warning
    assert json.loads(calm.stdout)["warning"] == usual


def test_the_range_checks_the_blocks_it_is_given_not_the_last_predicted(model_dir, fresh):
    """`embeddings` reuses the last `predict` pass only for that very pixels array."""
    loaded = LoadedPredictor.load(model_dir)
    odd, usual = (loaded.blocks(ims, ["a title"] * 4) for ims in (noise(8)[:4], fresh[:4]))
    alone = loaded.model.embeddings(usual)["image"]  # computed afresh
    loaded.predict(odd)  # remembered: the noise rows' embeddings
    assert np.array_equal(loaded.model.embeddings(usual)["image"], alone)
    assert loaded.outside(usual).tolist() == [bool(p.warning) for p in loaded.predict_rows(
        fresh[:4], list("abcd"), ["a title"] * 4)]  # fmt: skip
    again = loaded.model.embeddings(odd)["image"]  # the remembered pass, same array
    assert not np.allclose(again, alone) and loaded.outside(odd).sum() >= 3
