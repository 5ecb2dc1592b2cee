"""The fine-tuning loop: split like `train`, fit with AdamW + warmup/cosine, checkpoint every
epoch, stop early on the validation channels, calibrate intervals, save, evaluate.

Splits: a channel-disjoint hold-out (the same `group_train_test_split` call as `thumbview
train`, so both commands score the same videos), then a channel-disjoint validation share
of the rest for early stopping and for the split-conformal residuals.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thumbview.data.dataset import ThumbnailDataset
from thumbview.embed.cache import embed
from thumbview.embed.title import TitleEncoder
from thumbview.fileio import while_running
from thumbview.finetune.config import FinetuneConfig, FinetuneError
from thumbview.finetune.data import ThumbnailRows, loader
from thumbview.finetune.encoders import TitleTokenEncoder
from thumbview.finetune.model import FinetunedPredictor, network_state
from thumbview.finetune.network import build_network
from thumbview.layout import RUN_UNFINISHED
from thumbview.predict.card import HeldOutSkill
from thumbview.predict.crossval import EvalResult, Metrics, compute_metrics, group_train_test_split
from thumbview.predict.target import make_target
from thumbview.progress import SILENT, Progress
from thumbview.schema import MAX_JSON_BYTES, parse_json, read_regular_file

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


class FinetuneInterrupted(Exception):
    """Ctrl-C during training: finished epochs are saved; the message says how to resume."""


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch: MSE in target units (log10 views) on train and validation rows."""

    epoch: int
    train_mse: float
    val_mse: float
    val_spearman: float
    improved: bool
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """What `finetune` produced (metrics on the channel-disjoint hold-out, if any)."""

    model_dir: Path
    n_train: int
    n_val: int
    n_holdout: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    validation: Metrics
    holdout: EvalResult | None
    plots: tuple[Path, ...]
    skill: HeldOutSkill | None = None  # the held-out verdict also written to card.json


@dataclass
class _Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


# ----- preparation -------------------------------------------------------------------------
def split_rows(dataset: ThumbnailDataset, usable: np.ndarray, config: FinetuneConfig) -> _Split:
    """Hold-out exactly as `thumbview train` does, then validation channels from the rest."""
    groups = dataset.channels
    sub = None if groups is None else groups[usable]
    if config.holdout > 0:
        tr, te = group_train_test_split(sub, config.holdout, config.seed, n=len(usable))
        rest, test = usable[tr], usable[te]
    else:
        rest, test = usable, usable[:0]
    sub = None if groups is None else groups[rest]
    tr, va = group_train_test_split(sub, config.val_frac, config.seed + 1, n=len(rest))
    return _Split(rest[tr], rest[va], test)


def title_block(
    dataset, config: FinetuneConfig, cache_dir, progress: Progress = SILENT
) -> np.ndarray | None:
    """(N, 384) frozen MiniLM embeddings (cached), (N, 64) tokens, or None for `--title none`."""
    if config.title == "none":
        return None
    if config.title == "finetune":
        return TitleTokenEncoder().encode(dataset.titles)
    return embed(dataset, TitleEncoder(), cache_dir, progress=progress)[0]


def device_and_precision(config: FinetuneConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device, and the autocast dtype (None: full fp32)."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise FinetuneError("--device cuda: no CUDA GPU is visible to torch")
    device = torch.device("cuda" if config.device != "cpu" and cuda else "cpu")
    precision = config.precision
    if precision == "auto":
        precision = "fp32" if device.type == "cpu" else "bf16"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            precision = "fp16"
    return device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def make_optimizer(net, config: FinetuneConfig, steps: int):
    """AdamW (no decay on biases and norms; the title tower at `title_lr`), warmup then cosine."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in net.named_parameters():
        lr = config.title_lr if name.startswith("title.") else config.lr
        decay = config.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    )
    warm = max(1, int(config.warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, steps - warm))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ----- checkpoints -------------------------------------------------------------------------
def save_checkpoint(folder: Path, net, opt, sched, best: dict, state: dict[str, Any]) -> None:
    """Network, optimiser, best weights and RNG as safetensors; counters as JSON (written last)."""
    from safetensors.torch import save_file

    from thumbview.fileio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    tensors = network_state(net)
    tensors.update({f"best.{k}": v.contiguous() for k, v in best.items()})
    opt_state = opt.state_dict()
    for i, slots in opt_state["state"].items():
        for key, value in slots.items():
            tensors[f"opt.{i}.{key}"] = value.detach().cpu().reshape(-1).contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"epoch": str(state["epoch"])}
    atomic_write(folder / "state.safetensors", lambda p: save_file(tensors, p, metadata=meta))
    payload = {**state, "param_groups": opt_state["param_groups"], "sched": sched.state_dict()}
    atomic_write(folder / "state.json", json.dumps(payload, indent=1))


def load_checkpoint(folder: Path, net, opt, sched, config: FinetuneConfig) -> tuple[dict, dict]:
    """Restore what `save_checkpoint` wrote; returns (state counters, best weights).

    A checkpoint folder can be damaged or edited, so all of it is checked against what this
    run would save (`_read_checkpoint`) before anything is restored: a bad one is one
    FinetuneError naming the file, and the folder is left as it was."""
    state, tensors = _read_checkpoint(folder, net, opt, sched, config)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    slots: dict[int, dict] = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, slot = key.split(".", 2)
            shape = () if slot == "step" else params[int(idx)].shape
            slots.setdefault(int(idx), {})[slot] = value.reshape(shape)
    opt.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(tensors["rng.torch"])
    return state, best


def _read_checkpoint(folder: Path, net, opt, sched, config: FinetuneConfig) -> tuple[dict, dict]:
    """(state.json, state.safetensors) of a checkpoint, checked whole; FinetuneError if not."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    json_path, tensor_path = folder / "state.json", folder / "state.safetensors"
    if not json_path.is_file() or not tensor_path.is_file():
        raise FinetuneError(f"--resume: no checkpoint in {folder}; run without --resume")
    try:
        state = parse_json(read_regular_file(json_path, MAX_JSON_BYTES), allow_nan=True)
    except (OSError, ValueError) as e:  # not a file, over the cap, too deep, not JSON
        raise _damaged(json_path, f"not valid JSON: {e}") from e
    try:
        with safe_open(tensor_path, "pt") as f:
            epoch = (f.metadata() or {}).get("epoch")
        tensors = load_file(tensor_path)
    except (OSError, ValueError, SafetensorError) as e:
        raise _damaged(tensor_path, str(e)) from e
    if problem := _state_problem(state, opt, sched):
        raise _damaged(json_path, problem)
    if epoch != str(state["epoch"]):
        raise FinetuneError(f"--resume: {folder} is inconsistent (interrupted while saving)")
    try:
        changed = config.same_run(FinetuneConfig.from_dict(state["config"]))
    except (TypeError, ValueError) as e:
        raise _damaged(json_path, f"its settings are not valid ({e})") from e
    if changed:
        raise FinetuneError(f"--resume: settings differ from the saved run ({', '.join(changed)})")
    if problem := _tensor_problem(tensors, net, opt):
        raise _damaged(tensor_path, problem)
    return state, tensors


def _damaged(path: Path, problem: str) -> FinetuneError:
    first = problem.strip().splitlines()[0][:200] if problem.strip() else "unreadable"
    return FinetuneError(f"--resume: {path} is damaged ({first}); run without --resume to start over")  # fmt: skip


def _state_problem(state: Any, opt, sched) -> str | None:
    """What is wrong with a read state.json (None when it is what `save_checkpoint` writes):
    counters, history, and the optimiser and scheduler settings in this run's exact shape."""
    counters = ("epoch", "best_epoch", "bad")
    if not isinstance(state, dict) or not all(_is_count(state.get(k)) for k in counters):
        return "epoch, best_epoch and bad must be counts"
    if not isinstance(state.get("stopped"), bool) or not isinstance(state.get("config"), dict):
        return "stopped must be true/false and config an object"
    history = state.get("history")
    if not isinstance(history, list) or len(history) != state["epoch"]:
        return "history must hold one row per finished epoch"
    if not all(isinstance(r, list) and len(r) == 3 and all(map(_is_number, r)) for r in history):
        return "history rows must be [epoch, train MSE, validation MSE]"
    if not (state.get("best") is None or _is_number(state["best"])):
        return "best must be a number or null"
    fresh = opt.state_dict()["param_groups"]
    if not _same_shape(state.get("param_groups"), fresh) or [
        g["params"] for g in state["param_groups"]
    ] != [g["params"] for g in fresh]:
        return "its optimiser settings (param_groups) are not the ones this run saves"
    if not _same_shape(state.get("sched"), sched.state_dict()):
        return "its learning-rate schedule (sched) is not the one this run saves"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:  # NaN allowed: a diverged epoch's loss is NaN
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_shape(saved: Any, fresh: Any) -> bool:
    """`saved` (read from JSON) has `fresh`'s shape: the same keys, lengths and JSON types,
    numbers finite. Settings a load_state_dict copies in as they are must hold no surprise
    (an extra scheduler key would become an attribute, shadowing a method)."""
    if isinstance(fresh, dict):
        return (
            isinstance(saved, dict)
            and saved.keys() == {str(k) for k in fresh}
            and all(_same_shape(saved[str(k)], v) for k, v in fresh.items())
        )
    if isinstance(fresh, list | tuple):
        return isinstance(saved, list) and len(saved) == len(fresh) and all(map(_same_shape, saved, fresh))  # fmt: skip
    if fresh is None or isinstance(fresh, bool | str):
        return type(saved) is type(fresh)
    return _is_number(saved) and math.isfinite(saved)


def _tensor_problem(tensors: dict, net, opt) -> str | None:
    """What is wrong with the saved tensors (None when they fit this run's network and
    optimiser): exactly its weights twice (net., best.), AdamW's slots, the RNG state."""
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    expected = {f"{part}.{k}": shape for k, shape in shapes.items() for part in ("net", "best")}
    for key, value in tensors.items():
        if key == "rng.torch":
            if value.dtype != torch.uint8 or value.shape != torch.get_rng_state().shape:
                return "rng.torch is not a torch RNG state"
        elif key.startswith("opt."):
            _, idx, slot = (key.split(".", 2) + ["", ""])[:3]
            if not idx.isdigit() or int(idx) >= len(params) or slot not in _ADAM_SLOTS:
                return f"{key} is not an optimiser slot of this network"
            if value.numel() != (1 if slot == "step" else params[int(idx)].numel()):
                return f"{key} has {value.numel()} values, not its parameter's"
        elif expected.pop(key, None) != tuple(value.shape):
            return f"{key} is not a weight of this network, or has another shape"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{key} holds NaN or infinite values"
    if "rng.torch" not in tensors or expected:
        return f"missing {', '.join(sorted(expected)[:3]) or 'rng.torch'}"
    return None


_ADAM_SLOTS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})


# ----- the loop ----------------------------------------------------------------------------
def _run_epoch(net, batches, opt, sched, config, device, dtype, scaler, advance) -> float:
    """One pass over the training rows; returns the mean standardised MSE."""
    net.train()
    total, count = 0.0, 0
    n_batches = len(batches)
    opt.zero_grad(set_to_none=True)
    for step, (pix, title, y) in enumerate(batches):
        pix, y = pix.to(device, non_blocking=True), y.to(device)
        title = title.to(device) if title.numel() else None
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.mse_loss(net(pix, title).float(), y)
        (scaler.scale(loss) if scaler else loss).div(config.accumulate).backward()
        if (step + 1) % config.accumulate == 0 or step + 1 == n_batches:
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            scaler.step(opt) if scaler else opt.step()
            if scaler:
                scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
        total, count = total + float(loss.detach()) * len(y), count + len(y)
        advance(len(y))
    return total / max(count, 1)


def predict_rows(net, rows: ThumbnailRows, config, device, dtype) -> np.ndarray:
    """Standardised predictions (N,) for rows in their stored order (no augmentation)."""
    net.eval()
    out = []
    with torch.no_grad():
        for pix, title, _ in loader(rows, config.batch_size, config.workers):
            title = title.to(device) if title.numel() else None
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                out.append(net(pix.to(device), title).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _is_better(score: float, best: float | None, metric: str) -> bool:
    if best is None or not np.isfinite(best):
        return True
    return score > best if metric == "spearman" else score < best


def _snapshot(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _record(state: dict, score: float, net, best: dict, config: FinetuneConfig):
    """Advance the epoch counter; keep the best weights; decide on early stopping."""
    improved = _is_better(score, state["best"], config.early_stop)
    state["epoch"] += 1
    if improved:
        state["best"], state["best_epoch"], state["bad"] = score, state["epoch"], 0
        return True, _snapshot(net)
    state["bad"] += 1
    state["stopped"] = state["bad"] >= max(config.patience, 1)
    return False, best


def train_loop(
    net, rows: ThumbnailRows, val: ThumbnailRows, y_val: np.ndarray, y_mean: float, y_std: float,
    config: FinetuneConfig, ckpt: Path, *, resume: bool, progress: Progress = SILENT,
    on_epoch: Callable[[EpochReport], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    started: Callable[[], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Epochs with checkpoints and early stopping; leaves the best weights in `net`.

    `started` is called once the run's state is set (a resume's checkpoint checked), before
    anything is written: the finetune run marks its folder unfinished there."""
    import time

    device, dtype = device_and_precision(config)
    net.to(device)
    steps = config.epochs * math.ceil(math.ceil(len(rows) / config.batch_size) / config.accumulate)
    opt, sched = make_optimizer(net, config, steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    state, best = _start_state(net, opt, sched, config, ckpt, resume)
    if started:
        started()
    try:
        while state["epoch"] < config.epochs and not state["stopped"]:
            if before_epoch:
                before_epoch(state["epoch"])
            start = time.perf_counter()
            train_mse = _train_epoch(net, rows, opt, sched, scaler, config, state["epoch"],
                                     device, dtype, progress) * y_std**2  # fmt: skip
            pred = predict_rows(net, val, config, device, dtype) * y_std + y_mean
            val_mse, rho = (
                float(np.mean((y_val - pred) ** 2)),
                compute_metrics(y_val, pred).spearman,
            )
            improved, best = _record(state, rho if config.early_stop == "spearman" else val_mse,
                                     net, best, config)  # fmt: skip
            state["history"].append([state["epoch"], train_mse, val_mse])
            save_checkpoint(ckpt, net, opt, sched, best, state)
            if on_epoch:
                seconds = time.perf_counter() - start
                on_epoch(EpochReport(state["epoch"], train_mse, val_mse, rho, improved, seconds))
    except KeyboardInterrupt:
        raise FinetuneInterrupted(
            f"interrupted during epoch {state['epoch'] + 1}; epochs 1-{state['epoch']} are saved "
            f"in {ckpt}: run the same command with --resume to continue"
        ) from None
    net.load_state_dict(best)
    return state


def _start_state(net, opt, sched, config: FinetuneConfig, ckpt: Path, resume: bool):
    """(state, best weights): a fresh run's, or those saved in `ckpt` when resuming."""
    if resume:
        state, best = load_checkpoint(ckpt, net, opt, sched, config)
        state["config"] = config.to_dict()
        log.info("resumed after epoch %d", state["epoch"])
        return state, best
    state = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "bad": 0, "stopped": False,
             "config": config.to_dict()}  # fmt: skip
    return state, _snapshot(net)


def _train_epoch(net, rows: ThumbnailRows, opt, sched, scaler, config: FinetuneConfig,
                 epoch: int, device, dtype, progress: Progress) -> float:  # fmt: skip
    """One pass over the shuffled training rows: mean squared error in standardised units."""
    rows.shuffle(epoch)
    with progress.task(f"epoch {epoch + 1}/{config.epochs}", len(rows)) as advance:
        batches = loader(rows, config.batch_size, config.workers)
        return _run_epoch(net, batches, opt, sched, config, device, dtype, scaler, advance)


# ----- the whole run -------------------------------------------------------------------------
def finetune(
    dataset: ThumbnailDataset,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
    on_epoch: Callable[[EpochReport], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Split, train (checkpointed, resumable), calibrate, save the model folder, evaluate."""
    from thumbview.finetune.report import finish

    out_dir = Path(out_dir)
    y, mask = make_target(dataset.views, config.target, dataset.channels)
    split = split_rows(dataset, np.flatnonzero(mask), config)
    if len(split.train) < 2 or len(split.val) < 3:
        raise FinetuneError(
            f"too few rows to fine-tune ({len(split.train)} train, {len(split.val)} validation)"
        )
    titles = title_block(dataset, config, cache_dir, progress)
    y_mean, y_std = float(y[split.train].mean()), float(y[split.train].std() or 1.0)
    net, arch = build_network(config)
    paths = [str(p) for p in dataset.paths]
    scale = (y_mean, y_std, arch["image_size"], arch.get("frame", "squash"))
    rows = _rows(paths, y, titles, split.train, config, scale, augment=config.augment)
    val = _rows(paths, y, titles, split.val, config, scale, augment=False)
    marker = out_dir / RUN_UNFINISHED  # stays on a kill; --resume goes on and removes it
    with while_running(marker, "thumbview finetune", lazy=True) as started:
        state = train_loop(net, rows, val, y[split.val], y_mean, y_std, config, out_dir / CHECKPOINT_DIR,
                           resume=resume, progress=progress, on_epoch=on_epoch,
                           before_epoch=before_epoch, started=started)  # fmt: skip
        device, dtype = device_and_precision(config)
        model = FinetunedPredictor(config).set_fitted(
            net, arch, y_mean, y_std, float(np.median(y[split.train])), len(split.train)
        )
        val_pred = predict_rows(net, val, config, device, dtype) * y_std + y_mean
        model.calibrate(y[split.val], val_pred)
        model.val_metrics_ = compute_metrics(y[split.val], val_pred).to_dict()
        model.history_ = state["history"]
        test = _rows(paths, y, titles, split.test, config, scale, augment=False)
        test_pred = (
            predict_rows(net, test, config, device, dtype) * y_std + y_mean if len(test) else None
        )
        holdout, plots, skill = finish(model, dataset, split, y, titles, test_pred, out_dir,
                                       val_pred)  # fmt: skip
        return FinetuneResult(out_dir, len(split.train), len(split.val), len(split.test),
                              state["epoch"], state["best_epoch"], state["stopped"],
                              Metrics(**model.val_metrics_), holdout, plots, skill)  # fmt: skip


def _rows(paths, y, titles, idx, config, scale, *, augment: bool) -> ThumbnailRows:
    y_mean, y_std, size, frame = scale
    return ThumbnailRows(
        [paths[i] for i in idx],
        (y[idx] - y_mean) / y_std,
        None if titles is None else titles[idx],
        size,
        augment=augment,
        hflip=config.hflip,
        jitter=config.color_jitter,
        seed=config.seed,
        frame=frame,
    )
