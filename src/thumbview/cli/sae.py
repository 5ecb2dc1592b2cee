"""`thumbview sae train|analyze` and `thumbview explain`: the SAE feature study."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import console, print_json, user_errors
from thumbview.cli.data import CacheOpt, DataArg
from thumbview.cli.finetune import explain_finetuned
from thumbview.data.dataset import load_dataset
from thumbview.finetune.model import is_finetuned

app = typer.Typer(help="Sparse autoencoder on CLIP activations, and which features go with views.")


class Arch(StrEnum):
    topk = "topk"
    relu_l1 = "relu-l1"


class Tokens(StrEnum):
    cls = "cls"
    all = "all"


SaeDirOpt = Annotated[Path | None, typer.Option("--sae", help="SAE folder from `sae train`.")]


@app.command("train")
@user_errors
def train_command(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="SAE folder (re-run to resume).")],
    model: Annotated[
        str, typer.Option("--model", help="CLIP id or local dir.")
    ] = "openai/clip-vit-large-patch14",
    layer: Annotated[
        int,
        typer.Option("--layer", help="hidden_states index; -2 = after the second-to-last block."),
    ] = -2,
    tokens: Annotated[Tokens, typer.Option("--tokens")] = Tokens.cls,
    arch: Annotated[
        Arch, typer.Option("--arch", help="topk (default) or relu-l1 (the study's recipe).")
    ] = Arch.topk,
    k: Annotated[int, typer.Option("--k")] = 32,
    expansion: Annotated[int, typer.Option("--expansion")] = 64,
    l1: Annotated[float, typer.Option("--l1", help="relu-l1 coefficient.")] = 8e-5,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 1024,
    lr: Annotated[float, typer.Option("--lr")] = 4e-4,
    epochs: Annotated[int, typer.Option("--epochs")] = 1,
    dead_after: Annotated[
        int | None, typer.Option("--dead-after", help="Samples without firing = dead.")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Extra image folder to train on.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    cache_dir: CacheOpt = None,
) -> None:
    """Train a sparse autoencoder on CLIP residual-stream activations (checkpointed, resumable)."""
    from thumbview.sae.pipeline import ActivationSource, train_sae
    from thumbview.sae.train import TrainConfig

    ds = load_dataset(data, progress=True)
    options = {"arch": arch.value, "k": k, "expansion_factor": expansion}
    options.update(l1_coefficient=l1, dead_after=dead_after)
    train_cfg = TrainConfig(batch_size=batch_size, lr=lr, epochs=epochs, seed=seed, progress=True)
    result = train_sae(
        ds,
        ActivationSource(model, layer, tokens.value),
        out,
        options,
        train_cfg,
        reference,
        cache_dir,
        progress=True,
    )
    m = result.metrics
    console.print(
        f"SAE on {result.n_activations:,} activations -> [bold]{out}[/]\n"
        f"explained variance {m.explained_variance:.3f}, mean L0 {m.l0:.1f}, dead {m.dead_fraction:.1%}"
    )


@app.command("analyze")
@user_errors
def analyze_command(
    data: DataArg,
    sae: SaeDirOpt = None,
    latents: Annotated[
        Path | None, typer.Option("--latents", help="Dense .npy or sparse .npz, one row per video.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Study folder (default SAE/study).")
    ] = None,
    control: Annotated[
        str, typer.Option("--control", help="Remove 'age' and/or 'channel' effects first.")
    ] = "",
    channel: Annotated[
        str | None, typer.Option("--channel", help="Per-channel mode for one channel_id.")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Image folder shown under each grid.")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", help="Top activations per latent (400).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Active above (0.05).")
    ] = None,
    min_active: Annotated[
        int | None,
        typer.Option("--min-active", help="Qualify if more than this many are active (399)."),
    ] = None,
    n_extreme: Annotated[
        int | None, typer.Option("--n-extreme", help="Top/bottom features reported (100).")
    ] = None,
    n_null: Annotated[
        int | None, typer.Option("--n-null", help="Held-out null medians (1,000,000).")
    ] = None,
    n_boot: Annotated[
        int | None, typer.Option("--n-boot", help="Bootstrap resamples (1000).")
    ] = None,
    n_random: Annotated[
        int | None,
        typer.Option("--n-random", help="Random groups for the KS test (one per feature)."),
    ] = None,
    heldout_group: Annotated[
        int | None,
        typer.Option("--heldout-group", help="Features per side in the held-out test (100)."),
    ] = None,
    n_perm: Annotated[
        int | None, typer.Option("--n-perm", help="Null size for per-feature p-values.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
    cache_dir: CacheOpt = None,
) -> None:
    """Which SAE features go with high or low views: the study's statistics and a report."""
    from thumbview.sae.analyze import (
        AnalyzeConfig,
        latents_for_dataset,
        load_latents_file,
        make_study_config,
        parse_controls,
        run_analysis,
    )

    if (sae is None) == (latents is None):
        raise ValueError("give exactly one of --sae SAE_DIR or --latents FILE")
    ds = load_dataset(data, progress=not as_json)
    study = make_study_config(
        channel is not None,
        top_k=top_k,
        threshold=threshold,
        min_active=min_active,
        n_extreme=n_extreme,
        n_null_heldout=n_null,
        n_boot=n_boot,
        n_random=n_random,
        heldout_group=heldout_group,
        n_perm=n_perm,
        seed=seed,
    )
    config = AnalyzeConfig(
        study=study, control=parse_controls(control), channel=channel, reference=reference
    )
    z = (
        latents_for_dataset(ds, sae, cache_dir, progress=not as_json)
        if sae
        else load_latents_file(latents, len(ds))
    )
    out = out or ((sae / "study") if sae else Path("study"))
    outputs = run_analysis(
        ds, z, config, out, progress=not as_json, sae_dir=sae, cache_dir=cache_dir
    )
    if as_json:
        print_json(json.loads(outputs.summary_json.read_text()))  # the file, controls included
        return
    _print_study(outputs)


def _print_study(outputs) -> None:
    r = outputs.result
    console.print(
        f"KS statistic {r.ks_statistic:.4f} (p={r.ks_pvalue:.3g}); held-out top features: "
        f"P(null >= HHM) = {r.p_hhm:.3g}; bottom: P(null <= LHM) = {r.p_lhm:.3g}"
    )
    table = Table("", "rank", "latent", "group views", "x dataset", "q", title="strongest features")
    for _, row in outputs.result.table().groupby("top_or_bottom").head(5).iterrows():
        table.add_row(
            row["top_or_bottom"],
            str(row["rank"]),
            str(row["latent_feature_index"]),
            f"{row.iloc[3]:,.0f}",
            f"{row['ratio']:.2f}",
            f"{row['q']:.2g}",
        )
    console.print(table)
    console.print(f"report: [bold]{outputs.report_html}[/]")


@user_errors
def explain_command(
    source: Annotated[
        Path, typer.Argument(help="A model folder (`train`) or an SAE folder (`sae train`).")
    ],
    image: Annotated[Path, typer.Argument(help="A thumbnail.")],
    title: Annotated[
        str, typer.Option("--title", "-t", help="Title, for a model that reads titles.")
    ] = "",
    study: Annotated[
        Path | None, typer.Option("--study", help="SAE study folder (default SAE/study).")
    ] = None,
    top: Annotated[int, typer.Option("--top")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Why this thumbnail: the model's feature contributions, or the SAE features it activates."""
    if is_finetuned(source):  # a network on pixels: an occlusion heatmap instead
        explain_finetuned(source, image, title, as_json)
    elif (source / "model.safetensors").exists():
        _explain_model(source, image, title, top, as_json)
    elif (source / "cfg.json").exists():
        _explain_sae(source, image, study or source / "study", top, as_json)
    else:
        raise ValueError(
            f"{source} is neither a model folder (model.safetensors) nor an SAE folder (cfg.json)"
        )


def _explain_model(model_dir: Path, image: Path, title: str, top: int, as_json: bool) -> None:
    from thumbview.predict.explain import explain_prediction

    ex = explain_prediction(model_dir, image, title, top=top)
    if as_json:
        print_json(ex.to_json_dict())
        return
    console.print(
        f"predicted {ex.views:,.3g} ({ex.target}); a typical thumbnail gets {ex.baseline_views:,.3g}"
    )
    table = Table("part", "value", "typical", "effect on views")
    for b in ex.blocks:
        table.add_row(f"[bold]{b.name}[/] (all)", "", "", f"x{b.factor:.2f}")
    for f in ex.features:
        table.add_row(f.name, f"{f.value:.3g}", f"{f.typical:.3g}", f"x{f.factor:.2f}")
    console.print(table)


def _explain_sae(sae: Path, image: Path, study: Path, top: int, as_json: bool) -> None:
    from thumbview.sae.explain import explain_image

    features = explain_image(image, sae, study, top=top)
    if as_json:
        print_json([{**f.__dict__, "examples": [str(p) for p in f.examples]} for f in features])
        return
    table = Table("latent", "activation", "views x dataset", "q", "examples")
    for f in features:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        q = "-" if f.q is None else f"{f.q:.2g}"
        table.add_row(
            str(f.latent), f"{f.activation:.3f}", ratio, q, ", ".join(p.name for p in f.examples)
        )
    console.print(table)
