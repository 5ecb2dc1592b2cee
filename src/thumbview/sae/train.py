"""Training and checkpointing of sparse autoencoders (the training side of ``sae.model``).

Why resumable: SAE training over CLIP token activations runs for hours on CPU, so a run
checkpoints every N steps (weights, Adam moments, step and firing counters) and ``fit``
continues an interrupted run from ``out_dir`` at the same step with the same data order,
ending with the same weights as an uninterrupted run.

The saved SAE folder (``save_sae``/``load_sae``, SAELens layout) is ``thumbview.sae.folder``.

Checkpoints (``out_dir/checkpoint/NNNNNN/``) are ``state.safetensors`` (weights, Adam state
tensors by name, firing counters) plus ``trainer.json`` (configs, counters, Adam
hyper-parameters). Each is written into a hidden staging folder and published under the next
number by one rename (``fileio.publish_dir``); only then are the older ones removed. So a kill
at any point leaves the last complete checkpoint, which is the one a resume reads (the
newest number). Folders written before numbering (the files directly in ``checkpoint/``, or
in the ``checkpoint.old`` a kill during the old swap left) are still read when no numbered
checkpoint exists, and removed once one is published.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from thumbview.fileio import atomic_write, fsync_dir, publish_dir, published, write_json
from thumbview.layout import SAE_CHECKPOINT_DIR as CHECKPOINT_DIR
from thumbview.layout import SAE_METRICS as METRICS_JSON
from thumbview.layout import SAE_SUBDIR
from thumbview.progress import SILENT, Progress
from thumbview.sae.config import (
    SaeError,
    TrainConfig,
    sae_config_from_dict,
)
from thumbview.sae.folder import (
    _PARAM_KEYS,
    SaeFileError,
    _read_json,
    _read_safetensors,
    save_sae,
)
from thumbview.sae.model import SaeInputError, SparseAutoencoder
from thumbview.sae.shards import ShardedActivations

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
TRAINER_FILE = "trainer.json"
_NUMBERED = re.compile(r"(\d{6,})")  # a published checkpoint in checkpoint/ (`save_checkpoint`)
_WARMUP_MAX_FRACTION = 0.1  # warmup never exceeds this share of a known run length
_EVAL_MAX_ROWS = 65_536  # rows of the training data re-scored for metrics.json
_EVAL_LATENT_BUDGET = 2**24  # dense latents held at once by `evaluate` (64 MB of float32)
# Changing these changes the data order or the LR schedule, so a resumed run would diverge.
_RESUME_KEYS = ("batch_size", "lr", "warmup_steps", "epochs", "seed", "holdout_fraction")
_SCALE_SAMPLE = 65_536  # rows used to measure the mean squared norm of the activations


@dataclass(frozen=True)
class EvalMetrics:
    """Reconstruction quality and sparsity over a whole activation set."""

    fvu: float
    explained_variance: float
    l0: float
    dead_fraction: float  # latents that never fired on this set
    n: int
    never_fired: int = 0  # how many latents that is (what the density plot's title counts)
    d_sae: int = 0


# -- data --------------------------------------------------------------------------------
Matrix = np.ndarray | torch.Tensor | ShardedActivations  # (N, d_in); shards stream from disk


def _as_matrix(activations: Matrix, d_in: int) -> Matrix:
    """Validate an (N, d_in) array without copying it (it may be a read-only memory map)."""
    if isinstance(activations, np.ndarray) and not np.issubdtype(activations.dtype, np.number):
        raise SaeInputError(f"activations must be numeric, got dtype {activations.dtype}")
    if activations.ndim != 2 or activations.shape[1] != d_in:
        raise SaeInputError(
            f"expected activations of shape (n, {d_in}), got {tuple(activations.shape)}"
        )
    if activations.shape[0] < 2:
        raise SaeInputError(f"need at least 2 activation rows, got {activations.shape[0]}")
    for start in range(0, len(activations), 65_536):
        if not bool(torch.isfinite(_take(activations, slice(start, start + 65_536))).all()):
            raise SaeInputError("activations contain NaN or infinite values")
    return activations


def _take(data: Matrix, rows: slice | np.ndarray) -> torch.Tensor:
    """Rows of `data` as a float32 tensor; numpy rows are copied so read-only input is fine."""
    if isinstance(data, torch.Tensor):
        index = torch.from_numpy(rows) if isinstance(rows, np.ndarray) else rows
        return data[index].float()
    return torch.from_numpy(np.array(data[rows], dtype=np.float32))


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch depends only on (seed, epoch), so a resume can rebuild it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (a short tail batch would give a noisy FVU); one batch if n < size."""
    return max(1, n // batch_size)


def _array_batches(
    x: Matrix, rows: np.ndarray, cfg: TrainConfig, start: int
) -> Iterator[torch.Tensor]:
    """Shuffled batches of x[rows] (the training rows), from step `start` on."""
    per_epoch = _steps_per_epoch(len(rows), cfg.batch_size)
    bs = min(cfg.batch_size, len(rows))
    for step in range(start, per_epoch * cfg.epochs):
        epoch, i = divmod(step, per_epoch)
        order = _epoch_order(len(rows), cfg.seed, epoch)[i * bs : (i + 1) * bs]
        yield _take(x, np.sort(rows[order]))  # (B, D); sorted rows read a memmap in order


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows), both sorted; the split depends only on (n, seed).

    Explained variance on rows the SAE never trained on is the honest number: on training
    rows an SAE with many latents per input looks better than it generalises. No rows are
    held out when that would leave fewer than 2 on either side.
    """
    n_out = int(n * fraction)
    if n_out < 2 or n - n_out < 2:
        return np.arange(n), np.zeros(0, np.int64)
    perm = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def input_scale(x: Matrix, rows: np.ndarray, seed: int) -> float:
    """sqrt(d_in / mean ||x||^2) over up to `_SCALE_SAMPLE` rows (SAELens' normalisation).

    Scaled so, the activations have mean squared norm d_in whatever the model or layer, so
    an L1 coefficient means the same everywhere.
    """
    take = (
        rows
        if len(rows) <= _SCALE_SAMPLE
        else np.random.default_rng(seed).choice(rows, _SCALE_SAMPLE, replace=False)
    )
    sample = _take(x, np.sort(take)).double()  # (n, D)
    mean_sq = float(sample.pow(2).sum(1).mean())
    return float(np.sqrt(sample.shape[1] / mean_sq)) if mean_sq > 0 else 1.0


def _iter_batches(batches: Iterable, start: int) -> Iterator[torch.Tensor]:
    """Caller-made batches: a resume skips the ones already trained on (same order assumed)."""
    for step, batch in enumerate(batches):
        if step < start:
            continue
        if isinstance(batch, torch.Tensor):
            yield batch
            continue
        try:  # np.array copies, so read-only input (memory maps) is fine
            yield torch.from_numpy(np.array(batch, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise SaeInputError(f"batch {step} is not a numeric array ({e})") from e


# -- trainer -----------------------------------------------------------------------------
class SaeTrainer:
    """Adam + linear warmup on one SAE, with dead-latent tracking and resumable checkpoints.

    Counters: ``steps_done``, ``samples_seen``; ``since_fired`` (d_sae,) samples since each
    latent last fired (drives AuxK/ghost grads and the dead fraction); firing counts over
    consecutive windows of ``dead_window`` samples (drives the density histogram).
    """

    def __init__(self, sae: SparseAutoencoder, cfg: TrainConfig | None = None) -> None:
        self.sae = sae
        self.cfg = cfg or TrainConfig()
        # fused: one kernel per parameter on CPU too (same update to float rounding, ~2x faster)
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=self.cfg.lr, fused=True)
        device, n_lat = sae.W_enc.device, sae.cfg.d_sae
        self.steps_done = 0
        self.samples_seen = 0
        self.total_steps: int | None = None
        self.since_fired = torch.zeros(n_lat, dtype=torch.int64, device=device)
        self.window_counts = torch.zeros(n_lat, dtype=torch.int64, device=device)
        self.window_samples = 0
        self.last_window_counts = torch.zeros(n_lat, dtype=torch.int64, device=device)
        self.last_window_samples = 0
        self.last_metrics: dict[str, float] = {}
        self.activation_scale = 1.0  # inputs are multiplied by this while training
        self.heldout_metrics: EvalMetrics | None = None
        # The evaluation `sae train` reports (held-out, else a training sample) and its
        # (d_sae,) firing frequencies: the density plot and the printed line share them.
        self.reported_metrics: EvalMetrics | None = None
        self.eval_frequency: np.ndarray | None = None

    def lr_at(self, step: int) -> float:
        """Linear warmup, then constant; warmup shrinks for runs too short to afford it."""
        warmup = self.cfg.warmup_steps
        if self.total_steps is not None:
            warmup = min(warmup, int(_WARMUP_MAX_FRACTION * self.total_steps))
        return self.cfg.lr * min(1.0, (step + 1) / max(warmup, 1))

    def step(self, batch: torch.Tensor | np.ndarray) -> dict[str, float]:
        """One optimiser step on a (B, d_in) batch; returns its metrics as floats."""
        if isinstance(batch, np.ndarray):
            batch = _take(batch, slice(None))
        if self.activation_scale != 1.0:
            batch = batch * self.activation_scale
        lr = self.lr_at(self.steps_done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self.sae(batch, dead_mask=self.since_fired >= self.sae.cfg.dead_after)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.sae.cfg.normalize_decoder:
            self.sae.remove_parallel_decoder_grad_()
        self.optimizer.step()
        if self.sae.cfg.normalize_decoder:
            self.sae.normalize_decoder_()
        fired = out.fired if out.fired is not None else (out.latents.detach() > 0).sum(0)
        self._track_firing(fired, len(batch))
        names = ("loss", "fvu", "l0", "aux_loss", "l1_loss")
        metrics = {name: float(getattr(out, name).detach()) for name in names}
        self.last_metrics = {
            "step": self.steps_done,
            **metrics,
            "dead_fraction": self.dead_fraction(),
            "lr": lr,
        }
        return self.last_metrics

    @torch.no_grad()
    def _track_firing(self, fires: torch.Tensor, n_rows: int) -> None:
        """`fires` (S,): how many of the step's `n_rows` rows each latent fired on."""
        self.since_fired += n_rows
        self.since_fired[fires > 0] = 0
        self.window_counts += fires
        self.window_samples += n_rows
        self.steps_done += 1
        self.samples_seen += n_rows
        if self.window_samples >= self.cfg.dead_window:
            self.last_window_counts = self.window_counts.clone()
            self.last_window_samples = self.window_samples
            self.window_counts.zero_()
            self.window_samples = 0

    def dead_fraction(self) -> float:
        """Share of latents silent for the last ``dead_window`` samples (or all of training)."""
        threshold = min(self.cfg.dead_window, self.samples_seen)
        return float((self.since_fired >= max(threshold, 1)).float().mean())

    def firing_frequency(self) -> np.ndarray:
        """(d_sae,) fraction of samples each latent fired on, over the last full window."""
        counts, n = self.last_window_counts, self.last_window_samples
        if n == 0:
            counts, n = self.window_counts, self.window_samples
        return counts.cpu().numpy() / max(n, 1)

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, activations: np.ndarray | torch.Tensor) -> EvalMetrics:
        """FVU against the mean of the whole set (not per batch), L0, never-firing share."""
        x = _as_matrix(activations, self.sae.cfg.d_in)
        size = min(8192, max(64, _EVAL_LATENT_BUDGET // self.sae.cfg.d_sae))
        s1, s2, sse, nonzero = 0.0, 0.0, 0.0, 0
        counts = torch.zeros(self.sae.cfg.d_sae, dtype=torch.float64, device=self.sae.W_enc.device)
        for start in range(0, len(x), size):
            chunk = _take(x, slice(start, start + size)).to(self.sae.W_enc.device)  # (B, D)
            out = self.sae(chunk)
            s1 = s1 + chunk.double().sum(0)  # (D,)
            s2 += float(chunk.double().pow(2).sum())
            sse += float((out.recon.double() - chunk.double()).pow(2).sum())
            active = out.latents > 0  # (B, S)
            nonzero += int(active.sum())
            counts += active.sum(0).double()  # (S,)
        total = s2 - float(s1.pow(2).sum()) / len(x)  # sum ||x - mean||^2, one pass, in float64
        fvu = sse / total if total > 0 else float("nan")
        self.eval_frequency = counts.cpu().numpy() / len(x)  # (S,)
        never = int((counts == 0).sum())
        return EvalMetrics(
            fvu=fvu,
            explained_variance=1 - fvu,
            l0=nonzero / len(x),
            dead_fraction=never / self.sae.cfg.d_sae,
            n=len(x),
            never_fired=never,
            d_sae=self.sae.cfg.d_sae,
        )

    # -- checkpoints -----------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"sae.{k}": getattr(self.sae, k).detach() for k in _PARAM_KEYS}
        for name, param in self.sae.named_parameters():
            for key, value in self.optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{name}.{key}"] = value
        tensors["track.since_fired"] = self.since_fired
        tensors["track.window_counts"] = self.window_counts
        tensors["track.last_window_counts"] = self.last_window_counts
        return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}

    def _state_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "sae_config": self.sae.cfg.to_dict(),
            "train_config": asdict(self.cfg),
            "steps_done": self.steps_done,
            "samples_seen": self.samples_seen,
            "window_samples": self.window_samples,
            "last_window_samples": self.last_window_samples,
            "total_steps": self.total_steps,
            "activation_scale": self.activation_scale,
            "param_groups": self.optimizer.state_dict()["param_groups"],
        }

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write the full training state as `directory`/NNNNNN, the next number, staged and
        published by one rename; the older checkpoints (and one written before numbering)
        are removed only after it, so a kill at any point leaves a complete one to resume."""
        directory = Path(directory)
        if not directory.is_dir():
            directory.mkdir(parents=True)
            fsync_dir(directory.parent)
        older = checkpoints(directory)
        number = f"{int(older[-1].name) + 1 if older else 1:06d}"
        for left in directory.glob(".*.tmp"):  # staging left by a kill before its rename
            shutil.rmtree(left)
        staging = directory / f".{number}.tmp"
        staging.mkdir()
        save_file(self._state_tensors(), staging / STATE_FILE)
        (staging / TRAINER_FILE).write_text(json.dumps(self._state_json(), indent=2))
        published = publish_dir(staging, directory / number)
        for old in older:
            shutil.rmtree(old)
        _remove_unnumbered(directory)
        return published

    def load_checkpoint(self, directory: str | Path) -> SaeTrainer:
        """Restore the newest checkpoint in `directory` (`latest_checkpoint`), written by
        `save_checkpoint` for the same SAE and data order."""
        found = latest_checkpoint(directory)
        if found is None:
            raise SaeFileError(f"{directory}: no checkpoint here ({TRAINER_FILE} missing)")
        directory = found
        meta = _read_json(directory / TRAINER_FILE)
        self._check_compatible(meta, directory)
        tensors = _read_safetensors(directory / STATE_FILE)
        try:
            self._restore(meta, tensors)
        except (KeyError, RuntimeError, ValueError) as e:
            raise SaeFileError(f"{directory}: checkpoint does not match this SAE ({e})") from e
        log.info("resumed from %s at step %d", directory, self.steps_done)
        return self

    def _check_compatible(self, meta: dict[str, Any], directory: Path) -> None:
        try:
            saved_cfg = sae_config_from_dict(meta.get("sae_config") or {})
        except (SaeError, TypeError) as e:
            raise SaeFileError(f"{directory}: unreadable SAE config in checkpoint ({e})") from e
        if saved_cfg != self.sae.cfg:
            raise SaeFileError(
                f"{directory}: checkpoint was made for SAE config {meta.get('sae_config')}, "
                f"not {self.sae.cfg.to_dict()}; use a fresh output folder"
            )
        saved, now = meta.get("train_config", {}), asdict(self.cfg)
        changed = [k for k in _RESUME_KEYS if saved.get(k) != now[k]]
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)} -> {now[k]}" for k in changed)
            raise SaeFileError(
                f"{directory}: cannot resume with changed training settings ({diffs})"
            )

    def _restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        device = self.sae.W_enc.device
        self.sae.load_state_dict({k: tensors[f"sae.{k}"] for k in _PARAM_KEYS})
        state: dict[int, dict[str, Any]] = {}
        for i, (name, _) in enumerate(self.sae.named_parameters()):
            prefix = f"optim.{name}."
            found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if found:
                state[i] = found
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self._match_state_layout()
        for name in ("since_fired", "window_counts", "last_window_counts"):
            setattr(self, name, tensors[f"track.{name}"].to(device))
        for name in ("steps_done", "samples_seen", "window_samples", "last_window_samples"):
            setattr(self, name, int(meta[name]))
        self.activation_scale = float(meta.get("activation_scale", 1.0))

    @torch.no_grad()
    def _match_state_layout(self) -> None:
        """Give Adam's moments their parameter's memory layout (W_enc is a transposed view).

        Checkpoints store them contiguous; the fused Adam kernel walks a moment and its
        parameter in memory order, so a moment in another layout would be misread.
        """
        for param in self.sae.parameters():
            state = self.optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        activations: np.ndarray | torch.Tensor | Iterable,
        out_dir: str | Path,
        extra_cfg: dict[str, Any] | None = None,
        progress: Progress = SILENT,
    ) -> SparseAutoencoder:
        """Train on an (N, d_in) array or `ShardedActivations` (shuffled per epoch, read batch
        by batch) or on an iterable of batches (one pass).

        Resumes from the newest checkpoint in ``out_dir/checkpoint`` when there is one.
        Writes ``out_dir/sae`` (see `save_sae`), ``metrics.json`` and ``feature_density.png``.
        An iterable must yield the same batches in the same order on a resume; the ones
        already trained on are skipped.
        """
        out_dir = Path(out_dir)
        is_array = isinstance(activations, np.ndarray | torch.Tensor | ShardedActivations)
        data = _as_matrix(activations, self.sae.cfg.d_in) if is_array else None
        train_rows = held_rows = None
        if data is not None:
            train_rows, held_rows = holdout_split(
                len(data), self.cfg.holdout_fraction, self.cfg.seed
            )
            self.total_steps = (
                _steps_per_epoch(len(train_rows), self.cfg.batch_size) * self.cfg.epochs
            )
            if getattr(self.sae.cfg, "normalize_activations", False):
                self.activation_scale = input_scale(data, train_rows, self.cfg.seed)
        if latest_checkpoint(out_dir / CHECKPOINT_DIR) is not None:
            self.load_checkpoint(out_dir / CHECKPOINT_DIR)
        start = self.steps_done
        batches = (
            _array_batches(data, train_rows, self.cfg, start)
            if data is not None
            else _iter_batches(activations, start)
        )
        total = None if self.total_steps is None else self.total_steps - start
        with progress.task("training SAE", total) as advance:
            for batch in batches:
                self._train_one(batch, out_dir)
                advance(1)
        self.save_checkpoint(out_dir / CHECKPOINT_DIR)
        if self.activation_scale != 1.0:  # the saved SAE takes raw activations
            self.sae.fold_input_scale_(self.activation_scale)
            self.activation_scale = 1.0
        self._write_outputs(out_dir, data, train_rows, held_rows, extra_cfg)
        return self.sae

    def _train_one(self, batch: torch.Tensor, out_dir: Path) -> None:
        batch = batch.to(self.sae.W_enc.device)
        if self.steps_done == 0:
            self.sae.init_b_dec_(batch * self.activation_scale)
        metrics = self.step(batch)
        if self.steps_done % self.cfg.log_every == 0:
            log.info("step %d: %s", self.steps_done, _fmt(metrics))
        if self.steps_done % self.cfg.checkpoint_every == 0:
            self.save_checkpoint(out_dir / CHECKPOINT_DIR)

    def _write_outputs(
        self,
        out_dir: Path,
        data: Matrix | None,
        train_rows: np.ndarray | None,
        held_rows: np.ndarray | None,
        extra_cfg: dict | None,
    ) -> None:
        """The SAE, metrics.json (held-out and training explained variance) and the histogram."""
        save_sae(self.sae, out_dir / SAE_SUBDIR, extra_cfg)
        metrics: dict[str, Any] = {
            "steps": self.steps_done,
            "samples_seen": self.samples_seen,
            "last_step": self.last_metrics,
            "dead_fraction": self.dead_fraction(),
        }
        where = "in the last training window"
        frequency = self.firing_frequency()
        if data is not None:
            rng = np.random.default_rng(self.cfg.seed)
            rows = np.sort(rng.permutation(train_rows)[:_EVAL_MAX_ROWS])
            self.reported_metrics = self.evaluate(_take(data, rows))
            metrics["train_eval"] = asdict(self.reported_metrics)
            where = "on the training activations"
            if len(held_rows):
                self.heldout_metrics = self.evaluate(_take(data, held_rows[:_EVAL_MAX_ROWS]))
                metrics["heldout_eval"] = asdict(self.heldout_metrics)
                self.reported_metrics, where = self.heldout_metrics, "on the held-out activations"
            else:
                log.warning(
                    "too few activations to hold any out: explained variance is on training rows"
                )
            frequency = self.eval_frequency  # the set the reported line counts
        write_json(out_dir / METRICS_JSON, metrics)
        save_density_histogram(frequency, out_dir / "feature_density.png", where)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


# -- files -------------------------------------------------------------------------------
def checkpoints(directory: str | Path) -> list[Path]:
    """The published numbered checkpoints in `directory`, oldest first (hidden staging
    folders are never listed)."""
    return published(directory, _NUMBERED)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint a resume reads: the newest numbered one in `directory`; else one written
    before numbering, `directory` itself or the ``.old`` twin a kill during its swap left.

    A numbered checkpoint is whole once it exists (published by one rename), so the newest
    is read even if damaged: a loud error beats silently resuming from an older state.
    """
    directory = Path(directory)
    numbered = checkpoints(directory)
    if numbered:
        return numbered[-1]
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / TRAINER_FILE).is_file():
            return candidate
    return None


def _remove_unnumbered(directory: Path) -> None:
    """A checkpoint written before numbering, and what its swap left, once a numbered one
    is published (until then it is the state a resume reads)."""
    for name in (TRAINER_FILE, STATE_FILE):
        (directory / name).unlink(missing_ok=True)
    for twin in (".old", ".tmp"):
        shutil.rmtree(directory.with_name(directory.name + twin), ignore_errors=True)


def save_density_histogram(frequency: np.ndarray, path: str | Path, where: str = "") -> Path:
    """PNG of log10 firing frequency per latent; never-firing latents are counted in the title,
    with `where` they were counted (the same count `sae train` prints)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe off the main thread

    path = Path(path)
    alive = frequency[frequency > 0]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if len(alive):
        ax.hist(np.log10(alive), bins=50, color="tab:blue")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(
        f"{len(frequency) - len(alive)} of {len(frequency)} latents never fired {where}".strip()
    )
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
