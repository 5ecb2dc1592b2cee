"""thumbnailbot: reward-tune a diffusion model with the view predictor, generate ranked thumbnails.

Optional: needs the `bot` extra (`pip install 'thumbview[bot]'`: diffusers + peft). Modules
that import torch/diffusers do so at the top, so import them only inside commands.

- `rl`: DDIM step log-probability, PPO loss, per-prompt advantages, KL, OOD penalty (pure).
- `descriptors`: differentiable torch ports of the visual descriptors (for `draft`).
- `reward`: the predictor as a reward, exactly `thumbview predict`'s path, with guards.
- `policy`: the base pipeline + LoRA, sampling with log-probabilities, reference = adapter off.
- `folder`: `BotConfig`, prompts, `bot.json` (what generation reads without the training loop).
- `train`: `draft` and `ddpo` epochs, artifacts, resume. `generate`: ranked candidates.
"""

from __future__ import annotations

__all__ = ["INSTALL_HINT", "require_bot_extra"]

INSTALL_HINT = "the thumbnail bot needs diffusers and peft: pip install 'thumbview[bot]'"


def require_bot_extra() -> None:
    """Raise ImportError with the install line when diffusers or peft is missing."""
    import importlib.util

    missing = [m for m in ("diffusers", "peft", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{', '.join(missing)} not installed; {INSTALL_HINT}")
