"""ClipEncoder against the plain transformers path it replaces (processor + model call)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from thumbview.embed.clip import ClipEncoder, ClipError, ClipModelError

# (height, width): landscape thumbnail, portrait, exact size, upscaled, extreme strips, HD.
SIZES = [(90, 120), (120, 90), (30, 30), (17, 23), (7, 300), (301, 5), (720, 1280)]


def _pil_processor(path):
    """The PIL (slow) CLIP processor: `CLIPImageProcessorPil` in transformers 5, else the old name."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(path)


def _images(sizes=SIZES, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return _images(SIZES[:5])


@pytest.fixture(scope="module")
def reference_model(tiny_clip_dir):
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(tiny_clip_dir).eval()


def _variant(src, dst, **processor_changes):
    """A copy of the tiny checkpoint with edited preprocessor_config.json entries."""
    shutil.copytree(src, dst)
    cfg_file = dst / "preprocessor_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(processor_changes)
    cfg_file.write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "size": {"shortest_edge": 36},
            "image_mean": [0.5, 0.4, 0.3],
            "image_std": [0.2, 0.3, 0.4],
        },
        {"size": {"shortest_edge": 24}},  # smaller than the crop: the processor pads
        {"size": {"height": 40, "width": 33}, "resample": 2},
    ],
)
def test_preprocess_matches_clip_image_processor(tiny_clip_dir, tmp_path, changes):
    model_dir = _variant(tiny_clip_dir, tmp_path / "clip", **changes)
    images = _images() + [Image.fromarray(np.full((50, 40), 200, np.uint8), mode="L")]
    expected = _pil_processor(model_dir)(images, return_tensors="pt")["pixel_values"]
    got = ClipEncoder(str(model_dir), dtype="float32").preprocess(images)
    assert got.shape == expected.shape == (len(images), 3, 30, 30)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_missing_processor_config_uses_clip_defaults(tiny_clip_dir, tmp_path, images):
    model_dir = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, model_dir)
    (model_dir / "preprocessor_config.json").unlink()
    got = ClipEncoder(str(model_dir), dtype="float32").preprocess(images)
    expected = _pil_processor(tiny_clip_dir)(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_output_shapes(tiny_clip_dir, images):
    n = len(images)
    projected = ClipEncoder(str(tiny_clip_dir), dtype="float32")
    assert projected.dim == 16
    assert projected.encode(images).shape == (n, 16)
    cls = ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2)
    assert cls.dim == 32
    assert cls.encode(images).shape == (n, 32)
    assert ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2, tokens="mean").encode(
        images
    ).shape == (n, 32)
    all_tokens = cls.residual_stream(images, layer=-2, tokens="all")
    assert all_tokens.shape == (n, 1 + 9, 32)  # CLS + 3x3 patches
    assert all_tokens.dtype == np.float32
    assert projected.encode([]).shape == (0, 16)


def test_projected_embeddings_match_model_and_are_normalised(
    tiny_clip_dir, images, reference_model
):
    pixels = _pil_processor(tiny_clip_dir)(images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(
            reference_model(pixel_values=pixels).image_embeds, dim=-1
        )
    got = ClipEncoder(str(tiny_clip_dir), dtype="float32").encode(images)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_layer_minus_two_is_the_hidden_state_reference(tiny_clip_dir, images, reference_model):
    pixels = _pil_processor(tiny_clip_dir)(images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = reference_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    cls = ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2).encode(images)
    mean = ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2, tokens="mean").encode(images)
    every = ClipEncoder(str(tiny_clip_dir), dtype="float32").residual_stream(
        images, layer=-2, tokens="all"
    )
    np.testing.assert_allclose(cls, hidden[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(mean, hidden[:, 1:].mean(dim=1).numpy(), atol=1e-5)
    np.testing.assert_allclose(every, hidden.numpy(), atol=1e-5)


def test_deterministic_and_batch_size_invariant(tiny_clip_dir, images):
    first = ClipEncoder(str(tiny_clip_dir), dtype="float32", batch_size=5).encode(images)
    again = ClipEncoder(str(tiny_clip_dir), dtype="float32", batch_size=5).encode(images)
    small_batches = ClipEncoder(str(tiny_clip_dir), dtype="float32", batch_size=2).encode(images)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(small_batches, first, atol=1e-5)


def test_full_clip_checkpoint_loads_vision_tower_and_projection(tmp_path, images):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=30, patch_size=10,
    )  # fmt: skip
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    full.save_pretrained(tmp_path)
    encoder = ClipEncoder(str(tmp_path), dtype="float32")
    pixels = encoder.preprocess(images)
    with torch.inference_mode():
        features = full.get_image_features(pixel_values=pixels)
    features = features if torch.is_tensor(features) else features.pooler_output
    assert encoder.dim == 8
    expected = torch.nn.functional.normalize(features, dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode(images), expected, atol=1e-5)


def test_bfloat16_is_close_to_float32_and_keyed_apart(tiny_clip_dir, images):
    exact = ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2)
    fast = ClipEncoder(str(tiny_clip_dir), layer=-2, dtype="bfloat16")
    a, b = exact.encode(images), fast.encode(images)
    assert b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    assert not np.array_equal(a, b)  # autocast really ran
    assert exact.spec_hash() != fast.spec_hash()


def test_spec_hash_tracks_what_changes_the_output(tiny_clip_dir, tmp_path):
    base = ClipEncoder(str(tiny_clip_dir), dtype="float32").spec_hash()
    minus_two = ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2).spec_hash()
    assert len({base, minus_two}) == 2
    assert ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-1).spec_hash() != minus_two
    assert (
        ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=-2, tokens="mean").spec_hash()
        != minus_two
    )
    assert (
        ClipEncoder(str(tiny_clip_dir), dtype="float32", layer=2).spec_hash() == minus_two
    )  # same hidden state
    assert ClipEncoder(str(tiny_clip_dir), dtype="float32", batch_size=3).spec_hash() == base
    other_std = _variant(tiny_clip_dir, tmp_path / "clip", image_std=[0.3, 0.3, 0.3])
    assert ClipEncoder(str(other_std), dtype="float32").spec_hash() != base


def test_missing_model_directory_gives_clear_error(tmp_path):
    encoder = ClipEncoder(str(tmp_path / "no-such-model"), dtype="float32")  # nothing is read yet
    with pytest.raises(ClipModelError, match="does not exist") as info:
        encoder.encode(_images([(30, 30)]))
    assert isinstance(info.value, ValueError)
    assert "hf download" in str(info.value)


def test_uncached_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = ClipEncoder("thumbview-tests/clip-that-is-not-cached")
    with pytest.raises(ClipModelError, match="offline") as info:
        _ = encoder.dim
    assert "hf download thumbview-tests/clip-that-is-not-cached" in str(info.value)


def test_directory_without_weights_gives_clear_error(tiny_clip_dir, tmp_path):
    shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    (tmp_path / "clip" / "model.safetensors").unlink()
    encoder = ClipEncoder(str(tmp_path / "clip"), dtype="float32")
    assert encoder.dim == 16  # the config alone is enough for the spec
    with pytest.raises(ClipModelError, match="cannot load CLIP weights"):
        encoder.encode(_images([(30, 30)]))


def test_corrupt_config_gives_clear_error(tiny_clip_dir, tmp_path):
    shutil.copytree(tiny_clip_dir, tmp_path / "clip")
    (tmp_path / "clip" / "config.json").write_text("{not json")
    with pytest.raises(ClipModelError, match="unreadable CLIP config"):
        _ = ClipEncoder(str(tmp_path / "clip"), dtype="float32").dim


def test_bad_arguments_are_rejected(tiny_clip_dir):
    with pytest.raises(ClipError, match="tokens"):
        ClipEncoder(str(tiny_clip_dir), dtype="float32", tokens="all")
    with pytest.raises(ClipError, match="dtype"):
        ClipEncoder(str(tiny_clip_dir), dtype="float16")
    with pytest.raises(ClipError, match="out of range"):
        _ = ClipEncoder(
            str(tiny_clip_dir), dtype="float32", layer=4
        ).dim  # 3 blocks: hidden_states[0..3]
    with pytest.raises(ClipError, match="not a PIL image"):
        ClipEncoder(str(tiny_clip_dir), dtype="float32").encode([np.zeros((30, 30, 3), np.uint8)])


def test_auto_dtype_uses_bf16_only_with_hardware_support(tiny_clip_dir, monkeypatch):
    from thumbview.embed import clip

    monkeypatch.setattr(clip, "native_bf16", lambda device: True)
    assert ClipEncoder(str(tiny_clip_dir)).dtype == "bfloat16"
    monkeypatch.setattr(clip, "native_bf16", lambda device: False)
    assert ClipEncoder(str(tiny_clip_dir)).dtype == "float32"
    assert ClipEncoder(str(tiny_clip_dir), dtype="float32").dtype == "float32"
