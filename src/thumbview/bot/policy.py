"""The policy: a base Stable Diffusion pipeline with a LoRA adapter on its UNet.

Sampling is our own DDIM loop over the pipeline's scheduler (not `pipe(...)`), because
training needs what the pipeline hides: each step's log-probability (DDPO), gradients
through the last K steps (DRaFT), and the reference model's noise prediction, which is
the same UNet with the adapter switched off, so the reference costs no extra memory.
Every sample has its own seed, so fixed seeds give the same images before and after
saving, in any batch composition.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from thumbview.bot.rl import BotError, ddim_step

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
MAX_STEPS = 1000  # the DDIM schedule's training timesteps
MAX_SIDE = 2048  # pixels a side: 4x Stable Diffusion 1.x's native 512
BASE_FILES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class SampleConfig:
    """steps: DDIM steps; eta: DDIM noise (> 0 for DDPO); guidance: classifier-free scale."""

    steps: int = 20
    eta: float = 1.0
    guidance: float = 5.0
    height: int = 512
    width: int = 512


@dataclass
class Trajectory:
    """latents: (T+1, B, C, h, w) x_T .. x_0; log_probs: (T, B); rgb: (B, 3, H, W) in [0, 1]."""

    latents: torch.Tensor
    log_probs: torch.Tensor | None
    timesteps: torch.Tensor
    rgb: torch.Tensor
    embeds: torch.Tensor


def load_base(base: str | Path):
    """StableDiffusionPipeline from a local folder (or a Hub id when online); BotError in words."""
    import diffusers
    import transformers
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()  # thumbview shows its own progress
    transformers.utils.logging.disable_progress_bar()
    path = Path(base)
    if path.exists() or str(base).startswith((".", "/", "~")):
        missing = [f for f in BASE_FILES if not (path / f).exists()]
        if missing:
            raise BotError(
                f"{base} is not a Stable Diffusion folder (missing {', '.join(missing)}); "
                "save one with pipe.save_pretrained(DIR) or `thumbview bot tiny-base DIR`"
            )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(base), safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BotError(f"cannot load base model {base}: {first}") from e
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Policy:
    """A pipeline + LoRA: sample with log-probs, decode, reference eps, save/load the adapter."""

    def __init__(self, pipe, lora_rank: int = 4, decoder: Callable | None = None):
        """A new adapter of `lora_rank` on the pipe's UNet (saved weights: `load_lora`)."""
        from peft import LoraConfig

        self.pipe = pipe
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_rank,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGETS),
        )
        pipe.unet.add_adapter(config)
        self.lora_rank = lora_rank
        self.decoder = decoder or self._vae_decode

    # ----- parameters ---------------------------------------------------------------------
    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.pipe.unet.named_parameters() if "lora_" in n]

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The base model: the same UNet with the LoRA adapter disabled."""
        self.pipe.unet.disable_adapters()
        try:
            yield
        finally:
            self.pipe.unet.enable_adapters()

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter in diffusers' LoRA format (what `pipe.load_lora_weights` reads)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.pipe.unet))

    def save_lora(self, out: Path) -> Path:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            out,
            unet_lora_layers=self.lora_state_dict(),
            unet_lora_adapter_metadata=self.pipe.unet.peft_config["default"].to_dict(),
            weight_name=LORA_FILE,
        )
        return Path(out) / LORA_FILE

    def load_lora(self, folder: Path) -> None:
        """Copy saved adapter weights into this policy's adapter (--resume, loading a bot).

        The file is checked first: exactly this adapter's tensors (every key, each of this
        base and rank's shape) and all finite; anything else is a BotError naming the file,
        and the adapter is left as it was."""
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict

        path = Path(folder) / LORA_FILE
        state = {k.removeprefix("unet."): v for k, v in read_tensors(path, "LoRA").items()}
        expected = {k: tuple(v.shape) for k, v in self.lora_state_dict().items()}
        if problem := tensor_mismatch(state, expected):
            raise BotError(f"{path} does not fit this base model and LoRA rank ({problem})")
        result = set_peft_model_state_dict(self.pipe.unet, convert_unet_state_dict_to_peft(state))
        if getattr(result, "unexpected_keys", None):
            raise BotError(f"{path} does not fit this base model's UNet")

    # ----- sampling -----------------------------------------------------------------------
    def embed(self, prompts: Sequence[str], guidance: float) -> torch.Tensor:
        """(2B or B, L, E) text embeddings: unconditional first when guidance > 1."""
        with torch.no_grad():
            cond, uncond = self.pipe.encode_prompt(
                list(prompts), self.pipe.device, 1, guidance > 1.0, [""] * len(prompts)
            )
        return torch.cat([uncond, cond]) if guidance > 1.0 else cond

    def eps(self, x: torch.Tensor, t, embeds: torch.Tensor, guidance: float) -> torch.Tensor:
        """Guided noise prediction (B, C, h, w)."""
        if guidance <= 1.0:
            return self.pipe.unet(x, t, encoder_hidden_states=embeds).sample
        out = self.pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample
        uncond, cond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    def initial_latents(
        self, seeds: Sequence[int], cfg: SampleConfig
    ) -> tuple[torch.Tensor, list[torch.Generator]]:
        """(noise (B, 4, h, w), the per-seed generators): drawn on the CPU, then moved to the
        pipeline's device, so a seed starts from the same noise on every device."""
        scale = self.pipe.vae_scale_factor
        shape = (4, cfg.height // scale, cfg.width // scale)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x = torch.stack([torch.randn(shape, generator=g) for g in gens])  # (B, C, h, w)
        return (x * self.pipe.scheduler.init_noise_sigma).to(self.pipe.device), gens

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        cfg: SampleConfig,
        grad_last: int = 0,
        log_probs: bool = False,
    ) -> Trajectory:
        """Run DDIM from per-seed noise; gradients through the last `grad_last` steps only."""
        sched = self.pipe.scheduler
        sched.set_timesteps(cfg.steps)
        embeds = self.embed(prompts, cfg.guidance)
        x, gens = self.initial_latents(seeds, cfg)
        latents, logps = [x], []
        for i, t in enumerate(sched.timesteps):
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device)
            with_grad = i >= len(sched.timesteps) - grad_last
            with torch.set_grad_enabled(with_grad):
                eps = self._eps_maybe_checkpointed(x, t, embeds, cfg.guidance, with_grad)
                if log_probs:
                    step = ddim_step(sched, eps, t, x, cfg.eta, noise=noise)
                    x, _ = step.prev_sample, logps.append(step.log_prob.detach())
                else:
                    x = sched.step(eps, t, x, eta=cfg.eta, variance_noise=noise).prev_sample
            latents.append(x if with_grad else x.detach())
        rgb = self.decoder(x)
        lp = torch.stack(logps) if logps else None
        return Trajectory(
            torch.stack([z.detach() for z in latents]), lp, sched.timesteps, rgb, embeds
        )

    def _eps_maybe_checkpointed(self, x, t, embeds, guidance, with_grad):
        if with_grad and torch.is_grad_enabled():
            return checkpoint(self.eps, x, t, embeds, guidance, use_reentrant=False)
        return self.eps(x, t, embeds, guidance)

    def _vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        image = vae.decode(latents / vae.config.scaling_factor).sample
        return (image / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W)


def check_sample_config(cfg: SampleConfig, method: str) -> None:
    """Settings sampling can run with; the bounds keep an edited bot.json from asking for an
    image of any size or any number of steps (memory and time grow with both)."""
    if method == "ddpo" and cfg.eta <= 0:
        raise BotError("ddpo needs eta > 0: a deterministic DDIM step has no log-probability")
    if not 1 <= cfg.steps <= MAX_STEPS or cfg.height % 8 or cfg.width % 8:
        raise BotError(f"steps must be 1..{MAX_STEPS} and the size a multiple of 8")
    if not (8 <= cfg.height <= MAX_SIDE and 8 <= cfg.width <= MAX_SIDE):
        raise BotError(f"the image size must be 8..{MAX_SIDE} pixels a side")


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file of a bot folder; BotError in words when it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError as e:
        raise BotError(f"{path} is missing: the bot folder is incomplete") from e
    except (OSError, ValueError, SafetensorError) as e:
        raise BotError(f"{path} is not a readable {what} file ({str(e)[:200]})") from e


def tensor_mismatch(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]
) -> str | None:
    """How `tensors` differ from `expected` (key -> shape), or None; non-finite values too."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        return (
            f"{len(missing)} tensors missing, {len(extra)} unexpected, e.g. {(missing + extra)[0]}"
        )
    for key, value in tensors.items():
        if tuple(value.shape) != expected[key]:
            return f"{key} is {tuple(value.shape)}, not {expected[key]}"
    return non_finite(tensors)


def non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Which tensor holds NaN or infinite values, or None (weights that would make noise)."""
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{key} holds NaN or infinite values"
    return None
