"""SAE training throughput (activations per second) on this machine's CPU.

Times full `SaeTrainer.step` calls (forward, AuxK/ghost terms, backward, decoder-gradient
projection, Adam, decoder renormalisation) on random activations, and prints a markdown table.

    .venv/bin/python benchmarks/sae_train.py                      # default sizes
    .venv/bin/python benchmarks/sae_train.py --d-in 1024 --expansion 64 --steps 3

ViT-L/14 has width 1024 and the study's default expansion is 64 (65,536 latents); on a small
CPU that is slow, so the defaults measure width 768 at expansion 8 and 32 and the table lets
one extrapolate (cost grows about linearly in d_sae).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from thumbview.sae.architectures import build_sae
from thumbview.sae.model import SaeConfig
from thumbview.sae.train import SaeTrainer, TrainConfig


def time_steps(cfg: SaeConfig, batch: int, steps: int, dead: bool) -> float:
    """Median seconds per training step after two warm-up steps (median: the box is shared)."""
    sae = build_sae(cfg, seed=0)
    trainer = SaeTrainer(sae, TrainConfig(batch_size=batch, warmup_steps=1))
    x = torch.randn(batch, cfg.d_in, generator=torch.Generator().manual_seed(0))
    sae.init_b_dec_(x)
    if dead:  # every latent counts as dead, the worst case for AuxK / ghost grads
        trainer.since_fired.fill_(cfg.dead_after)
    for _ in range(2):
        trainer.step(x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.step(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, nargs="+", default=[768])
    parser.add_argument("--expansion", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--arch", nargs="+", default=["topk", "relu-l1"])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dead", action="store_true", help="also time with all latents dead")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}\n")
    print("| arch | d_in | expansion | d_sae | dead latents | s/step | activations/s |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.arch:
        for d_in in args.d_in:
            for expansion in args.expansion:
                for dead in (False, True) if args.dead else (False,):
                    cfg = SaeConfig(d_in=d_in, expansion_factor=expansion, arch=arch, k=args.k)
                    sec = time_steps(cfg, args.batch, args.steps, dead)
                    print(
                        f"| {arch} | {d_in} | {expansion} | {cfg.d_sae:,} | {'all' if dead else 'none'} "
                        f"| {sec:.3f} | {args.batch / sec:,.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
