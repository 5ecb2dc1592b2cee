"""A tiny, randomly initialised Stable Diffusion pipeline built in code (no download).

Tests, the benchmark and `thumbview bot tiny-base` use it: the same classes and code paths
as a real base model (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer,
DDIMScheduler) at a size that runs in seconds on one CPU thread. Its images are noise: it
checks the machinery, never image quality.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TINY_SIZE = 64  # pixels; the VAE downsamples 8x to an 8x8 latent
TINY_MAX_TOKENS = 16


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character map (256 symbols)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet, each symbol also as a word end, plus the two specials."""
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_tokenizer() -> Any:
    """A CLIPTokenizer over single bytes (no merges): every title tokenises, nothing is fetched."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps(_byte_vocab()), encoding="utf-8")
        merges.write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=TINY_MAX_TOKENS)


# Constructor arguments of the tiny parts: the shapes of Stable Diffusion, scaled down so that
# a training step runs in about a second on 2 CPU cores.
TINY_UNET: dict[str, Any] = {
    "sample_size": TINY_SIZE // 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 8, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "layers_per_block": 1,
    "sample_size": TINY_SIZE,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": TINY_MAX_TOKENS,
}
SD_SCHEDULER: dict[str, Any] = {  # Stable Diffusion 1.x's DDIM settings
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def tiny_pipeline(seed: int = 0) -> Any:
    """StableDiffusionPipeline with a ~0.4M-parameter UNet, 64x64 -> 8x8 VAE, 2-layer text model."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet, vae = UNet2DConditionModel(**TINY_UNET), AutoencoderKL(**TINY_VAE)  # in seed order
    tokenizer = tiny_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), **TINY_TEXT, **special)
    return assemble_pipeline(unet, vae, CLIPTextModel(text_config), tokenizer)


def assemble_pipeline(unet, vae, text_encoder, tokenizer) -> Any:
    """A StableDiffusionPipeline of these parts with the bot's DDIM scheduler and no safety
    checker: how both the tiny base and the full-size benchmark's SD-1.5 are put together."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_base(out: str | Path, seed: int = 0) -> Path:
    """Write the tiny pipeline as a local base folder `StableDiffusionPipeline.from_pretrained` reads."""
    out = Path(out)
    tiny_pipeline(seed).save_pretrained(out, safe_serialization=True)
    return out


def linear_decoder(seed: int = 0, upscale: int = 8) -> Any:
    """A fixed linear latent -> RGB map (1x1 conv, nearest upsampling, squashed to [0, 1]).

    Learning tests use it instead of the random VAE, whose output barely depends on the
    latents' colour, so that a reward on colour can be reached through the latents at all.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 4, generator=gen) * 0.5  # (RGB, latent channels)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        rgb = torch.einsum("oc,bchw->bohw", weight.to(latents), latents)
        rgb = torch.sigmoid(rgb).repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        return rgb  # (B, 3, 8h, 8w) in (0, 1)

    return decode
