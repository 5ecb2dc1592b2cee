"""Train a bot: the epoch loop, its artifacts, resuming, and Ctrl-C.

A BOT folder holds `bot.json` (base, predictor digest, method, hyperparameters, reward
history), `pytorch_lora_weights.safetensors` (diffusers' LoRA format), `train_log.jsonl`
(one line per epoch), `samples/epoch_NNN.png` (fixed evaluation seeds), `reward.png`, and
the resume state (`optimizer.safetensors`, `state.json`). Everything is safetensors or
JSON; nothing is pickled. The folder is rewritten after every epoch, so an interrupted
run loses at most the epoch in progress; until the run ends the folder also holds
`UNFINISHED` (`layout.RUN_UNFINISHED`), so every command that loads a bot (`read_bot`)
refuses a killed or interrupted one, and `--resume` goes on from its last saved epoch.

An epoch is saved all or nothing: its LoRA, optimizer state, `state.json` (history, tracker)
and `bot.json` are written into a fresh hidden folder that one rename publishes as
`checkpoint-NNN` (`fileio.publish_dir`); only then are the folder's own files (the LoRA,
`bot.json`, the log, the plot) copied from it and older checkpoints removed. `--resume`
reads only the newest checkpoint (a folder written before checkpoints: its own files), so a
kill between two writes resumes from the last complete epoch, its LoRA, optimizer and history
together, and the folder's files are rewritten from that checkpoint before training goes on.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from thumbview.bot.folder import (
    BOT_FILE,
    FORMAT,
    FORMAT_VERSION,
    BotConfig,
    Prompt,
    read_bot,
    save_grid,
)
from thumbview.bot.methods import EpochStats, ddpo_epoch, draft_epoch
from thumbview.bot.policy import LORA_FILE, Policy, load_base, read_tensors, tensor_mismatch
from thumbview.bot.reward import (
    HELD_FIXED,
    PredictorReward,
    TorchReward,
    predictor_digest,
    to_pil,
)
from thumbview.bot.rl import BotError, PerPromptStatTracker
from thumbview.fileio import atomic_write, json_safe, publish_dir, published, while_running
from thumbview.layout import RUN_UNFINISHED
from thumbview.schema import MapOf, Number, Optional, read_json

log = logging.getLogger(__name__)

LOG_FILE, STATE_FILE, OPTIM_FILE = "train_log.jsonl", "state.json", "optimizer.safetensors"
CHECKPOINT = "checkpoint-{:03d}"  # an epoch's resume state, published whole (`_save`)
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
_ADAM_SLOTS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
# state.json as `_save` writes it (NaN is written as null); the extra row keys are not read.
_ROW = {"epoch": int, **{k: Optional(Number) for k in ("reward_mean", "loss", "kl", "ood_mean", "eval_log10")}}  # fmt: skip
STATE_SCHEMA = {"history": [_ROW], "tracker": MapOf([Number])}


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    epochs_done: int
    history: tuple[dict, ...]


class BotInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the finished epochs are saved; `epochs_done` says how many."""

    def __init__(self, out_dir: Path, epochs_done: int):
        super().__init__(f"saved after epoch {epochs_done} in {out_dir}")
        self.out_dir, self.epochs_done = out_dir, epochs_done


def train_bot(
    base: str,
    model_dir: str | Path,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    config: BotConfig = BotConfig(),
    *,
    eval_model: str | Path | None = None,
    resume: bool = False,
    decoder: Callable | None = None,
    on_epoch: Callable[[int, EpochStats], None] | None = None,
) -> TrainResult:
    """Tune a LoRA on `base` against the predictor in `model_dir`; see the module docstring.

    `on_epoch(epochs_done, stats)` is a report (thumbview.progress: progress vs reports),
    called after each epoch is saved.
    """
    out_dir = Path(out_dir)
    pipe = load_base(base)  # first: a bad base must not leave an empty BOT folder behind
    state = _start(out_dir, config, resume)
    config = state.pop("config")
    torch.manual_seed(config.seed)
    policy = Policy(pipe, config.lora_rank, decoder)
    reward = PredictorReward(model_dir, config.reward)
    reward_b = PredictorReward(eval_model, config.reward) if eval_model else None
    torch_reward = TorchReward(reward) if config.method == "draft" else None
    optimizer = torch.optim.AdamW(policy.lora_parameters(), lr=config.lr)
    tracker = PerPromptStatTracker()
    source = state["source"]  # the newest checkpoint (None: a fresh run)
    if source is not None:
        policy.load_lora(source)
        load_optimizer(optimizer, policy.lora_parameters(), source / OPTIM_FILE)
        tracker.load_state(state["tracker"])
    meta = _meta(base, model_dir, eval_model, config)
    history = list(state["history"])
    epoch, rewards = len(history), (reward, reward_b, torch_reward)
    # Written once every check above has passed (a refused resume leaves the folder as it
    # was); stays on a kill, a crash or Ctrl-C, so `read_bot` refuses that folder until
    # `--resume` goes on to the end.
    with while_running(out_dir / RUN_UNFINISHED, "thumbview bot train"):
        if source is not None and source != out_dir:  # a kill may have left them mixed
            _publish(out_dir, source, history)
        try:
            while epoch < config.epochs:
                stats, row = _epoch(policy, rewards, prompts, config, optimizer, tracker, out_dir, epoch)  # fmt: skip
                history.append(row)
                epoch += 1
                _save(out_dir, policy, optimizer, tracker, meta, history)
                if on_epoch:
                    on_epoch(epoch, stats)
        except KeyboardInterrupt:
            raise BotInterrupted(out_dir, epoch) from None
    return TrainResult(out_dir, epoch, tuple(history))


def _epoch(policy, rewards, prompts, config: BotConfig, optimizer, tracker, out_dir, epoch):
    """Epoch `epoch` + 1: tune, then evaluate on the fixed seeds (its grid written);
    (its EpochStats, its row of the training log)."""
    reward, reward_b, torch_reward = rewards
    t0 = time.perf_counter()
    chosen, seeds = _epoch_batch(prompts, config, epoch)
    scorer = torch_reward if config.method == "draft" else reward
    stats = _tune_epoch(policy, scorer, chosen, seeds, config, optimizer, tracker)
    row = {
        "epoch": epoch + 1,
        **asdict(stats),
        **_evaluate(policy, reward, reward_b, prompts, config, out_dir, epoch + 1),
    }
    row["seconds"] = time.perf_counter() - t0
    return stats, row


def _tune_epoch(policy, scorer, chosen, seeds, config: BotConfig, optimizer, tracker):
    """One epoch of the configured method: DRaFT backpropagates through `scorer` (a
    TorchReward), DDPO only reads its scores (a PredictorReward)."""
    titles = [p.title for p in chosen]
    image_prompts = [p.image_prompt for p in chosen]
    if config.method == "draft":
        return draft_epoch(policy, scorer, image_prompts, titles, seeds, config.sample,
                           optimizer, config.draft_k, config.kl)  # fmt: skip
    return ddpo_epoch(policy, scorer, image_prompts, titles, seeds, config.sample, optimizer,
                      tracker, config.ppo_clip, config.adv_clip, config.kl, config.workers)  # fmt: skip


def _start(out_dir: Path, config: BotConfig, resume: bool) -> dict:
    """Fresh run: an empty/new folder. Resume: the newest checkpoint's saved config (epochs
    may be raised), history and tracker, and the checkpoint folder (`source`)."""
    if not resume:
        if (out_dir / BOT_FILE).exists() or checkpoints(out_dir):
            raise BotError(
                f"{out_dir} already holds a bot; pass --resume to continue it or choose a new --out"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        return {"config": config, "history": [], "tracker": {}, "source": None}
    found = checkpoints(out_dir)
    source = found[-1] if found else out_dir  # a folder saved before checkpoints: its own files
    if not (source / STATE_FILE).exists():
        raise BotError(f"nothing to resume in {out_dir} (no {STATE_FILE})")
    saved = read_bot(source, unfinished_ok=True)  # a killed run is what --resume is for
    state = read_json(source / STATE_FILE, STATE_SCHEMA, BotError)
    if [row["epoch"] for row in state["history"]] != list(range(1, len(state["history"]) + 1)):
        raise BotError(f"{source / STATE_FILE}: history must hold epochs 1, 2, ... in order")
    cfg = BotConfig.from_dict(saved["config"])
    cfg = replace(cfg, epochs=max(config.epochs, len(state["history"])))
    return {
        "config": cfg,
        "history": state["history"],
        "tracker": state["tracker"],
        "source": source,
    }


def checkpoints(out_dir: Path) -> list[Path]:
    """The published `checkpoint-NNN` folders in `out_dir`, oldest first (the last is the
    one `--resume` reads; hidden staging folders are never listed)."""
    return published(out_dir, _CHECKPOINT_NAME)


def _epoch_batch(
    prompts: Sequence[Prompt], config: BotConfig, epoch: int
) -> tuple[list[Prompt], list[int]]:
    """This epoch's prompts (each per_prompt times) and sample seeds, from (seed, epoch)."""
    rng = np.random.default_rng([config.seed, epoch])
    idx = rng.choice(len(prompts), size=config.batch, replace=len(prompts) < config.batch)
    chosen = [prompts[i] for i in idx for _ in range(config.per_prompt)]
    return chosen, rng.integers(0, 2**31 - 1, size=len(chosen)).tolist()


def eval_seeds(config: BotConfig) -> list[int]:
    """The fixed evaluation seeds: never used for training (those come from a different stream)."""
    return [10_000 + i for i in range(config.eval_seeds)]


@torch.no_grad()
def _evaluate(
    policy, reward, reward_b, prompts, config: BotConfig, out_dir: Path, epoch: int
) -> dict:
    """Deterministic (eta 0) samples of the first prompts on fixed seeds: reward, grid."""
    chosen = list(prompts[:4])
    seeds = eval_seeds(config)
    cfg = replace(config.sample, eta=0.0)
    rgb = policy.sample(
        [p.image_prompt for p in chosen for _ in seeds], seeds * len(chosen), cfg
    ).rgb
    images = [to_pil(x) for x in rgb]
    titles = [p.title for p in chosen for _ in seeds]
    scored = reward.score(images, titles)
    outside = 0.0 if scored.outside is None else float(np.mean(scored.outside))
    row = {"eval_log10": float(scored.log10.mean()), "eval_outside": outside}
    if scored.warning:  # the samples left what the predictor was trained on: say so
        log.warning("epoch %d samples: %s", epoch, scored.warning)
    if reward_b is not None:
        row["eval_model_log10"] = float(reward_b.score(images, titles).log10.mean())
    save_grid(images, len(seeds), out_dir / "samples" / f"epoch_{epoch:03d}.png")
    return row


def _meta(base, model_dir, eval_model, config: BotConfig) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base": str(base),
        "predictor": str(Path(model_dir).resolve()),
        "predictor_digest": predictor_digest(model_dir),
        "eval_model": str(Path(eval_model).resolve()) if eval_model else None,
        "method": config.method,
        "config": asdict(config),
        "guards": {
            "ood": f"weight {config.reward.ood_weight} on sum max(0, |z| - {config.reward.ood_threshold})^2 of the visual descriptors",
            "kl": f"weight {config.kl}, reference = base UNet (LoRA disabled)",
            "clip_similarity": config.reward.clip_weight,
            "held_fixed": HELD_FIXED if config.method == "draft" else None,
        },
    }


def _save(
    out_dir: Path, policy: Policy, optimizer, tracker, meta: dict, history: list[dict]
) -> Path:
    """Epoch len(history), all or nothing (module docstring): the checkpoint is staged in a
    hidden folder and published by one rename, then the folder's own files follow it."""
    staging = out_dir / f".{CHECKPOINT.format(len(history))}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a kill before its rename
    staging.mkdir()
    policy.save_lora(staging)
    save_optimizer(optimizer, policy.lora_parameters(), staging / OPTIM_FILE)
    state = {"history": history, "tracker": tracker.state()}
    (staging / STATE_FILE).write_text(json.dumps(json_safe(state)), encoding="utf-8")
    record = {
        **meta,
        "epochs_done": len(history),
        "reward_history": [r["reward_mean"] for r in history],
    }
    (staging / BOT_FILE).write_text(json.dumps(json_safe(record), indent=2) + "\n", "utf-8")
    checkpoint = publish_dir(staging, out_dir / CHECKPOINT.format(len(history)))
    for old in checkpoints(out_dir)[:-1]:
        shutil.rmtree(old)
    for name in (STATE_FILE, OPTIM_FILE):  # resume state of a folder saved before checkpoints
        (out_dir / name).unlink(missing_ok=True)
    _publish(out_dir, checkpoint, history)
    return checkpoint


def _publish(out_dir: Path, checkpoint: Path, history: list[dict]) -> None:
    """The folder's own files (what `bot generate`, `serve --bot` and diffusers read), copied
    from `checkpoint`, each atomically; the log and plot from its history."""
    for name in (LORA_FILE, BOT_FILE):
        atomic_write(out_dir / name, lambda tmp, src=checkpoint / name: shutil.copyfile(src, tmp))
    atomic_write(out_dir / LOG_FILE, "".join(json.dumps(json_safe(r)) + "\n" for r in history))
    plot_history(history, out_dir / "reward.png")


def plot_history(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [r["reward_mean"] for r in history], label="train reward")
    a.plot(epochs, [r["eval_log10"] for r in history], label="eval log10 views (fixed seeds)")
    if history and "eval_model_log10" in history[0]:
        a.plot(epochs, [r["eval_model_log10"] for r in history], label="eval model B")
    a.set_xlabel("epoch")
    a.legend(fontsize=7)
    b.plot(epochs, [r["loss"] for r in history], label="loss")
    b.plot(epochs, [r["kl"] for r in history], label="KL")
    b.plot(epochs, [r["ood_mean"] for r in history], label="OOD penalty")
    b.set_xlabel("epoch")
    b.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
    return path


def save_optimizer(optimizer, params: list, path: Path) -> None:
    """AdamW state as safetensors ({i}.{exp_avg|exp_avg_sq|step}), no pickle."""
    from safetensors.torch import save_file

    tensors = {
        f"{i}.{k}": torch.as_tensor(v).detach().clone().contiguous()
        for i, p in enumerate(params)
        for k, v in optimizer.state.get(p, {}).items()
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_optimizer(optimizer, params: list, path: Path) -> None:
    """The AdamW state `save_optimizer` wrote, checked first: only slots of these parameters,
    each of its parameter's shape (a 0-d step), all finite; else a BotError naming the file."""
    tensors = read_tensors(path, "optimizer state")
    expected = {}
    for key in tensors:
        index, _, slot = key.partition(".")
        if index.isdigit() and int(index) < len(params) and slot in _ADAM_SLOTS:
            expected[key] = () if slot == "step" else tuple(params[int(index)].shape)
    if problem := tensor_mismatch(tensors, expected):
        raise BotError(f"{path} does not fit this adapter ({problem})")
    for i, p in enumerate(params):
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        if state:
            optimizer.state[p] = state
