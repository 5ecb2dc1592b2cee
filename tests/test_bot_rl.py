"""The RL maths: DDIM log-probability, PPO clip, advantages, KL, OOD penalty."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from thumbview.bot.rl import (  # noqa: E402
    BotError,
    PerPromptStatTracker,
    ddim_step,
    gaussian_kl,
    gaussian_log_prob,
    ood_penalty,
    ppo_loss,
)


def _scheduler(steps: int = 5):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    sched.set_timesteps(steps)
    return sched


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers_exactly(eta):
    torch.manual_seed(0)
    sched = _scheduler()
    x = torch.randn(3, 4, 8, 8)
    for t in sched.timesteps:
        eps, noise = torch.randn_like(x), torch.randn_like(x)
        want = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        if eta == 0:
            with pytest.raises(BotError, match="eta"):
                ddim_step(sched, eps, t, x, eta, noise=noise)
            return
        got = ddim_step(sched, eps, t, x, eta, noise=noise)
        assert torch.equal(got.prev_sample, want)
        # log-probability is that of a Gaussian with the step's mean and std
        ref = torch.distributions.Normal(got.mean, got.std).log_prob(want).mean(dim=(1, 2, 3))
        torch.testing.assert_close(got.log_prob, ref, rtol=1e-5, atol=1e-5)
        rescored = ddim_step(sched, eps, t, x, eta, prev_sample=want)
        torch.testing.assert_close(rescored.log_prob, got.log_prob)
        x = want


def test_ppo_gradient_is_minus_advantage_times_grad_logp_at_ratio_one():
    theta = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    logp = theta * torch.tensor([1.0, 2.0, 3.0])  # d logp_i / d theta_i = 1, 2, 3
    ppo_loss(logp, logp.detach(), adv, clip=0.2).backward()
    want = -adv * torch.tensor([1.0, 2.0, 3.0]) / 3
    torch.testing.assert_close(theta.grad, want)


def test_ppo_gradient_is_zero_where_clipped():
    theta = torch.tensor([1.0, -1.0], requires_grad=True)  # ratio e^1 and e^-1: outside 1 +- 0.2
    old = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])  # the clip binds for A>0, r>1+c and A<0, r<1-c
    ppo_loss(theta, old, adv, clip=0.2).backward()
    assert torch.equal(theta.grad, torch.zeros(2))
    theta.grad = None
    ppo_loss(theta, old, -adv, clip=0.2).backward()  # the other side is not clipped
    assert (theta.grad != 0).all()


def test_constant_rewards_give_zero_advantages_not_nan():
    tracker = PerPromptStatTracker(min_count=2)
    adv = tracker.update(["a", "a", "b", "b"], np.full(4, 0.1))
    assert np.array_equal(adv, np.zeros(4))
    adv = tracker.update(["a", "b"], np.array([0.1, 0.1]))
    assert np.array_equal(adv, np.zeros(2))


def test_advantages_are_normalised_per_prompt():
    tracker = PerPromptStatTracker(min_count=2)
    adv = tracker.update(["a", "a", "b", "b"], np.array([1.0, 3.0, 100.0, 102.0]))
    np.testing.assert_allclose(adv, [-1, 1, -1, 1])  # the big prompt does not dominate
    restored = PerPromptStatTracker(min_count=2).load_state(tracker.state())
    np.testing.assert_allclose(restored.update(["a"], [2.0]), tracker.update(["a"], [2.0]))


def test_kl_is_closed_form_gaussian_kl():
    torch.manual_seed(1)
    mp, mq, std = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor(0.7)
    p, q = torch.distributions.Normal(mp, std), torch.distributions.Normal(mq, std)
    want = torch.distributions.kl_divergence(p, q).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_kl(mp, mq, std), want)
    assert torch.equal(gaussian_kl(mp, mp, std), torch.zeros(2))


def test_log_prob_refuses_zero_std():
    with pytest.raises(BotError, match="eta"):
        gaussian_log_prob(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor(0.0))


def test_ood_penalty_only_beyond_threshold_numpy_and_torch_agree():
    z = np.array([[0.0, 2.9, -3.0], [4.0, -5.0, 3.5]])
    np.testing.assert_allclose(ood_penalty(z), [0.0, 1.0 + 4.0 + 0.25])
    np.testing.assert_allclose(ood_penalty(torch.tensor(z)).numpy(), ood_penalty(z))
