"""A bot folder and what describes a run: `BotConfig`, prompts, `bot.json`, the sample grid.

Generation (`generate`, the web panel) reads a bot folder without the training loop, and
training writes one: both import this module, so loading a bot for `bot generate` or
`serve --bot` never imports `bot.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from thumbview.bot.policy import (
    LORA_FILE,
    SampleConfig,
    check_sample_config,
    non_finite,
    read_tensors,
)
from thumbview.bot.reward import RewardConfig
from thumbview.bot.rl import BotError
from thumbview.fileio import atomic_write
from thumbview.layout import check_finished
from thumbview.schema import read_json
from thumbview.tensorfile import FLOAT_DTYPES, Header, dtype_problem, read_header

BOT_FILE = "bot.json"
FORMAT, FORMAT_VERSION = "thumbview-bot", 1
METHODS = ("draft", "ddpo")
# How an unfinished bot folder goes on (`layout.check_finished`): epochs 1..N are saved, so
# `--resume` trains on to --epochs, and `--resume --epochs N` keeps the N saved epochs.
RESUME_HINT = (
    "`thumbview bot train ... --resume` trains on; with `--epochs` at most the epochs saved, "
    "it keeps them as they are"
)
# What generation reads (a bot.json without one would sample otherwise, silently).
SAMPLE_FIELDS = frozenset(f.name for f in fields(SampleConfig))


@dataclass(frozen=True)
class BotConfig:
    """Hyperparameters. Each epoch samples `batch` prompts x `per_prompt` images.

    draft_k: steps backpropagated through (DRaFT-K); kl: weight of the KL-to-base term;
    ppo_clip / adv_clip: DDPO's ratio and advantage clips; eval_seeds: fixed seeds per
    evaluation prompt (the grid and the eval reward); workers: reward threads (ddpo).
    """

    method: str = "draft"
    epochs: int = 10
    batch: int = 2
    per_prompt: int = 2
    lr: float = 3e-4
    lora_rank: int = 4
    kl: float = 0.1
    draft_k: int = 1
    ppo_clip: float = 1e-4
    adv_clip: float = 5.0
    seed: int = 0
    eval_seeds: int = 2
    workers: int = 2
    sample: SampleConfig = field(default_factory=SampleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BotError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if (
            min(self.epochs, self.batch, self.per_prompt, self.lora_rank, self.eval_seeds) < 1
            or self.lr <= 0
        ):
            raise BotError(
                "epochs, batch, per-prompt, lora-rank, eval-seeds must be >= 1 and lr > 0"
            )
        if self.kl < 0 or not 1 <= self.draft_k <= self.sample.steps:
            raise BotError("kl must be >= 0 and draft_k in 1..steps")
        check_sample_config(self.sample, self.method)

    @classmethod
    def from_dict(cls, d: dict) -> BotConfig:
        """The config saved in bot.json, checked (`_from_json`): BotError in words."""
        if not isinstance(d, dict):
            raise BotError("config: expected an object")
        if not isinstance(d.get("sample"), dict) or SAMPLE_FIELDS - set(d["sample"]):
            raise BotError(
                f"config.sample: expected every one of {', '.join(sorted(SAMPLE_FIELDS))}"
            )
        sample = _from_json(SampleConfig, d["sample"], "config.sample")
        reward = _from_json(RewardConfig, d.get("reward", {}), "config.reward")
        return _from_json(cls, {**d, "sample": sample, "reward": reward}, "config")


# JSON types of a config field, by its annotation (`from __future__ import annotations`).
_FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "str | None": (str, type(None))}  # fmt: skip


def _from_json(cls, values: object, where: str):
    """`cls(**values)` for a config dataclass read from JSON: every key one of its fields,
    every value of its field's type (numbers finite), so an edited file is refused in words
    instead of failing deep in sampling. Nested configs are built by the caller."""
    if not isinstance(values, dict):
        raise BotError(f"{where}: expected an object")
    types = {f.name: f.type for f in fields(cls)}
    if unknown := sorted(map(str, set(values) - set(types))):
        raise BotError(f"{where}: unknown settings {', '.join(unknown)}")
    for key, value in values.items():
        kinds = _FIELD_TYPES.get(str(types[key]))
        bad_number = isinstance(value, float) and not math.isfinite(value)
        if kinds is not None and (isinstance(value, bool) or not isinstance(value, kinds) or bad_number):  # fmt: skip
            raise BotError(f"{where}.{key}: expected {types[key]}, got {str(value)[:40]!r}")
    return cls(**values)


@dataclass(frozen=True)
class Prompt:
    """A title (what the predictor scores) and the image prompt (what the diffusion model sees)."""

    title: str
    image_prompt: str


def read_prompts(path: str | Path) -> list[Prompt]:
    """One title per line, optionally `title<TAB>image prompt`; blank lines and # comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found")
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        title, _, image_prompt = line.partition("\t")
        prompts.append(Prompt(title.strip(), image_prompt.strip() or title.strip()))
    if not prompts:
        raise BotError(f"{path} has no prompts (one title per line)")
    return prompts


def save_grid(images: list, columns: int, path: Path) -> Path:
    from PIL import Image

    w, h = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (w * columns, h * rows), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: grid.save(tmp, "PNG"))
    return path


def read_bot(bot_dir: str | Path, *, unfinished_ok: bool = False) -> dict:
    """bot.json, checked (its `config` a valid BotConfig), and the LoRA file readable with
    finite values (its shapes need the base model: `Policy.load_lora`); a bot folder can be
    shared or edited, so anything else is FileNotFoundError/BotError in words.

    A folder whose `bot train` did not finish (killed, Ctrl-C, still running: it holds
    `RUN_UNFINISHED`) is a BotError too; only `bot train --resume` reads one
    (`unfinished_ok`), to go on from its last saved epoch."""
    if not unfinished_ok:
        check_finished(bot_dir, BotError, RESUME_HINT)
    path = Path(bot_dir) / BOT_FILE
    if not path.is_file() or not (Path(bot_dir) / LORA_FILE).is_file():
        raise FileNotFoundError(
            f"{bot_dir} is not a bot folder (needs {BOT_FILE} and {LORA_FILE}); train one with `thumbview bot train`"
        )
    meta = read_json(path, {"format": str, "base": str, "config": dict}, BotError)
    if meta["format"] != FORMAT:
        raise BotError(f"{path} is not a thumbview bot file")
    try:
        config = BotConfig.from_dict(meta["config"])
    except BotError as e:
        raise BotError(f"{path}: {e}") from e
    lora = Path(bot_dir) / LORA_FILE
    if problem := lora_rank_problem(read_header(lora, BotError), config.lora_rank):
        raise BotError(
            f"{lora} does not fit this base model and LoRA rank ({problem}; "
            f"{BOT_FILE} config.lora_rank)"
        )
    if problem := non_finite(read_tensors(lora, "LoRA")):
        raise BotError(f"{lora}: {problem}")
    return meta


def lora_rank_problem(header: Header, rank: int) -> str | None:
    """Why a LoRA file's header does not hold an adapter of `rank`, or None.

    Read before the adapter is built: the policy allocates `rank` columns per adapted layer,
    so a rank of 10^9 in bot.json must be refused by the file's shapes, not by the memory."""
    if problem := dtype_problem(header, FLOAT_DTYPES):
        return problem
    downs = {k: s for k, (s, _) in header.items() if k.endswith(("lora.down.weight", "lora_A.weight"))}  # fmt: skip
    ups = {k: s for k, (s, _) in header.items() if k.endswith(("lora.up.weight", "lora_B.weight"))}
    if not downs or len(downs) != len(ups) or len(downs) + len(ups) != len(header):
        return "not a LoRA adapter (expected pairs of lora down/up weights)"
    for name, shape in {**downs, **ups}.items():
        at = shape[0] if name in downs else shape[-1]
        if len(shape) != 2 or at != rank:
            return f"tensor {name!r} has shape {shape}: not a rank-{rank} adapter"
    return None
