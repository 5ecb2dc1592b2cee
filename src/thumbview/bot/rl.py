"""The reinforcement-learning maths of the bot, on tensors only (no pipeline, no files).

DDPO treats each DDIM step with eta > 0 as a Gaussian policy over the next latent, so a
sampled trajectory has a log-probability whose gradient can be weighted by an advantage.
Every function here is pure and checked against a reference in tests/test_bot_rl.py.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class BotError(ValueError):
    """A bot setting or input that cannot work; the message says why and what to do."""


@dataclass(frozen=True)
class DDIMStep:
    """One DDIM step: the next latent, its log-probability under N(mean, std^2), and both.

    prev_sample, mean: (B, C, H, W); log_prob: (B,) mean over latent dimensions; std: scalar.
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def ddim_step(
    scheduler,
    eps: torch.Tensor,
    timestep: int,
    sample: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> DDIMStep:
    """`DDIMScheduler.step` (epsilon prediction) with the log-probability of the step taken.

    The arithmetic follows diffusers' order operation by operation so that, for the same
    `noise`, `prev_sample` is bit-identical to `scheduler.step(..., variance_noise=noise)`.
    Give `prev_sample` to score a step already taken (the PPO ratio), else `noise` is used.
    """
    if scheduler.config.prediction_type != "epsilon":
        raise BotError(
            f"the bot needs an epsilon-prediction scheduler, got {scheduler.config.prediction_type!r}"
        )
    if eta <= 0:
        raise BotError(
            "a DDIM step with eta = 0 is deterministic and has no log-probability; use eta > 0"
        )
    t = int(timestep)
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_t = scheduler.alphas_cumprod[t]
    alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    beta_t = 1 - alpha_t
    x0 = (sample - beta_t ** (0.5) * eps) / alpha_t ** (0.5)
    if scheduler.config.clip_sample:
        x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    std = eta * scheduler._get_variance(t, prev_t) ** (0.5)
    mean = alpha_prev ** (0.5) * x0 + (1 - alpha_prev - std**2) ** (0.5) * eps
    if prev_sample is None:
        if noise is None:
            noise = torch.randn_like(sample)
        prev_sample = mean + std * noise
    if float(std) == 0:  # the last step with set_alpha_to_one: deterministic, nothing to learn
        zeros = torch.zeros(sample.shape[0], dtype=sample.dtype, device=sample.device)
        return DDIMStep(prev_sample, zeros, mean, std)
    return DDIMStep(prev_sample, gaussian_log_prob(prev_sample, mean, std), mean, std)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample (B,), averaged over dimensions (DDPO's convention)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if float(std) <= 0:
        raise BotError(
            "a DDIM step with eta = 0 is deterministic and has no log-probability; use eta > 0"
        )
    logp = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return logp.mean(dim=tuple(range(1, x.ndim)))  # (B,)


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, s^2) || N(mean_q, s^2)) per sample (B,), mean over dimensions (closed form)."""
    std = torch.as_tensor(std, dtype=mean_p.dtype, device=mean_p.device)
    kl = (mean_p - mean_q) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, mean_p.ndim)))  # (B,)


def ppo_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped surrogate, to minimise: mean of max(-A r, -A clip(r, 1 - c, 1 + c)).

    At r = 1 its gradient is -A grad(log_prob) / B; where the clip binds it is zero.
    """
    ratio = torch.exp(log_prob - old_log_prob)  # (B,)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped).mean()


class PerPromptStatTracker:
    """Advantages normalised per prompt, from a buffer of that prompt's recent rewards.

    A prompt whose titles always score high would otherwise dominate the gradient. Prompts
    with fewer than `min_count` rewards in the buffer fall back to the batch's statistics.
    Constant rewards give zero advantages (never NaN): the std has a floor.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 4, eps: float = 1e-6):
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.stats_: dict[str, deque] = defaultdict(lambda: deque(maxlen=buffer_size))

    def update(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """Add the batch to the buffers and return its advantages (N,)."""
        rewards = np.asarray(rewards, dtype=np.float64)  # (N,)
        prompts = np.asarray(list(prompts), dtype=object)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts.tolist()):
            mask = prompts == prompt
            buffer = self.stats_[prompt]
            buffer.extend(rewards[mask].tolist())
            ref = np.asarray(buffer) if len(buffer) >= self.min_count else rewards
            advantages[mask] = (rewards[mask] - ref.mean()) / max(ref.std(), self.eps)
        advantages[np.abs(advantages) < 1e-9] = 0.0
        return advantages

    def state(self) -> dict[str, list[float]]:
        """The buffers as JSON (for resuming)."""
        return {k: list(v) for k, v in self.stats_.items()}

    def load_state(self, state: dict[str, list[float]]) -> PerPromptStatTracker:
        for k, v in state.items():
            self.stats_[k].extend(float(x) for x in v)
        return self


def ood_penalty(z, threshold: float = 3.0):
    """sum over descriptors of max(0, |z| - threshold)^2 per row; numpy (N,D) or torch (B,D).

    z is standardised with the predictor's own training statistics, so only descriptors
    far outside what the predictor ever saw (saturation pinned at 1, text filling the
    frame) cost anything; the predictor's extrapolation there is not to be trusted.
    """
    if isinstance(z, torch.Tensor):
        return (torch.clamp(z.abs() - threshold, min=0.0) ** 2).sum(dim=1)
    return (np.clip(np.abs(z) - threshold, 0.0, None) ** 2).sum(axis=1)
