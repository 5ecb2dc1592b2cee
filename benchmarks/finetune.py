"""Fine-tuning speed and memory per backbone, and the CPU goal run against the `visual` model.

Run by hand, not in the tests:

    .venv/bin/python benchmarks/finetune.py speed            # images/s + peak RSS per backbone
    .venv/bin/python benchmarks/finetune.py goal --n 4000    # synth: finetune vs visual ridge
    .venv/bin/python benchmarks/finetune.py cv DATA          # real data: channel-disjoint K-fold
    .venv/bin/python benchmarks/finetune.py cv DATA --backbone effnet-lite0 --init imagenet
    .venv/bin/python benchmarks/finetune.py frozen DATA      # ridge on frozen imagenet features

`speed` times optimiser steps (forward + backward + AdamW) on random 0-255 pixels, each
backbone in its own process so its peak RSS is its own; on a CUDA machine it also times
ViT-B/16 at 224 px in bf16. Where timm is importable (the `thumbview[timm]` venv) it adds
timm backbones, the same architectures as the transformers rows where there is one.
`goal` makes `thumbview synth --n N`, trains the `visual` ridge model and the default
fine-tuned image-only model on the same channel-disjoint split, and prints both held-out
Spearmans, their ratio and the fine-tuning wall time. `cv` fine-tunes on each training fold
of the channel-disjoint folds `thumbview cv` uses (same grouping, same seed) and scores the
held-out fold through `LoadedPredictor`, as `predict` would: mean ± sd over folds,
comparable with the frozen-feature rows of the README. `--only-folds` runs some of those
folds and `--max-train` fine-tunes on a seeded random subsample of each training fold, where
compute is short (the table's header says so). `frozen` fits the ridge head `thumbview cv`
fits on the frozen `imagenet` features (and with the MiniLM title) on the same folds and the
same training rows, for the comparison at equal data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from thumbview.progress import SILENT

SPEED_BACKBONES = {"vit-tiny": 32, "convnext-atto": 32, "vit-s16": 8, "vit-b16": 4}
# name: (batch, input side or None for the model's default), timm twins of the rows above
TIMM_BACKBONES = {
    "timm:convnext_atto": (32, 64),
    "timm:vit_tiny_patch16_224": (8, None),
    "timm:vit_small_patch16_224": (8, None),
    "timm:vit_base_patch16_224": (4, None),
}


def one_backbone(
    name: str, batch: int, steps: int, device: str, bf16: bool, size: int | None = None
) -> dict:
    """Images/s of training steps for one backbone (run in a child process)."""
    import torch

    from thumbview.finetune.config import FinetuneConfig
    from thumbview.finetune.network import build_network
    from thumbview.finetune.train import make_optimizer

    cfg = FinetuneConfig(backbone=name, title="frozen", workers=0, image_size=size)
    net, arch = build_network(cfg)
    net.to(device).train()
    opt, sched = make_optimizer(net, cfg, steps + 1)
    size = arch["image_size"]
    pix = torch.randint(0, 256, (batch, 3, size, size), device=device).float()
    title = torch.randn(batch, 384, device=device)
    y = torch.randn(batch, device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(net(pix, title).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in net.image.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"backbone": name, "size": size, "params_m": params / 1e6, "batch": batch,
            "images_s": batch * steps / seconds, "peak_rss_mb": peak, "gpu_mb": gpu}  # fmt: skip


def speed(args) -> None:
    print(f"torch threads {args.threads}; machine shared with other jobs: compare rows, not runs\n")
    print("| backbone | input | params (M) | batch | train images/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    runs = [(n, b, None, "cpu", False) for n, b in SPEED_BACKBONES.items()]
    has_timm = importlib.util.find_spec("timm") is not None
    if has_timm:
        runs += [(n, b, size, "cpu", False) for n, (b, size) in TIMM_BACKBONES.items()]
    try:
        import torch

        if torch.cuda.is_available():
            runs.append(("vit-b16", 64, None, "cuda", True))
            if has_timm:
                runs.append(("timm:vit_base_patch16_224", 64, None, "cuda", True))
    except ImportError:
        pass
    for name, batch, size, device, bf16 in runs:
        cmd = [sys.executable, __file__, "one", name, str(batch), str(args.steps), device,
               str(int(bf16)), str(args.threads), str(size or 0)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        label = f"{name} ({device}{', bf16' if bf16 else ''})"
        mem = f"{r['peak_rss_mb']:.0f}" + (f" (GPU {r['gpu_mb']:.0f})" if r["gpu_mb"] else "")
        print(f"| {label} | {r['size']} px | {r['params_m']:.2f} | {batch} | "
              f"{r['images_s']:.1f} | {mem} |")  # fmt: skip


def goal(args) -> None:
    import numpy as np

    from thumbview.data.dataset import load_dataset
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.finetune.config import FinetuneConfig
    from thumbview.finetune.train import finetune
    from thumbview.predict.model import PredictorConfig
    from thumbview.predict.workflow import train

    work = Path(args.work or tempfile.mkdtemp(prefix="ft-goal-"))
    data = work / "data"
    if not (data / "metadata.csv").exists():
        make_synthetic(data, SynthConfig(n=args.n, seed=0))
    ds = load_dataset(data)
    t0 = time.perf_counter()
    visual = train(ds, PredictorConfig(encoders=("visual",)), work / "visual", holdout_frac=0.2)
    t_visual = time.perf_counter() - t0
    rows = []
    for title in args.titles.split(","):
        cfg = FinetuneConfig(title=title, epochs=args.epochs, workers=args.workers)
        t0 = time.perf_counter()
        r = finetune(ds, cfg, work / f"ft-{title}", on_epoch=lambda e: print(e, file=sys.stderr))
        rows.append((title, r, time.perf_counter() - t0))
    v = visual.holdout.model.spearman
    print(f"synth n={args.n}, hold-out {visual.n_holdout} videos of unseen channels, "
          f"{os.cpu_count()} cores shared with other jobs\n")  # fmt: skip
    print("| model | held-out Spearman | ratio to visual | wall time (s) | epochs (best) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| visual descriptors, ridge | {v:.3f} | 1.00 | {t_visual:.0f} (embed + fit) | - |")
    for title, r, sec in rows:
        s = r.holdout.model.spearman
        name = {"none": "image only", "frozen": "image + frozen title"}.get(title, title)
        print(f"| finetune vit-tiny, {name} | {s:.3f} | {s / v:.2f} | {sec:.0f} | "
              f"{r.epochs_run} ({r.best_epoch}) |")  # fmt: skip
    assert np.isfinite(v)


def folds(ds, args) -> list[tuple[int, object, object]]:
    """(fold, training rows, test rows) of the channel-disjoint folds `thumbview cv` uses,
    those in `--only-folds`, training rows cut to a seeded `--max-train` subsample."""
    import numpy as np

    from thumbview.predict.metrics import group_kfold

    keep = {int(f) for f in args.only_folds.split(",")} if args.only_folds else None
    out = []
    for f, (train_idx, test_idx) in enumerate(group_kfold(ds.channels, args.folds, 0, n=len(ds))):
        if keep is not None and f not in keep:
            continue
        if args.max_train and len(train_idx) > args.max_train:
            pick = np.random.default_rng([0, f]).choice(
                len(train_idx), args.max_train, replace=False
            )
            train_idx = np.sort(train_idx[pick])
        out.append((f, train_idx, test_idx))
    return out


def fold_scores(ds, title: str, args, work: Path) -> list[float]:
    """Held-out Spearman of one title mode on each channel-disjoint fold."""
    from scipy.stats import spearmanr

    from thumbview.data.images import load_image
    from thumbview.finetune.config import FinetuneConfig
    from thumbview.finetune.train import finetune
    from thumbview.inference import LoadedPredictor
    from thumbview.predict.target import make_target

    y, _ = make_target(ds.views, "log10")
    scores = []
    for f, train_idx, test_idx in folds(ds, args):
        cfg = FinetuneConfig(backbone=args.backbone, init=args.init, title=title,
                             epochs=args.epochs, workers=args.workers, holdout=0.0,
                             image_size=args.image_size, lr=args.lr, batch_size=args.batch_size)  # fmt: skip
        t0 = time.perf_counter()
        name = f"{args.backbone}-{args.init or 'scratch'}-{title}-fold{f}"
        r = finetune(ds.subset(train_idx), cfg, work / name)
        t_train = time.perf_counter() - t0
        loaded = LoadedPredictor.load(work / name)
        test = ds.subset(test_idx)
        images = [load_image(test.image_source(i)) for i in range(len(test))]
        pred = loaded.predict(loaded.blocks(images, list(test.titles)))
        scores.append(float(spearmanr(pred, y[test_idx]).statistic))
        print(f"{name}: {scores[-1]:.3f} ({t_train:.0f} s training {r.n_train} + validation "
              f"{r.n_val}, {r.epochs_run} epochs; {time.perf_counter() - t0:.0f} s with "
              f"scoring {len(test_idx)})", file=sys.stderr, flush=True)  # fmt: skip
    return scores


def cv(args) -> None:
    import numpy as np

    from thumbview.data.dataset import load_dataset

    ds = load_dataset(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="ft-cv-"))
    import torch

    torch.set_num_threads(args.threads)
    start = args.init or "scratch"
    print(f"{args.data}: {len(ds)} videos, {args.folds} channel-disjoint folds"
          f"{f' (run: {args.only_folds})' if args.only_folds else ''}"
          f"{f', training rows cut to {args.max_train}' if args.max_train else ''}, "
          f"{args.backbone} from {start}, {args.image_size or 'default'} px, {args.epochs} epochs "
          f"max, lr {args.lr}, batch {args.batch_size}, {args.threads} torch threads, "
          f"{os.cpu_count()} cores shared with other jobs\n")  # fmt: skip
    print("| model | Spearman (mean ± sd over folds) | per fold |")
    print("|---|---|---|")
    for title in args.titles.split(","):
        s = np.array(fold_scores(ds, title, args, work))
        name = {"none": "image only", "frozen": "image + frozen MiniLM title"}.get(title, title)
        sd = f"{s.std(ddof=1):.3f}" if len(s) > 1 else "-"
        print(f"| finetune {args.backbone} from {start}, {name} | {s.mean():.3f} ± {sd} | "
              f"{', '.join(f'{v:.3f}' for v in s)} |", flush=True)  # fmt: skip


def frozen(args) -> None:
    """Ridge (`thumbview cv`'s head) on frozen imagenet features, alone and with the title,
    on the folds and training rows `cv` with the same arguments fine-tunes on, and (with
    `--max-train`) on the whole training folds too. Features come from the shared cache of
    the whole dataset (`thumbview cv --encoders imagenet` fills it)."""
    import numpy as np

    from thumbview.data.dataset import load_dataset
    from thumbview.embed.cache import embed
    from thumbview.embed.registry import get_encoder
    from thumbview.predict.target import make_target

    ds = load_dataset(args.data)
    y, _ = make_target(ds.views, "log10")
    t0 = time.perf_counter()
    feats = {n: embed(ds, get_encoder(n), progress=SILENT)[0] for n in ("imagenet", "title")}
    print(f"features of {len(ds)} videos: {time.perf_counter() - t0:.0f} s\n", flush=True)
    print("| model | Spearman (mean ± sd over folds) | per fold |")
    print("|---|---|---|")
    runs = [("same training rows", folds(ds, args))]
    if args.max_train:
        runs.append(
            (
                "whole training folds",
                folds(ds, argparse.Namespace(**{**vars(args), "max_train": 0})),
            )
        )
    for rows, chosen in runs:
        for names in (("imagenet",), ("imagenet", "title")):
            s = np.array([_ridge_score(feats, names, y, tr, te) for _, tr, te in chosen])
            sd = f"{s.std(ddof=1):.3f}" if len(s) > 1 else "-"
            print(f"| ridge on frozen {' + '.join(names)}, {rows} | {s.mean():.3f} ± {sd} | "
                  f"{', '.join(f'{v:.3f}' for v in s)} |", flush=True)  # fmt: skip


def _ridge_score(feats, names, y, train_idx, test_idx) -> float:
    """Held-out Spearman of `thumbview cv`'s default ridge head on frozen feature blocks."""
    from scipy.stats import spearmanr

    from thumbview.predict.model import PredictorConfig, ViewPredictor

    model = ViewPredictor(PredictorConfig(encoders=names))
    model.fit({n: feats[n][train_idx] for n in names}, y[train_idx], calibrate=False)
    pred = model.predict({n: feats[n][test_idx] for n in names})
    return float(spearmanr(pred, y[test_idx]).statistic)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        name, batch, steps, device, bf16, threads, size = sys.argv[2:9]
        import torch

        torch.set_num_threads(int(threads))
        r = one_backbone(name, int(batch), int(steps), device, bf16 == "1", int(size) or None)
        print(json.dumps(r))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--threads", type=int, default=2)
    g = sub.add_parser("goal")
    g.add_argument("--n", type=int, default=4000)
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--titles", default="none", help="title modes to fine-tune, comma-separated")
    g.add_argument("--work", default=None, help="folder for data and models (default: temp)")
    for part in ("cv", "frozen"):
        c = sub.add_parser(part)
        c.add_argument("data", type=Path)
        c.add_argument("--folds", type=int, default=5)
        c.add_argument("--only-folds", default=None, help="folds to run, e.g. 0,1 (default all)")
        c.add_argument("--max-train", type=int, default=0, help="subsample training rows")
        c.add_argument("--epochs", type=int, default=8)
        c.add_argument("--workers", type=int, default=2)
        c.add_argument("--titles", default="none,frozen", help="title modes, comma-separated")
        c.add_argument("--backbone", default="vit-tiny")
        c.add_argument("--init", default=None, help="e.g. imagenet (default: from scratch)")
        c.add_argument("--image-size", type=int, default=None)
        c.add_argument("--lr", type=float, default=1e-3)
        c.add_argument("--batch-size", type=int, default=64)
        c.add_argument("--threads", type=int, default=2)
        c.add_argument("--work", default=None, help="folder for the fold models (default: temp)")
    args = p.parse_args()
    {"speed": speed, "goal": goal, "cv": cv, "frozen": frozen}[args.part](args)


if __name__ == "__main__":
    main()
