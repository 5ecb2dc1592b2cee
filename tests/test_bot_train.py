"""Training: draft raises the reward, ddpo learns a toy task, only LoRA changes, save/load."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from _bot_fixture import bot_model_dir, planted_model_dir, tiny_base  # noqa: E402, F401, F811
from thumbview.bot.folder import BotConfig  # noqa: E402
from thumbview.bot.methods import draft_epoch, ppo_update  # noqa: E402
from thumbview.bot.policy import Policy, SampleConfig, Trajectory, load_base  # noqa: E402
from thumbview.bot.reward import PredictorReward, TorchReward, to_pil  # noqa: E402
from thumbview.bot.rl import BotError, PerPromptStatTracker, ddim_step  # noqa: E402
from thumbview.bot.tiny import linear_decoder  # noqa: E402

SAMPLE = SampleConfig(steps=2, eta=0.0, guidance=1.0, height=64, width=64)
EVAL_SEEDS = [101, 102, 103]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _policy(base, decoder=None):
    torch.manual_seed(0)
    return Policy(load_base(base), lora_rank=4, decoder=decoder)


def test_ddpo_refuses_eta_zero():
    with pytest.raises(BotError, match="eta > 0"):
        BotConfig(method="ddpo", sample=replace(SAMPLE, eta=0.0))


def test_draft_raises_the_reward_on_fixed_seeds_and_changes_only_lora(tiny_base, planted_model_dir):  # noqa: F811
    """A predictor with a planted warmth effect: draft must find it through the descriptors."""
    policy = _policy(tiny_base, linear_decoder())
    reward = PredictorReward(planted_model_dir)
    treward = TorchReward(reward)
    prompts, titles = ["a red thing"] * 3, ["a title"] * 3

    def eval_reward() -> float:
        with torch.no_grad():
            rgb = policy.sample(prompts, EVAL_SEEDS, SAMPLE).rgb
        return float(reward.score([to_pil(x) for x in rgb], titles).total.mean())

    frozen = {
        n: p.detach().clone() for n, p in policy.pipe.unet.named_parameters() if "lora_" not in n
    }
    lora = {n: p.detach().clone() for n, p in policy.pipe.unet.named_parameters() if "lora_" in n}
    before = eval_reward()
    opt = torch.optim.Adam(policy.lora_parameters(), lr=1e-2)
    for epoch in range(3):
        draft_epoch(
            policy,
            treward,
            ["a red thing"] * 2,
            ["a title"] * 2,
            [epoch * 10 + i for i in range(2)],
            SAMPLE,
            opt,
            k=2,
            kl_weight=0.01,
        )
    after = eval_reward()
    assert after > before + 0.05, (before, after)
    now = dict(policy.pipe.unet.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    assert any(not torch.equal(now[n], v) for n, v in lora.items())


def test_torch_reward_matches_the_full_predictor(tiny_base, bot_model_dir):  # noqa: F811
    reward = PredictorReward(bot_model_dir)
    rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    total, ood = TorchReward(reward)(rgb, ["t", "t"])
    full = reward.score([to_pil(x) for x in rgb], ["t", "t"])
    np.testing.assert_allclose(total.detach().numpy(), full.total, atol=0.02)
    np.testing.assert_allclose(ood.detach().numpy(), full.ood, atol=0.05)


class _ToyEps(torch.nn.Module):
    """eps = a learnable per-channel bias: the smallest policy DDPO can steer."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1, 4, 1, 1))

    def forward(self, x, t):
        return torch.zeros_like(x) + self.bias


def _toy_rollout(toy, sched, x, gen=None):
    lat, logps = [x], []
    with torch.no_grad():
        for t in sched.timesteps:
            noise = torch.randn(x.shape, generator=gen) if gen is not None else None
            step = ddim_step(sched, toy(x, t), t, x, eta=1.0, noise=noise)
            x = step.prev_sample
            lat.append(x)
            logps.append(step.log_prob)
    reward = x[:, 0].mean(dim=(1, 2)).numpy()  # (B,) toy reward: channel 0 of the final latent
    return Trajectory(torch.stack(lat), torch.stack(logps), sched.timesteps, x, x), reward


def _toy_run(
    shuffle: bool, epochs: int = 15, batch: int = 64, lr: float = 1.0, seed: int = 0
) -> tuple[float, float]:
    """Mean reward on fixed evaluation noise (512 draws) before and after DDPO training."""
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    # a short, noisy schedule: every step has a sizeable std, so the toy learns in a few epochs
    sched = DDIMScheduler(
        num_train_timesteps=10,
        beta_start=0.1,
        beta_end=0.3,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    sched.set_timesteps(2)
    toy, tracker = _ToyEps(), PerPromptStatTracker()
    opt = torch.optim.SGD(toy.parameters(), lr=lr)
    rng = np.random.default_rng(seed)

    def evaluate() -> float:
        gen = torch.Generator().manual_seed(123)
        return float(
            _toy_rollout(toy, sched, torch.randn(512, 4, 2, 2, generator=gen), gen)[1].mean()
        )

    before = evaluate()
    for _ in range(epochs):
        traj, r = _toy_rollout(toy, sched, torch.randn(batch, 4, 2, 2))
        adv = tracker.update(["p"] * batch, r)
        if shuffle:
            adv = rng.permutation(adv)
        for _ in range(2):  # two PPO passes: the second sees ratio != 1, so the clip matters
            ppo_update(
                toy,
                None,
                sched,
                traj,
                torch.as_tensor(adv, dtype=torch.float32),
                1.0,
                opt,
                list(toy.parameters()),
                clip=0.2,
                max_grad_norm=None,
            )
    return before, evaluate()


def test_ddpo_learns_a_toy_policy_and_a_shuffled_control_does_not():
    start, end = _toy_run(shuffle=False)
    assert end > start + 1.0, (start, end)  # seed 0: 0.01 -> 2.2
    start_c, end_c = _toy_run(shuffle=True)
    assert abs(end_c - start_c) < 0.7, (start_c, end_c)  # seed 0: 0.01 -> 0.54


def test_save_then_load_reproduces_images_bit_for_bit(tiny_base, tmp_path):  # noqa: F811
    from thumbview.bot.generate import LoadedBot
    from thumbview.bot.train import BOT_FILE

    policy = _policy(tiny_base)
    with torch.no_grad():  # a non-zero adapter, so a failed load would show
        for p in policy.lora_parameters():
            p.add_(torch.randn_like(p) * 0.05)
        want = policy.sample(["x"], [7], SAMPLE).rgb
    policy.save_lora(tmp_path)
    import json

    from thumbview.bot.train import FORMAT

    cfg = BotConfig(sample=SAMPLE)
    from dataclasses import asdict

    (tmp_path / BOT_FILE).write_text(
        json.dumps({"format": FORMAT, "base": str(tiny_base), "config": asdict(cfg)})
    )
    bot = LoadedBot.load(tmp_path)
    got = bot.images(["x"], [7])
    assert np.array_equal(np.asarray(got[0]), np.asarray(to_pil(want[0])))
    with torch.no_grad():
        again = bot.policy.sample(["x"], [7], SAMPLE).rgb
    assert torch.equal(again, want)
    base = bot.images(["x"], [7], lora=False)
    assert not np.array_equal(np.asarray(base[0]), np.asarray(got[0]))
    # --resume's path: the saved file copied into a fresh policy's own adapter
    fresh = _policy(tiny_base)
    fresh.load_lora(tmp_path)
    want_state, got_state = policy.lora_state_dict(), fresh.lora_state_dict()
    assert want_state.keys() == got_state.keys()
    assert all(torch.equal(want_state[k], got_state[k]) for k in want_state)


def _snapshot(policy, optimizer) -> dict:
    """The adapter and AdamW state as plain tensors: what an epoch leaves behind."""
    flat = {f"lora.{k}": v.detach().clone() for k, v in policy.lora_state_dict().items()}
    for i, p in enumerate(policy.lora_parameters()):
        for slot, v in optimizer.state.get(p, {}).items():
            flat[f"adam.{i}.{slot}"] = torch.as_tensor(v).clone()
    return flat


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _crash_in_epoch_2(bot_train, monkeypatch, where):
    """Make epoch 2's save die after it wrote its first file (the LoRA) and before the next:
    `optimizer` dies in the optimizer write, `log` in the training log's write."""
    writes = {"optimizer": bot_train.save_optimizer, "log": bot_train.atomic_write}
    seen = []

    def dies(*args, **kwargs):
        path = str(args[-1] if where == "optimizer" else args[0])
        if where == "optimizer" or path.endswith(bot_train.LOG_FILE):
            seen.append(path)
            if len(seen) == 2:
                raise RuntimeError("killed between two files of epoch 2")
        return writes[where](*args, **kwargs)

    name = "save_optimizer" if where == "optimizer" else "atomic_write"
    monkeypatch.setattr(bot_train, name, dies)


@pytest.mark.parametrize("where", ["optimizer", "log"])
def test_a_save_killed_between_two_files_resumes_from_the_last_complete_epoch(where, tiny_base, bot_model_dir, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """Before: the epoch's LoRA was written first, then the optimizer, log, state.json and
    bot.json; a kill in between left epoch 2's LoRA beside epoch 1's history and optimizer,
    and `--resume` trained epoch 2 again from that mix. Now `--resume` starts an epoch with
    the LoRA and optimizer that the epoch before it ended with, whichever write was killed,
    and the folder it ends with holds the LoRA and history of its last epoch."""
    import json

    import thumbview.bot.train as bot_train
    from thumbview.bot.folder import Prompt

    # run -> {"start"|"end": {epochs done: (adapter, optimizer state)}}
    seen = {"killed": {"start": {}, "end": {}}, "resumed": {"start": {}, "end": {}}}
    epoch_fn, run = bot_train._epoch, ["killed"]

    def spy(policy, rewards, prompts, config, optimizer, tracker, out_dir, epoch):
        seen[run[0]]["start"][epoch] = _snapshot(policy, optimizer)
        out = epoch_fn(policy, rewards, prompts, config, optimizer, tracker, out_dir, epoch)
        seen[run[0]]["end"][epoch + 1] = _snapshot(policy, optimizer)
        return out

    monkeypatch.setattr(bot_train, "_epoch", spy)
    config = BotConfig(epochs=3, batch=1, per_prompt=1, eval_seeds=1, sample=SAMPLE)
    bot, titles = tmp_path / "bot", [Prompt("worst cake ever", "cake")]
    with monkeypatch.context() as patch:
        _crash_in_epoch_2(bot_train, patch, where)
        with pytest.raises(RuntimeError, match="killed between"):
            bot_train.train_bot(str(tiny_base), bot_model_dir, titles, bot, config)
    assert sorted(seen["killed"]["end"]) == [1, 2]  # epoch 2 was trained, its save killed
    run[0] = "resumed"
    result = bot_train.train_bot(str(tiny_base), bot_model_dir, titles, bot, config, resume=True)
    first = min(seen["resumed"]["start"])
    assert first in (1, 2)  # epoch 1's save finished, so at most epoch 2 is trained again
    assert first == {"optimizer": 1, "log": 2}[where]  # epoch 2's checkpoint: unwritten/whole
    assert _same(seen["resumed"]["start"][first], seen["killed"]["end"][first])
    assert [r["epoch"] for r in result.history] == [1, 2, 3] and result.epochs_done == 3
    meta = json.loads((bot / "bot.json").read_text())
    lines = (bot / "train_log.jsonl").read_text().splitlines()
    assert meta["epochs_done"] == 3 and [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    final = Policy(load_base(tiny_base), lora_rank=config.lora_rank)
    final.load_lora(bot)  # what `bot generate` and diffusers read: the last epoch's adapter
    saved = {f"lora.{k}": v for k, v in final.lora_state_dict().items()}
    assert _same(saved, {k: v for k, v in seen["resumed"]["end"][3].items() if k in saved})


def test_a_bot_saved_before_checkpoints_resumes_from_its_own_files(tiny_base, bot_model_dir, tmp_path, monkeypatch):  # noqa: F811  # fmt: skip
    """A folder `bot train` wrote at d7022a0 (resume state beside the LoRA, no checkpoint)
    resumes from its LoRA and history; its resume state then lives in checkpoint-002 only."""
    import shutil
    from pathlib import Path

    import thumbview.bot.train as bot_train
    from thumbview.bot.folder import BotConfig, Prompt
    from thumbview.bot.policy import read_tensors

    legacy = Path(__file__).parent / "data" / "legacy" / "d7022a0" / "bot"
    bot = Path(shutil.copytree(legacy, tmp_path / "bot"))
    started, epoch_fn = {}, bot_train._epoch

    def spy(policy, *args):
        started[args[-1]] = {k: v.detach().clone() for k, v in policy.lora_state_dict().items()}
        return epoch_fn(policy, *args)

    monkeypatch.setattr(bot_train, "_epoch", spy)
    config = BotConfig(epochs=2, batch=1, per_prompt=1, eval_seeds=1, sample=SAMPLE)
    result = bot_train.train_bot(str(tiny_base), bot_model_dir, [Prompt("t", "p")], bot, config, resume=True)  # fmt: skip
    saved = read_tensors(legacy / "pytorch_lora_weights.safetensors", "LoRA")
    saved = {k.removeprefix("unet."): v for k, v in saved.items()}  # as `load_lora` reads it
    assert list(started) == [1] and all(torch.equal(v, saved[k]) for k, v in started[1].items())
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert [p.name for p in bot_train.checkpoints(bot)] == ["checkpoint-002"]
    assert not (bot / "state.json").exists() and not (bot / "optimizer.safetensors").exists()
