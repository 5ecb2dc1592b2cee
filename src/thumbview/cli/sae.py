"""`thumbview sae train|analyze` and `thumbview explain`: the SAE feature study."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import console, print_json, progress_for, user_errors
from thumbview.cli.data import CacheOpt, DataArg
from thumbview.cli.predict import ChannelVideosOpt, PublishedOpt, SubscribersOpt
from thumbview.layout import default_study_dir, resolve_sae_dir
from thumbview.sae.config import (
    ARCHS,
    FEATURE_SOURCES,
    TOKENS,
    ActivationSource,
    ReluL1Config,
    SaeBaseConfig,
    StudyConfig,
    TopKConfig,
    TrainConfig,
    channel_config,
    option_help,
)

app = typer.Typer(
    help="Sparse autoencoder on image activations (CLIP, ImageNet) or cached features, "
    "and which features go with views."
)


Arch = StrEnum("Arch", {a: a for a in ARCHS})
Tokens = StrEnum("Tokens", {a: a for a in TOKENS})
Features = StrEnum("Features", {a: a for a in FEATURE_SOURCES})


_SOURCE, _TRAIN = ActivationSource(), TrainConfig()
_TOPK, _RELU = TopKConfig(d_in=1), ReluL1Config(d_in=1)


def _source(name: str) -> str:
    return option_help(ActivationSource, name, show_default=False)


def _train(name: str) -> str:
    return option_help(TrainConfig, name, show_default=False)


def _arch(cls: type, name: str) -> str:
    return option_help(cls, name, show_default=False).rstrip(".") + f" ({cls.arch} only)."


def _study(name: str) -> str:
    """Help of a `sae analyze` option, from StudyConfig (main and per-channel defaults)."""
    return option_help(StudyConfig, name, **{"--channel": channel_config()})


SaeDirOpt = Annotated[Path | None, typer.Option("--sae", help="SAE folder from `sae train`.")]


@app.command("train")
@user_errors
def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="SAE folder (re-run to resume).")],
    data: Annotated[
        Path | None,
        typer.Argument(help="Dataset folder (images + metadata.csv); optional with --activations."),
    ] = None,
    features: Annotated[Features, typer.Option("--features", help=_source("features"))] = Features(
        _SOURCE.features
    ),
    clip_model: Annotated[
        str, typer.Option("--clip-model", help=_source("clip_model"))
    ] = _SOURCE.clip_model,
    old_model: Annotated[
        str | None, typer.Option("--model", hidden=True, help="Old name of --clip-model.")
    ] = None,
    layer: Annotated[int | None, typer.Option("--layer", help=_source("layer"))] = None,
    tokens: Annotated[Tokens | None, typer.Option("--tokens", help=_source("tokens"))] = None,
    arch: Annotated[
        Arch, typer.Option("--arch", help="SAE architecture: topk, or relu-l1 (the study's).")
    ] = Arch("topk"),
    k: Annotated[int, typer.Option("--k", help=_arch(TopKConfig, "k"))] = _TOPK.k,
    expansion: Annotated[
        int,
        typer.Option(
            "--expansion", help=option_help(SaeBaseConfig, "expansion_factor", show_default=False)
        ),
    ] = _TOPK.expansion_factor,
    l1: Annotated[
        float, typer.Option("--l1", help=_arch(ReluL1Config, "l1_coefficient"))
    ] = _RELU.l1_coefficient,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help=_train("batch_size"))
    ] = _TRAIN.batch_size,
    lr: Annotated[float, typer.Option("--lr", help=_train("lr"))] = _TRAIN.lr,
    epochs: Annotated[int, typer.Option("--epochs", help=_train("epochs"))] = _TRAIN.epochs,
    dead_after: Annotated[
        int | None,
        typer.Option(
            "--dead-after", help="Samples without firing = dead (default: half an epoch)."
        ),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Extra image folder to train on.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help=_train("seed"))] = _TRAIN.seed,
    activations: Annotated[
        Path | None,
        typer.Option(
            "--activations",
            help="Train on a folder of activations-*.npy shards (sae.shards.write_shards), "
            "streamed from disk; with DATA, one row per video in its order.",
        ),
    ] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Train a sparse autoencoder on CLIP or ImageNet activations, or cached features (resumable).

    Writes OUT/sae (the SAE), OUT/metrics.json (explained variance on held-out
    activations) and OUT/codes.npz (the dataset's latents: `sae analyze --sae OUT` reuses
    them on the same dataset, as `sae analyze --latents` reads them).
    """
    if old_model is not None:
        console.print("[yellow]note:[/] `sae train --model` is now `--clip-model`")
        clip_model = old_model
    options = {"arch": arch.value, "expansion_factor": expansion, "dead_after": dead_after}
    options.update({"k": k} if arch.value == "topk" else {"l1_coefficient": l1})
    train_cfg = TrainConfig(batch_size=batch_size, lr=lr, epochs=epochs, seed=seed)
    if activations is not None:
        _train_on_shards(activations, data, out, options, train_cfg, reference)
        return
    if data is None:
        from thumbview.sae.config import SaeError

        raise SaeError("give a dataset folder, or --activations SHARDS")
    source = ActivationSource(features.value, clip_model, layer, tokens and tokens.value)
    from thumbview.sae.folder import activation_encoder
    from thumbview.sae.pipeline import train_sae

    encoder = activation_encoder(source)
    _ = encoder.dim  # reads the model: a missing one fails before the images are checked
    from thumbview.data.dataset import load_dataset

    ds = load_dataset(data, progress=progress_for())
    result = train_sae(
        ds,
        source,
        out,
        options,
        train_cfg,
        reference,
        cache_dir,
        progress=progress_for(),
        encoder=encoder,
    )
    _report_training(result, out)


def _train_on_shards(shards: Path, data: Path | None, out: Path, options, train_cfg, reference):
    """`sae train --activations`: the dataset (if given) only checks the row count."""
    from thumbview.sae.config import SaeError
    from thumbview.sae.pipeline import train_sae_on_shards

    if reference is not None:
        raise SaeError(
            "--reference adds images to encode; with --activations add them to the shards"
        )
    expected = None
    if data is not None:
        from thumbview.data.dataset import load_dataset

        expected = len(load_dataset(data, progress=progress_for()))
    result = train_sae_on_shards(shards, out, options, train_cfg, expected, progress_for())
    _report_training(result, out)


def _never_fired(m) -> str:
    """'3 of 768 latents (0.4%) never fired': the plot's count, in the plot's words."""
    if not m.d_sae:  # metrics saved before the count was kept
        return f"{m.dead_fraction:.1%} of latents never fired"
    return f"{m.never_fired} of {m.d_sae} latents ({m.dead_fraction:.1%}) never fired"


def _report_training(result, out: Path) -> None:
    m = result.metrics
    where = "held-out" if result.heldout else "training"
    console.print(
        f"SAE on {result.n_activations:,} activations -> [bold]{out}[/]\n"
        f"explained variance {m.explained_variance:.3f} ({where} activations), mean L0 "
        f"{m.l0:.1f}; {_never_fired(m)} on the {where} activations (as in feature_density.png); "
        f"codes for `sae analyze --latents`: "
        f"{result.codes_file}"
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
    top_k: Annotated[int | None, typer.Option("--top-k", help=_study("top_k"))] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help=_study("threshold"))
    ] = None,
    min_active: Annotated[
        int | None, typer.Option("--min-active", help=_study("min_active"))
    ] = None,
    n_extreme: Annotated[int | None, typer.Option("--n-extreme", help=_study("n_extreme"))] = None,
    n_shuffles: Annotated[
        int | None, typer.Option("--n-shuffles", "--n-null", help=_study("n_shuffles"))
    ] = None,
    n_boot: Annotated[int | None, typer.Option("--n-boot", help=_study("n_boot"))] = None,
    n_random: Annotated[int | None, typer.Option("--n-random", help=_study("n_random"))] = None,
    heldout_group: Annotated[
        int | None, typer.Option("--heldout-group", help=_study("heldout_group"))
    ] = None,
    n_perm: Annotated[int | None, typer.Option("--n-perm", help=_study("n_perm"))] = None,
    seed: Annotated[int | None, typer.Option("--seed", help=_study("seed"))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
    cache_dir: CacheOpt = None,
) -> None:
    """Which SAE features go with high or low views: the study's statistics and a report."""
    from thumbview.sae.analyze import (
        AnalyzeConfig,
        feature_source,
        latents_for_dataset,
        load_latents_file,
        make_study_config,
        parse_controls,
        run_analysis,
    )

    if (sae is None) == (latents is None):
        raise ValueError("give exactly one of --sae SAE_DIR or --latents FILE")
    if sae is not None:
        resolve_sae_dir(sae)  # a wrong folder is named before the dataset is checked
    from thumbview.data.dataset import load_dataset

    ds = load_dataset(data, progress=progress_for(as_json))
    study = make_study_config(
        channel is not None, top_k=top_k, threshold=threshold, min_active=min_active,
        n_extreme=n_extreme, n_shuffles=n_shuffles, n_boot=n_boot, n_random=n_random,
        heldout_group=heldout_group, n_perm=n_perm, seed=seed,
    )  # fmt: skip
    config = AnalyzeConfig(
        study=study, control=parse_controls(control), channel=channel, reference=reference,
        features=feature_source(sae, latents),
    )  # fmt: skip
    z = (
        latents_for_dataset(ds, sae, cache_dir, progress=progress_for(as_json))
        if sae
        else load_latents_file(latents, len(ds))
    )
    out = out or (default_study_dir(sae) if sae else Path("study"))
    outputs = run_analysis(
        ds, z, config, out, progress=progress_for(as_json), sae_dir=sae, cache_dir=cache_dir
    )
    if as_json:
        print_json(json.loads(outputs.summary_json.read_text()))  # the file, controls included
        return
    _print_study(outputs)


def _print_study(outputs) -> None:
    r = outputs.result
    console.print(
        f"KS statistic {r.ks_statistic:.4f} (view-shuffle p={r.ks_pvalue:.3g}); max z "
        f"{r.max_z.statistic:.2f} (view-shuffle p={r.max_z.pvalue:.3g}); held-out top "
        f"features: P(null >= HHM) = {r.p_hhm:.3g}; bottom: P(null <= LHM) = {r.p_lhm:.3g}; "
        f"both sides: p = {r.heldout.p_combined:.3g}"
    )
    table = Table(
        "", "rank", "latent", "group views", "x dataset (other half)", "CI", "q",
        title="strongest features",
    )  # fmt: skip
    denom = r.dataset_statistic
    for _, row in r.table().groupby("top_or_bottom").head(5).iterrows():
        ci = f"{row['ci_low'] / denom:.2f}-{row['ci_high'] / denom:.2f}" if denom > 0 else "-"
        table.add_row(
            row["top_or_bottom"],
            str(row["rank"]),
            str(row["latent_feature_index"]),
            f"{row[r.stat_column]:,.0f}",
            f"{row['estimate_ratio']:.2f}",
            ci,
            f"{row['q']:.2g}",
        )
    console.print(table)
    summary = json.loads(outputs.summary_json.read_text())
    console.print(
        f"{summary['n_q_below_0.05']} features with q < 0.05 in "
        f"{summary['n_clusters_q_below_0.05']} clusters of shared videos"
    )
    ident = summary.get("channel_identifiability")
    if ident and ident.get("weak"):
        console.print(f"[yellow]warning:[/] {ident['message']}")
    for text in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {text}")
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
    top: Annotated[int, typer.Option("--top", help="How many features to show.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    published: PublishedOpt = None,
    subscribers: SubscribersOpt = None,
    channel_videos: ChannelVideosOpt = None,
) -> None:
    """Why this thumbnail: the model's feature contributions, or the SAE features it activates.
    A model's explanation ends with the out-of-range line predict shows for the same row
    (`warning` in --json)."""
    from thumbview.cli.finetune import explain_finetuned
    from thumbview.embed.context import context_from_options
    from thumbview.explain import source_kind

    context = context_from_options(published, subscribers, channel_videos=channel_videos)
    kind = source_kind(source)
    if kind == "finetuned":  # a network on pixels: an occlusion heatmap instead
        explain_finetuned(source, image, title, as_json)
    elif kind == "model":
        _explain_model(source, image, title, top, as_json, context)
    else:
        _explain_sae(source, image, study or default_study_dir(source), top, as_json)


def _explain_model(
    model_dir: Path, image: Path, title: str, top: int, as_json: bool, context: dict
) -> None:
    from thumbview.cli._shared import safe, say_notes, warn
    from thumbview.explain import explain_prediction, feature_label, feature_value
    from thumbview.inference import LoadedPredictor
    from thumbview.predict.card import POOLED
    from thumbview.units import format_views

    predictor = LoadedPredictor.load(model_dir)
    ex = explain_prediction(predictor, image, title, top=top, context=context)
    notes = predictor.notes(POOLED, context)  # what the views are, what was assumed, skill
    if as_json:
        print_json({**ex.to_json_dict(), **notes.to_json_dict()})
        return
    unit = "x the channel's typical views" if ex.target != "log10" else "views"
    console.print(
        f"predicted {format_views(ex.views, ex.target)} {unit}; "
        f"a typical thumbnail gets {format_views(ex.baseline_views, ex.target)}"
    )
    table = Table("part", "value here", "typical", "effect on views")
    for b in ex.blocks:
        table.add_row(f"[bold]{safe(b.name)}[/] (all)", "", "", f"x{b.factor:.2f}")
    for f in ex.features:
        table.add_row(
            safe(feature_label(f.name)),
            feature_value(f.name, f.value),
            feature_value(f.name, f.typical),
            f"x{f.factor:.2f}",
        )
    console.print(table)
    if ex.warning:  # the row's out-of-range line, on stderr as predict says it
        warn(ex.warning)
    say_notes(notes.lines(), notes.no_skill)


def _explain_sae(sae: Path, image: Path, study: Path, top: int, as_json: bool) -> None:
    from thumbview.cli._shared import safe
    from thumbview.explain import explain_sae_image

    features = explain_sae_image(image, sae, study, top=top)
    if as_json:
        print_json([{**f.__dict__, "examples": [str(p) for p in f.examples]} for f in features])
        return
    named = any(f.name for f in features)  # an ImageNet SAE names latents by class
    columns = ["latent", *(["looks like"] if named else []), "activation", "views x dataset"]
    table = Table(*columns, "q", "examples")
    for f in features:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        q = "-" if f.q is None else f"{f.q:.2g}"
        name = [safe(f.name or "-")] if named else []
        examples = ", ".join(p.name for p in f.examples)
        table.add_row(str(f.latent), *name, f"{f.activation:.3f}", ratio, q, examples)
    console.print(table)
