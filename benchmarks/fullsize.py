"""The seed's models at their real size: speed and peak memory on whatever device this runs on.

Run by hand, not in CI (the test runs `--quick`):

    python benchmarks/fullsize.py --device cpu                  # reduced rows say so
    python benchmarks/fullsize.py --device cuda --json rows.json
    python benchmarks/fullsize.py --quick                       # tiny configs, same code paths
    python benchmarks/fullsize.py --device cuda --only clip,sae  # some parts only

Speed and memory do not depend on the weights, so every architecture is built from its
published config with random weights and nothing is downloaded. Each row goes through
thumbview's own code, so the figures are what the product does:

- clip: CLIP image towers ViT-B/32 and ViT-L/14 (the seed study's model), saved like a Hub
  checkpoint and run by `ClipEncoder`: `encode` in float32 and bfloat16, and
  `residual_stream(layer=-2, tokens="all")`, what the SAE trains on. Inputs are decoded
  480x360 images (hq thumbnails), so preprocessing is in the figure and JPEG decoding is not.
- finetune: `finetune`'s ViT-B/16 recipe at 224 px with the trainable MiniLM title tower
  (`--title finetune`), optimiser steps of `finetune.train`'s epoch loop on random pixels,
  fp32 and bf16 autocast, with and without transformers' gradient checkpointing (which
  `thumbview finetune` does not switch on today: the rows say what it would buy).
- sae: the study's TopK SAE (d_in 1,024, 65,536 latents, k 32): `SaeTrainer.step`.
- bot: the thumbnailbot on an SD-1.5-sized UNet + VAE + text encoder (configs below):
  one optimiser step of `bot train` (`draft` K = 1, 2 and `ddpo`) with the CLI's defaults
  (LoRA rank 4, KL 0.1, guidance 5, 20 DDIM steps, 2 prompts x 2 images; the UNet call is
  checkpointed on the steps `draft` backpropagates through, as `Policy.sample` always
  does). The reward is a visual-only predictor with faces and OCR off (the bot tests'
  fixture), so the GPU figure leaves out ~70 ms of CPU per image for those detectors.

On CPU the largest rows run at reduced batch, resolution or DDIM steps and the note column
says so; on a GPU every row runs as specified. Peak memory is the GPU allocator's peak
(`torch.cuda.max_memory_allocated`) on CUDA, and the resident-set high-water mark of the
process on CPU (reset before each row; weights included). Each part runs in its own child
process unless `--quick`, so one part's memory never counts in another's. Prints a
markdown table, a row as soon as it is measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ----- the published configs ------------------------------------------------------------------
CLIP_TOWERS = {  # transformers.CLIPVisionConfig arguments (OpenAI's checkpoints)
    "ViT-B/32": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "patch_size": 32, "image_size": 224,
                 "projection_dim": 512},
    "ViT-L/14": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                 "num_attention_heads": 16, "patch_size": 14, "image_size": 224,
                 "projection_dim": 768},
}  # fmt: skip
QUICK_TOWER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3,
               "num_attention_heads": 4, "patch_size": 8, "image_size": 32,
               "projection_dim": 16}  # fmt: skip
SD15_UNET = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
    "act_fn": "silu", "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "center_input_sample": False,
}  # fmt: skip
SD15_VAE = {  # vae/config.json
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu",
    "sample_size": 512, "scaling_factor": 0.18215,
}  # fmt: skip
SD15_TEXT = {  # text_encoder/config.json (CLIP ViT-L/14's text tower)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768,
}  # fmt: skip
SD15_MAX_TOKENS = 77
SAE_SIZE = {"d_in": 1024, "expansion_factor": 64, "k": 32}  # 65,536 latents
QUICK_SAE = {"d_in": 16, "expansion_factor": 4, "k": 4}
BOT_PROMPTS = (("I tried it for 30 days", "a red poster"), ("worst cake ever", "a cake"))


# ----- what every row reports -----------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One measurement. rate is `unit` per second; seconds is per call or optimiser step;
    peak_mb the peak memory while the row ran (see the module docstring)."""

    part: str
    model: str
    task: str
    device: str
    precision: str
    batch: int
    resolution: str
    rate: float
    unit: str
    seconds: float
    peak_mb: float
    note: str = ""
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # 1-min, at the row's end


@dataclass(frozen=True)
class Plan:
    """Sizes for one device kind: batch sweeps, timed repeats and the bot's settings."""

    clip_batches: dict = field(default_factory=dict)  # tower -> batch sizes
    ft_rows: tuple = ()  # (batch, precision, checkpointing)
    sae_batches: tuple = ()
    bot_rows: tuple = ()  # (side px, method, draft K, DDIM steps, prompts, images per prompt)
    warmup: int = 1
    repeats: int = 3
    bot_warmup: int = 1
    bot_repeats: int = 2
    quick: bool = False


BOT_METHODS = (("draft", 1), ("draft", 2), ("ddpo", 1))
CUDA_PLAN = Plan(
    clip_batches={"ViT-B/32": (32, 128, 512), "ViT-L/14": (32, 128, 512)},
    ft_rows=tuple((b, p, c) for b in (32, 64, 128, 256) for p in ("fp32", "bf16")
                  for c in (False, True)),
    sae_batches=(1024, 4096, 16384),
    bot_rows=tuple((s, m, k, 20, 2, 2) for s in (256, 512) for m, k in BOT_METHODS),
)  # fmt: skip
CPU_PLAN = Plan(
    clip_batches={"ViT-B/32": (1, 32), "ViT-L/14": (1, 4)},
    ft_rows=((2, "fp32", False), (4, "fp32", False), (4, "fp32", True), (4, "bf16", False),
             (4, "bf16", True)),
    sae_batches=(256, 1024),
    bot_rows=(*((256, m, k, 2, 1, 2) for m, k in BOT_METHODS), (512, "draft", 1, 2, 1, 1)),
    repeats=3, bot_warmup=0, bot_repeats=1,
)  # fmt: skip
QUICK_PLAN = Plan(  # every code path once, at tiny sizes (the test's budget is seconds)
    clip_batches={"ViT-B/32": (2,), "ViT-L/14": (2,)},
    ft_rows=((2, "bf16", True),),
    sae_batches=(8,),
    bot_rows=((64, "draft", 1, 1, 1, 1), (64, "ddpo", 1, 1, 1, 2)),
    warmup=0, repeats=1, bot_warmup=0, bot_repeats=1, quick=True,
)  # fmt: skip


# ----- measuring ------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of one row: the CUDA allocator's peak, or the process's resident-set
    high-water mark (VmHWM, reset through /proc/self/clear_refs where Linux allows it)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def reset(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux: the high-water mark of the whole process so far

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    """Best (least) seconds of `repeats` calls after `warmup` untimed ones: on a shared
    machine other jobs only ever add time, so the best call is closest to the idle figure."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(fn: Callable[[], object], device: str, warmup: int, repeats: int):
    """(seconds per call, peak MB) of one row, or (None, note) if the device ran out of memory."""
    import torch

    memory = PeakMemory(device)
    memory.reset()
    try:
        seconds = timed(fn, device, warmup, repeats)
    except torch.OutOfMemoryError:
        return None, "out of memory"
    return seconds, memory.peak_mb()


def device_label(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU, {torch.get_num_threads()} threads ({cpu_name()})"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# ----- CLIP ------------------------------------------------------------------------------------
def save_tower(root: Path, config: dict) -> Path:
    """A random CLIP vision tower + projection saved like a Hub checkpoint (no processor
    file: `ClipEncoder` then applies CLIP's standard preprocessing at the tower's size)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).save_pretrained(root)
    return root


def clip_rows(tower: str, device: str, plan: Plan) -> Iterator[Row]:
    """`ClipEncoder.encode` and `.residual_stream(layer=-2, tokens="all")` per dtype and batch."""
    import numpy as np
    from PIL import Image

    from thumbview.embed.clip import ClipEncoder

    config = QUICK_TOWER if plan.quick else CLIP_TOWERS[tower]
    rng = np.random.default_rng(0)
    pool = [Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)) for _ in range(8)]
    tokens = (config["image_size"] // config["patch_size"]) ** 2 + 1
    with tempfile.TemporaryDirectory(prefix="fullsize-clip-") as tmp:
        folder = str(save_tower(Path(tmp), config))
        for dtype in ("float32", "bfloat16"):
            for batch in plan.clip_batches[tower]:
                enc = ClipEncoder(folder, device=device, batch_size=batch, dtype=dtype)
                images = [pool[i % len(pool)] for i in range(batch)]
                model = f"CLIP {tower} image tower ({params_m(enc.network):.0f}M)"
                tasks = {
                    "embed": lambda e=enc, x=images: e.encode(x),
                    f"residual stream, layer -2, all {tokens} tokens": lambda e=enc, x=images: (
                        e.residual_stream(x, layer=-2, tokens="all")
                    ),
                }
                for task, fn in tasks.items():
                    got = measure(fn, device, plan.warmup, plan.repeats)
                    reduced = batch_note(batch, CUDA_PLAN.clip_batches[tower])
                    yield make_row(
                        got,
                        batch,
                        note(plan, device, reduced),
                        device,
                        part="clip",
                        model=model,
                        task=task,
                        precision=dtype,
                        batch=batch,
                        resolution=f"{config['image_size']} px",
                        unit="images/s",
                    )
                del enc, tasks
                gc.collect()


def note(plan: Plan, device: str, reduced: str) -> str:
    """What a row ran at instead of the specification: quick mode, or the CPU's reductions."""
    if plan.quick:
        return "quick: tiny config"
    return reduced if device == "cpu" else ""


def batch_note(batch: int, gpu_batches) -> str:
    return (
        f"batch reduced (GPU plan: {', '.join(map(str, gpu_batches))})"
        if batch < min(gpu_batches)
        else ""
    )


def make_row(got, items: int, row_note: str, device: str, **fields) -> Row:
    """A Row from `measure`'s (seconds, peak MB) for `items` per call; an out-of-memory
    one keeps its place with the note. `fields`: the Row's descriptive fields."""
    seconds, peak = got
    nan, label = float("nan"), device_label(device)
    if seconds is None:
        return Row(device=label, rate=nan, seconds=nan, peak_mb=nan, note=peak, **fields)
    rate = items / seconds
    return Row(device=label, rate=rate, seconds=seconds, peak_mb=peak, note=row_note, **fields)


# ----- finetune --------------------------------------------------------------------------------
def finetune_rows(device: str, plan: Plan) -> Iterator[Row]:
    """Optimiser steps of `finetune.train._run_epoch` (the product's epoch loop) on random
    pixels and title tokens, ViT-B/16 + MiniLM title tower (`--title finetune`)."""
    import torch

    from thumbview.finetune.config import FinetuneConfig
    from thumbview.finetune.encoders import TITLE_MAX_TOKENS
    from thumbview.finetune.network import build_network
    from thumbview.finetune.train import _run_epoch, make_optimizer

    backbone = "test-vit" if plan.quick else "vit-b16"
    config = FinetuneConfig(backbone=backbone, title="finetune", device=device, workers=0)
    net, arch = build_network(config)
    net.to(device)
    opt, sched = make_optimizer(net, config, 10_000)
    size, dev = arch["image_size"], torch.device(device)
    model = (
        f"finetune {backbone} ({params_m(net.image):.0f}M) + MiniLM title tower "
        f"({params_m(net.title):.0f}M)"
    )
    gpu_batches = sorted({b for b, _, _ in CUDA_PLAN.ft_rows})
    for batch, precision, ckpt in plan.ft_rows:
        batches = [random_batch(batch, size, TITLE_MAX_TOKENS)]
        set_checkpointing(net, ckpt)
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

        def step(b=batches, dtype=dtype) -> None:
            _run_epoch(net, b, opt, sched, config, dev, dtype, None, lambda n: None)

        got = measure(step, device, plan.warmup, plan.repeats)
        task = "train step" + (", gradient checkpointing" if ckpt else "")
        yield make_row(
            got,
            batch,
            note(plan, device, batch_note(batch, gpu_batches)),
            device,
            part="finetune",
            model=model,
            task=task,
            precision=precision,
            batch=batch,
            resolution=f"{size} px",
            unit="images/s",
        )
    set_checkpointing(net, False)


def random_batch(batch: int, size: int, max_tokens: int):
    """What `finetune.data.loader` yields: uint8 pixels (B, 3, S, S), title ids ++ mask
    (B, 2L) as float, standardised targets (B,)."""
    import torch

    gen = torch.Generator().manual_seed(batch)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    ids = torch.randint(1000, 20000, (batch, max_tokens), generator=gen)
    title = torch.cat([ids, torch.ones_like(ids)], dim=1).float()  # (B, 2L)
    return pixels, title, torch.randn(batch, generator=gen)


def set_checkpointing(net, on: bool) -> None:
    """transformers' gradient checkpointing on both towers (ViT and MiniLM support it)."""
    for tower in (net.image.model, net.title.model):
        if not getattr(tower, "supports_gradient_checkpointing", False):
            continue
        if hasattr(tower, "activation_checkpointing_enable"):  # transformers 5's name
            enable, disable = (
                tower.activation_checkpointing_enable,
                tower.activation_checkpointing_disable,
            )
        else:
            enable, disable = (
                tower.gradient_checkpointing_enable,
                tower.gradient_checkpointing_disable,
            )
        enable({"use_reentrant": False}) if on else disable()


# ----- SAE -------------------------------------------------------------------------------------
def sae_rows(device: str, plan: Plan) -> Iterator[Row]:
    """`SaeTrainer.step` (forward, AuxK, backward, decoder projection, Adam, renormalising)."""
    import torch

    from thumbview.sae.architectures import build_sae
    from thumbview.sae.config import TrainConfig
    from thumbview.sae.model import SaeConfig
    from thumbview.sae.train import SaeTrainer

    cfg = SaeConfig(arch="topk", **(QUICK_SAE if plan.quick else SAE_SIZE))
    model = f"TopK SAE, d_in {cfg.d_in:,}, {cfg.d_sae:,} latents, k {cfg.k}"
    for batch in plan.sae_batches:
        sae = build_sae(cfg, seed=0).to(device)
        trainer = SaeTrainer(sae, TrainConfig(batch_size=batch, warmup_steps=1))
        x = torch.randn(batch, cfg.d_in, generator=torch.Generator().manual_seed(0)).to(device)
        sae.init_b_dec_(x)
        got = measure(lambda t=trainer, x=x: t.step(x), device, plan.warmup + 1, plan.repeats + 1)
        reduced = batch_note(batch, CUDA_PLAN.sae_batches)
        yield make_row(
            got,
            batch,
            note(plan, device, reduced),
            device,
            part="sae",
            model=model,
            task="train step (no dead latents)",
            precision="fp32",
            batch=batch,
            resolution=f"d_in {cfg.d_in:,}",
            unit="activations/s",
        )
        del sae, trainer, x
        gc.collect()


# ----- thumbnailbot ----------------------------------------------------------------------------
def sd15_pipeline(device: str, quick: bool):
    """StableDiffusionPipeline with SD-1.5's UNet, VAE and text encoder, random weights,
    built on `device`. The tokenizer is the bot's offline byte-level one, padded to SD's
    77 tokens, so the UNet's cross-attention sees the real sequence length."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers import UNet2DConditionModel as UNet
    from transformers import CLIPTextConfig, CLIPTextModel

    from thumbview.bot.tiny import assemble_pipeline, tiny_pipeline, tiny_tokenizer

    if quick:
        return tiny_pipeline().to(device)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = SD15_MAX_TOKENS
    special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    torch.manual_seed(0)
    with torch.device(device):
        unet, vae = UNet(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, **special))
    return assemble_pipeline(unet, vae, text, tokenizer)


def bot_rows(device: str, plan: Plan) -> Iterator[Row]:
    """One optimiser step of `bot train` per row (`train._tune_epoch`: sampling, decoding,
    reward, backward, AdamW on the LoRA), without the per-epoch evaluation and saving."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _bot_fixture import build_fast_predictor
    from thumbview.bot.folder import BotConfig, Prompt
    from thumbview.bot.policy import Policy
    from thumbview.bot.reward import PredictorReward, RewardConfig, TorchReward

    pipe = sd15_pipeline(device, plan.quick)
    parts = {n: params_m(getattr(pipe, n)) for n in ("unet", "vae", "text_encoder")}
    defaults = BotConfig()  # what `thumbview bot train` passes unless told otherwise
    policy = Policy(pipe, defaults.lora_rank)
    optimizer = torch.optim.AdamW(policy.lora_parameters(), lr=defaults.lr)
    prompts = [Prompt(t, p) for t, p in BOT_PROMPTS]
    model = (
        "SD-1.5-sized: UNet {unet:.0f}M + VAE {vae:.0f}M + text {text_encoder:.0f}M, LoRA rank {r}"
    ).format(**parts, r=defaults.lora_rank)
    with tempfile.TemporaryDirectory(prefix="fullsize-bot-") as tmp:
        reward = PredictorReward(build_fast_predictor(Path(tmp)), RewardConfig())
        scorers = {"draft": TorchReward(reward), "ddpo": reward}
        for spec in plan.bot_rows:
            config = bot_config(defaults, *spec)
            step = bot_step(policy, scorers[config.method], prompts, config, optimizer)
            got = measure(step, device, plan.bot_warmup, plan.bot_repeats)
            images = config.batch * config.per_prompt
            yield make_row(
                got,
                images,
                note(plan, device, bot_note(config, defaults)),
                device,
                part="bot",
                model=model,
                task=bot_task(config),
                precision="fp32",
                batch=images,
                resolution=f"{spec[0]}x{spec[0]}",
                unit="images/s",
            )


def bot_config(defaults, side: int, method: str, k: int, steps: int, prompts: int, per: int):
    """The CLI's BotConfig (`thumbview bot train` defaults) at this row's size."""
    from dataclasses import replace

    from thumbview.bot.policy import SampleConfig

    eta = 1.0 if method == "ddpo" else 0.0  # what the CLI passes
    sample = SampleConfig(steps, eta, defaults.sample.guidance, side, side)
    return replace(defaults, method=method, draft_k=k, batch=prompts, per_prompt=per, sample=sample)


def bot_step(policy, scorer, prompts, config, optimizer) -> Callable[[], object]:
    """One call = one epoch of `train_bot` minus its evaluation: the same two functions."""
    from thumbview.bot.rl import PerPromptStatTracker
    from thumbview.bot.train import _epoch_batch, _tune_epoch

    tracker, epochs = PerPromptStatTracker(), iter(range(10**6))

    def step():
        chosen, seeds = _epoch_batch(prompts, config, next(epochs))
        return _tune_epoch(policy, scorer, chosen, seeds, config, optimizer, tracker)

    return step


def bot_task(config) -> str:
    name = f"draft K={config.draft_k}" if config.method == "draft" else "ddpo"
    return f"`bot train` step, {name}, {count(config.sample.steps, 'DDIM step')}"


def count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def bot_note(config, defaults) -> str:
    d, images = defaults, config.batch * config.per_prompt
    parts = []
    if config.sample.steps != d.sample.steps:
        parts.append(f"{count(config.sample.steps, 'DDIM step')} (CLI: {d.sample.steps})")
    if images != d.batch * d.per_prompt:
        parts.append(f"{count(images, 'image')} (CLI: {d.batch * d.per_prompt})")
    if config.sample.height not in (256, 512):
        parts.append(f"{config.sample.height} px (spec: 256 and 512)")
    return ", ".join(parts)


# ----- driver ----------------------------------------------------------------------------------
PARTS: dict[str, Callable[[str, Plan], Iterator[Row]]] = {
    "clip-vit-b32": lambda device, plan: clip_rows("ViT-B/32", device, plan),
    "clip-vit-l14": lambda device, plan: clip_rows("ViT-L/14", device, plan),
    "finetune-vit-b16": finetune_rows,
    "sae-topk": sae_rows,
    "bot-sd15": bot_rows,
}
HEADER = (
    "| part | model | task | device | precision | batch | resolution | rate | "
    "s / call or step | peak memory (MiB) | note |\n"
    "|---|---|---|---|---|---:|---|---:|---:|---:|---|"
)


def plan_for(device: str, quick: bool) -> Plan:
    return QUICK_PLAN if quick else (CUDA_PLAN if device == "cuda" else CPU_PLAN)


def format_row(r: Row) -> str:
    start = (
        f"| {r.part} | {r.model} | {r.task} | {r.device} | {r.precision} | {r.batch} | "
        f"{r.resolution} |"
    )
    if r.rate != r.rate:  # NaN: out of memory or a failed part
        return f"{start} - | - | - | {r.note} |"
    rate = (
        f"{r.rate:,.2f}" if r.rate < 10 else f"{r.rate:,.1f}" if r.rate < 100 else f"{r.rate:,.0f}"
    )
    return f"{start} {rate} {r.unit} | {r.seconds:.3g} | {r.peak_mb:,.0f} | {r.note} |"


def run_part(name: str, device: str, quick: bool) -> Iterator[Row]:
    """The rows of one part, measured in this process."""
    part = PARTS[name]  # an unknown name fails here, before torch is imported
    import torch

    torch.manual_seed(0)
    yield from part(device, plan_for(device, quick))


def run_isolated(name: str, device: str, quick: bool) -> Iterator[Row]:
    """The rows of one part from a child process (its own peak memory), streamed as they
    come; a child that dies (killed for memory, a crash) yields one row saying so."""
    cmd = [sys.executable, __file__, "--worker", name, "--device", device]
    cmd += ["--quick"] if quick else []
    with tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as proc:
            for line in proc.stdout:
                if line.startswith("{"):
                    yield Row(**json.loads(line))
        err.seek(0)
        lines = err.read().strip().splitlines()
    if proc.returncode:
        last = (lines or ["no message"])[-1][:200]
        got = (None, f"rc {proc.returncode}: {last}")
        yield make_row(
            got,
            0,
            "",
            device,
            part=name.split("-")[0],
            model=name,
            task="failed",
            precision="-",
            batch=0,
            resolution="-",
            unit="",
        )


def run(
    device: str = "cpu",
    quick: bool = False,
    only: tuple[str, ...] = (),
    isolate: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[Row]:
    """Every part's rows (the library entry the test calls); `echo` gets each table line.
    `isolate` (default: unless quick) runs each part in its own child process."""
    check_device(device)
    names = [n for n in PARTS if not only or any(n.startswith(o) for o in only)]
    if not names:
        raise SystemExit(f"--only {','.join(only)}: no part matches {', '.join(PARTS)}")
    isolate = not quick if isolate is None else isolate
    rows = []
    for name in names:
        for row in (run_isolated if isolate else run_part)(name, device, quick):
            rows.append(row)
            if echo:
                echo(format_row(row))
    return rows


def check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU on this machine")


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="tiny configs, same code paths (seconds)")
    p.add_argument("--only", default="", help="comma-separated parts: clip, finetune, sae, bot")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:  # child process: one JSON line per row
        for row in run_part(args.worker, args.device, args.quick):
            print(json.dumps(asdict(row)), flush=True)
        return []
    check_device(args.device)
    import torch

    plan = plan_for(args.device, args.quick)
    print(
        f"{device_label(args.device)}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; 1-min load average {os.getloadavg()[0]:.1f}; "
        f"each row: {plan.warmup} warm-up call(s), then the best of {plan.repeats} timed "
        f"(bot: {plan.bot_warmup}, best of {plan.bot_repeats})\n"
    )
    print(HEADER, flush=True)
    only = tuple(o for o in args.only.split(",") if o)
    rows = run(args.device, args.quick, only, echo=lambda line: print(line, flush=True))
    loads = [r.load for r in rows]
    print(f"\n1-min load average at the end of the rows: {min(loads):.1f}-{max(loads):.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
