"""`thumbview bot ...`: train a thumbnail generator against the predictor, generate, evaluate.

Thin shells over `thumbview.bot`; diffusers, peft and torch are imported inside the
commands, so `thumbview --help` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import (
    console,
    err_console,
    print_json,
    safe,
    say_model_notes,
    user_errors,
)

app = typer.Typer(
    help="thumbnailbot: tune a diffusion model with the view predictor (needs thumbview\\[bot]).",
    no_args_is_help=True,
)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise ValueError(f"--size must look like 512x512, got {text!r}")
    return int(w), int(h)


def _require() -> None:
    from thumbview.bot import require_bot_extra

    try:
        require_bot_extra()
    except ImportError as e:
        raise ValueError(str(e)) from None


@app.command("train")
@user_errors
def train_command(
    base: Annotated[str, typer.Option("--base", help="Local Stable Diffusion folder (or Hub id).")],
    model: Annotated[Path, typer.Option("--model", help="Predictor folder (thumbview train).")],
    prompts: Annotated[
        Path, typer.Option("--prompts", help="One title per line, or title<TAB>prompt.")
    ],
    out: Annotated[Path, typer.Option("--out", help="BOT folder to write.")],
    method: Annotated[
        str, typer.Option("--method", help="draft (reward backprop) or ddpo.")
    ] = "draft",
    epochs: Annotated[
        int, typer.Option("--epochs", help="Training epochs (each: one batch of prompts).")
    ] = 10,
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps.")] = 20,
    guidance: Annotated[
        float, typer.Option("--guidance", help="Classifier-free guidance scale.")
    ] = 5.0,
    batch: Annotated[int, typer.Option("--batch", help="Prompts per epoch.")] = 2,
    per_prompt: Annotated[int, typer.Option("--per-prompt", help="Images per prompt.")] = 2,
    lr: Annotated[
        float, typer.Option("--lr", help="AdamW learning rate of the LoRA weights.")
    ] = 3e-4,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="Rank of the LoRA adapters.")] = 4,
    kl: Annotated[float, typer.Option("--kl", help="Weight of the KL-to-base term.")] = 0.1,
    ood: Annotated[
        float, typer.Option("--ood", help="Weight of the out-of-distribution penalty.")
    ] = 1.0,
    eta: Annotated[float, typer.Option("--eta", help="DDIM noise (ddpo needs > 0).")] = 1.0,
    draft_k: Annotated[int, typer.Option("--draft-k", help="Steps backpropagated (draft).")] = 1,
    clip_model: Annotated[
        str | None, typer.Option("--clip-model", help="Local CLIP folder for title similarity.")
    ] = None,
    clip_weight: Annotated[
        float,
        typer.Option(
            "--clip-weight",
            help="Weight of the CLIP title-image similarity reward (ddpo; needs local CLIP).",
        ),
    ] = 0.0,
    aesthetic_model: Annotated[
        str | None,
        typer.Option("--aesthetic-model", help="safetensors linear head over CLIP embeddings."),
    ] = None,
    aesthetic_weight: Annotated[
        float,
        typer.Option(
            "--aesthetic-weight",
            help="Weight of the aesthetic-scorer reward (ddpo; needs local weights).",
        ),
    ] = 0.0,
    eval_model: Annotated[
        Path | None, typer.Option("--eval-model", help="Second predictor (disjoint channels).")
    ] = None,
    size: Annotated[str, typer.Option("--size", help="WxH, multiples of 8.")] = "512x512",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same images).")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run saved in --out.")
    ] = False,
) -> None:
    """Tune a LoRA so generated thumbnails score higher with the predictor (guards logged)."""
    _require()
    from thumbview.bot.folder import BotConfig, read_prompts
    from thumbview.bot.policy import SampleConfig
    from thumbview.bot.reward import RewardConfig
    from thumbview.bot.train import BotInterrupted, train_bot

    width, height = _size(size)
    reward = RewardConfig(
        ood_weight=ood, clip_weight=clip_weight, clip_model=clip_model,
        aesthetic_weight=aesthetic_weight, aesthetic_model=aesthetic_model,
    )  # fmt: skip
    config = BotConfig(
        method=method, epochs=epochs, batch=batch, per_prompt=per_prompt, lr=lr,
        lora_rank=lora_rank, kl=kl, draft_k=draft_k, seed=seed, reward=reward,
        sample=SampleConfig(steps, eta if method == "ddpo" else 0.0, guidance, height, width),
    )  # fmt: skip
    try:
        result = train_bot(
            base,
            model,
            read_prompts(prompts),
            out,
            config,
            eval_model=eval_model,
            resume=resume,
            on_epoch=_epoch_reporter(config.epochs),
        )
    except BotInterrupted as e:
        again = f"thumbview bot train --base {base} --model {model} --prompts {prompts} --out {out}"
        err_console.print(
            f"[yellow]interrupted[/]: {e.epochs_done} epoch(s) saved in {e.out_dir}, which "
            f"`bot generate` refuses until the run ends: resume with `{again} --resume` "
            f"(`--resume --epochs {e.epochs_done}` ends it with the epochs saved)"
        )
        raise typer.Exit(130) from None
    console.print(f"done: {result.epochs_done} epochs; LoRA, log, grids and plot in [bold]{out}[/]")


def _epoch_reporter(epochs: int):
    """One line per epoch: the reward and the guards the training log also keeps."""

    def show(epoch: int, stats) -> None:
        console.print(
            f"epoch {epoch}/{epochs}: reward {stats.reward_mean:.3f} ± {stats.reward_std:.3f}  "
            f"log10 views {stats.log10_mean:.3f}  OOD {stats.ood_mean:.3f}  KL {stats.kl:.2e}"
        )

    return show


@app.command("generate")
@user_errors
def generate_command(
    bot: Annotated[Path, typer.Argument(help="BOT folder (thumbview bot train).")],
    title: Annotated[str, typer.Option("--title", help="The video title.")],
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Image prompt (default: the title).")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Candidates to generate.")] = 8,
    top: Annotated[
        int | None, typer.Option("--top", help="Show this many (diverse, best first).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the images.")] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Predictor (default: the bot's).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same images).")] = 0,
    steps: Annotated[
        int | None, typer.Option("--steps", help="DDIM steps (default: the bot's training steps).")
    ] = None,
    no_lora: Annotated[
        bool, typer.Option("--no-lora", help="The base model, for comparison.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """Generate thumbnails for a title, best first: predicted views, interval, chance best."""
    _require()
    if n < 1:
        raise ValueError("-n must be at least 1")
    from thumbview.bot.generate import LoadedBot, generate

    result = generate(
        LoadedBot.load(bot), title, prompt, n, top, seed, not no_lora, model, out, steps
    )
    if as_json:
        print_json(result.to_json_dict())
        return
    table = Table(
        "rank",
        "seed",
        "predicted views",
        f"{result.coverage:.0%} interval",
        "chance best",
        "file",
        title=f"{'bot' if result.lora else 'base model'}: {title}",
    )
    for rank, c in zip(result.rank_labels(), result.candidates, strict=True):
        table.add_row(
            rank,  # "=1" for each candidate the verdict cannot tell apart (as compare)
            str(c.seed),
            f"{c.views:,.0f}",
            f"{c.low:,.0f} - {c.high:,.0f}",
            result.chance_text(c.p_best),  # "-" when every candidate is tied
            c.file or "-",
        )
    if result.verdict:  # compare's verdict: "... is likely ahead" or "no reliable difference"
        colour = "green" if result.reliable else "yellow"
        console.print(f"[bold {colour}]verdict:[/] {safe(result.verdict)}", soft_wrap=True)
    console.print(table)
    console.print(f"[dim]{result.chance_best_note}[/]", soft_wrap=True)
    if result.note:
        console.print(f"note: {result.note}")
    say_model_notes(result)


@app.command("eval")
@user_errors
def eval_command(
    bot: Annotated[Path, typer.Argument(help="BOT folder.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Held-out titles, one per line.")],
    model: Annotated[Path, typer.Option("--model", help="Predictor to judge with (ideally B).")],
    seeds: Annotated[int, typer.Option("--seeds", help="Fixed seeds per prompt.")] = 2,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the side-by-side grid.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """Base vs bot on fixed seeds: mean predicted log10 views and the bot's win rate."""
    _require()
    from dataclasses import asdict

    from thumbview.bot.folder import read_prompts
    from thumbview.bot.generate import LoadedBot, evaluate_bot

    result = evaluate_bot(LoadedBot.load(bot), read_prompts(prompts), model, seeds, out)
    if as_json:
        print_json(asdict(result))
        return
    console.print(
        f"{result.n} images per side, judged by {result.model}: base {10**result.base_log10:,.0f} "
        f"vs bot {10**result.bot_log10:,.0f} views (geometric mean); bot wins {result.win_rate:.0%}"
        + (f"; grid: {result.grid}" if result.grid else "")
    )


@app.command("tiny-base")
@user_errors
def tiny_base_command(
    out: Annotated[Path, typer.Argument(help="Folder to write.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same images).")] = 0,
) -> None:
    """Write a tiny random Stable Diffusion folder (for trying the commands offline; noise images)."""
    _require()
    from thumbview.bot.tiny import save_tiny_base

    console.print(f"tiny random base model in {save_tiny_base(out, seed)}")
