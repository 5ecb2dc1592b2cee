"""The reward is exactly `thumbview predict`'s number; the OOD guard bites only far out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _bot_fixture import bot_model_dir  # noqa: F401, F811
from thumbview.bot.reward import PredictorReward, RewardConfig
from thumbview.cli import app


def _images():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = Image.fromarray(np.stack([xx * 4, yy * 4, 255 - xx * 2], -1).astype(np.uint8))
    return [noise, smooth]


def test_reward_equals_thumbview_predict_on_the_same_images(bot_model_dir, tmp_path):  # noqa: F811
    images = _images()
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    title = "I tried it for 30 days"
    result = CliRunner().invoke(
        app, ["predict", str(bot_model_dir), *map(str, paths), "--title", title, "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # stdout alone: out-of-range lines go to stderr
    want = np.array([p["log10"] for p in rows])
    got = PredictorReward(bot_model_dir).score(images, [title, title])
    assert np.array_equal(got.log10, want)
    assert np.array_equal(got.total, got.log10 - got.ood)
    assert got.outside.tolist() == [bool(p["warning"]) for p in rows]  # one check for both


def test_ood_penalty_is_zero_in_distribution_and_large_for_a_saturated_frame(bot_model_dir):  # noqa: F811
    from thumbview.data.images import load_image

    synth = sorted((bot_model_dir.parent / "synth" / "images").glob("*.jpg"))[:4]
    reward = PredictorReward(bot_model_dir, RewardConfig(ood_weight=2.0))
    typical = reward.score([load_image(p) for p in synth], [""] * len(synth))
    assert np.median(typical.ood) < 0.01  # small training sets have a few tail images
    saturated = Image.new("RGB", (64, 64), (255, 0, 255))
    flagged = reward.score([saturated], [""])
    assert flagged.ood[0] > 1 and flagged.total[0] == flagged.log10[0] - 2.0 * flagged.ood[0]
    # the check every command uses flags it too, by name; training thumbnails are inside
    assert flagged.outside[0] and "outside the training range" in flagged.warning
    assert not typical.outside.any() and typical.warning == ""


def test_reward_config_refuses_clip_weight_without_local_weights():
    from thumbview.bot.rl import BotError

    with pytest.raises(BotError, match="clip-model"):
        RewardConfig(clip_weight=0.5)


def test_clip_similarity_term_from_local_weights(bot_model_dir, tmp_path):  # noqa: F811
    """A tiny random CLIPModel saved to disk: the term is a cosine in [-1, 1] added with its weight."""
    torch = pytest.importorskip("torch")
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
    )

    from thumbview.bot.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    text = {"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": tok.eos_token_id}  # fmt: skip
    vision = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 16}  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(
        tmp_path
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(tmp_path)
    from safetensors.torch import save_file

    head = {"weight": torch.linspace(-1, 1, 8), "bias": torch.tensor(5.0)}
    save_file(head, str(tmp_path / "aesthetic.safetensors"))
    config = RewardConfig(
        clip_weight=0.5,
        clip_model=str(tmp_path),
        aesthetic_weight=0.1,
        aesthetic_model=str(tmp_path / "aesthetic.safetensors"),
    )
    got = PredictorReward(bot_model_dir, config).score(_images(), ["a", "b"])
    assert np.all(np.abs(got.clip) <= 1) and np.all(got.clip != 0)
    assert np.all(np.abs(got.aesthetic - 5.0) <= np.sqrt(8))  # bias +- |weight| (unit embedding)
    want = got.log10 - got.ood + 0.5 * got.clip + 0.1 * got.aesthetic
    np.testing.assert_allclose(got.total, want)
