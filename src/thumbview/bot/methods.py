"""One training epoch of each method: `draft` (direct reward backprop) and `ddpo` (PPO).

Both only touch LoRA parameters (the optimizer holds nothing else) and both pay a KL
price for leaving the base model: DRaFT ||eps_theta - eps_ref||^2 on the steps it
backpropagates through, DDPO the closed-form Gaussian KL of each DDIM step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from thumbview.bot.policy import Policy, SampleConfig, Trajectory
from thumbview.bot.reward import PredictorReward, RewardBreakdown, TorchReward, to_pil
from thumbview.bot.rl import PerPromptStatTracker, ddim_step, gaussian_kl, ppo_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch logs: reward (= log10 - OOD) mean/std, predictor log10, OOD, KL, loss."""

    reward_mean: float
    reward_std: float
    log10_mean: float
    ood_mean: float
    kl: float
    loss: float


def draft_epoch(
    policy: Policy,
    reward: TorchReward,
    image_prompts: Sequence[str],
    titles: Sequence[str],
    seeds: Sequence[int],
    cfg: SampleConfig,
    optimizer: torch.optim.Optimizer,
    k: int = 1,
    kl_weight: float = 0.0,
) -> EpochStats:
    """DRaFT-K: sample, backprop the differentiable reward through the last K steps, step."""
    optimizer.zero_grad(set_to_none=True)
    traj = policy.sample(image_prompts, seeds, cfg, grad_last=k)
    total, ood = reward(traj.rgb, titles)  # (B,), (B,)
    kl = _draft_kl(policy, traj, k, cfg.guidance) if kl_weight > 0 else torch.zeros(())
    loss = -total.mean() + kl_weight * kl.to(total.device)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.lora_parameters(), 1.0)
    optimizer.step()
    r = total.detach().numpy()
    log10 = (total + reward.reward.config.ood_weight * ood).detach().numpy()
    return EpochStats(
        float(r.mean()),
        float(r.std()),
        float(log10.mean()),
        float(ood.detach().mean()),
        float(kl.detach()),
        float(loss.detach()),
    )


def _draft_kl(policy: Policy, traj: Trajectory, k: int, guidance: float) -> torch.Tensor:
    """mean ||eps_theta - eps_ref||^2 over the last k steps (inputs detached)."""
    terms = []
    for i in range(len(traj.timesteps) - k, len(traj.timesteps)):
        x, t = traj.latents[i], traj.timesteps[i]
        with torch.no_grad(), policy.reference():
            ref = policy.eps(x, t, traj.embeds, guidance)
        terms.append(((policy.eps(x, t, traj.embeds, guidance) - ref) ** 2).mean())
    return torch.stack(terms).mean()


def score_in_pool(
    reward: PredictorReward, images: list, titles: Sequence[str], workers: int
) -> RewardBreakdown:
    """The full predictor (faces, OCR) over chunks of images in a thread pool."""
    chunks = np.array_split(np.arange(len(images)), max(1, min(workers, len(images))))
    with ThreadPoolExecutor(max_workers=len(chunks), thread_name_prefix="bot-reward") as pool:
        parts = list(
            pool.map(
                lambda ix: reward.score([images[i] for i in ix], [titles[i] for i in ix]), chunks
            )
        )
    return RewardBreakdown(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("log10", "ood", "clip", "total", "aesthetic", "outside")
        ),
        warning="; ".join(dict.fromkeys(p.warning for p in parts if p.warning)),
    )


def ddpo_epoch(
    policy: Policy,
    reward: PredictorReward | Callable,
    image_prompts: Sequence[str],
    titles: Sequence[str],
    seeds: Sequence[int],
    cfg: SampleConfig,
    optimizer: torch.optim.Optimizer,
    tracker: PerPromptStatTracker,
    clip: float = 1e-4,
    adv_clip: float = 5.0,
    kl_weight: float = 0.0,
    workers: int = 2,
) -> EpochStats:
    """Sample with log-probs, score with the full predictor, PPO-update on every step."""
    with torch.no_grad():
        traj = policy.sample(image_prompts, seeds, cfg, log_probs=True)
    images = [to_pil(x) for x in traj.rgb]
    scored = (
        score_in_pool(reward, images, titles, workers)
        if isinstance(reward, PredictorReward)
        else reward(images, titles)
    )
    adv = np.clip(tracker.update(titles, scored.total), -adv_clip, adv_clip)
    eps_fn = lambda x, t: policy.eps(x, t, traj.embeds, cfg.guidance)  # noqa: E731

    def ref_fn(x, t):
        with policy.reference():
            return policy.eps(x, t, traj.embeds, cfg.guidance)

    loss, kl = ppo_update(
        eps_fn,
        ref_fn,
        policy.pipe.scheduler,
        traj,
        torch.as_tensor(adv, dtype=torch.float32, device=traj.latents.device),
        cfg.eta,
        optimizer,
        policy.lora_parameters(),
        clip,
        kl_weight,
    )
    r = scored.total
    return EpochStats(
        float(r.mean()),
        float(r.std()),
        float(scored.log10.mean()),
        float(scored.ood.mean()),
        kl,
        loss,
    )


def ppo_update(
    eps_fn: Callable,
    ref_fn: Callable | None,
    scheduler,
    traj: Trajectory,
    advantages: torch.Tensor,
    eta: float,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    clip: float,
    kl_weight: float = 0.0,
    max_grad_norm: float | None = 1.0,
) -> tuple[float, float]:
    """One pass over the trajectory's steps, gradients accumulated, one optimizer step.

    eps_fn(x_t, t) is the policy's noise prediction (with grad); ref_fn the base model's.
    Returns (mean loss, mean KL per step).
    """
    optimizer.zero_grad(set_to_none=True)
    n = len(traj.timesteps)
    losses, kls = [], []
    for j, t in enumerate(traj.timesteps):
        x, x_next = traj.latents[j], traj.latents[j + 1]
        step = ddim_step(scheduler, eps_fn(x, t), t, x, eta, prev_sample=x_next)
        if float(step.std) == 0:  # a deterministic last step carries no policy gradient
            continue
        loss = ppo_loss(step.log_prob, traj.log_probs[j], advantages, clip)
        kl = torch.zeros(())
        if kl_weight > 0 and ref_fn is not None:
            with torch.no_grad():
                ref = ddim_step(scheduler, ref_fn(x, t), t, x, eta, prev_sample=x_next)
            kl = gaussian_kl(step.mean, ref.mean, step.std).mean()
        ((loss + kl_weight * kl) / n).backward()
        losses.append(float(loss.detach()))
        kls.append(float(kl.detach()))
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return float(np.mean(losses)), float(np.mean(kls))
