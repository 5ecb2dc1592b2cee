"""Write the legacy artifact folders and their reference outputs with an older thumbview.

Run it with the tree whose folders must keep loading first on the path:

    cd /work/main && git worktree add /work/wt-old d7022a0
    PYTHONPATH=/work/wt-old/src HF_HUB_OFFLINE=1 python tests/data/legacy/make_legacy.py OUT

Every folder is written the way a user writes it, through the command line of that tree
(`python -m thumbview ...`), from a tiny synthetic dataset; the references (predictions,
intervals, SAE reconstructions, generated-image statistics) are then computed in this process
with the same old library. `tests/test_legacy_folders.py` loads the folders with the current
code and compares. Only the fine-tune's `checkpoint/` (resume state, ~0.9 MB) is dropped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger("make_legacy")

INPUTS = "inputs"  # the fixed thumbnails and activation arrays the references are computed on
IMAGES = ("a.jpg", "b.jpg", "c.jpg")
TITLES = ("I tried it for 30 days", "")
BOT_TITLE, BOT_SEEDS = "worst cake ever", (0, 1)
REFERENCE_FILE = "reference.json"
# test_bot_cli.py's tiny sampling; --lr 0.01 (not 3e-4) so that one epoch moves the images
# enough (mean |LoRA - base| ~0.8 of 255) for the test to tell a LoRA that did not load
TINY_BOT = ["--steps", "2", "--size", "64x64", "--guidance", "1.5", "--batch", "1",
            "--per-prompt", "2"]  # fmt: skip


def tensor_digest(folder: str | Path) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) of the safetensors files below
    `folder`: which random tiny base a bot was trained on, independent of file metadata."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        for name, array in sorted(load_file(path).items()):
            h.update(f"{path.relative_to(folder)}:{name}:{array.dtype}:{array.shape}".encode())
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _cli(*args: str | Path) -> None:
    """`python -m thumbview ARGS` with this interpreter and path: the old tree's CLI."""
    cmd = [sys.executable, "-m", "thumbview", *map(str, args)]
    log.info("$ %s", " ".join(cmd[2:]))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _commit(src: Path) -> str:
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=False)  # fmt: skip
    return out.stdout.strip() or "unknown"


def write_folders(out: Path, work: Path) -> None:
    """The model, fine-tuned model, two SAEs and the bot, each through the old CLI."""
    ds = work / "ds"
    _cli("synth", ds, "--n", "120", "--seed", "0")
    (out / INPUTS).mkdir(parents=True)
    with open(ds / "metadata.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row, name in zip(rows, IMAGES, strict=False):  # the synthetic rows 0-2: fixed inputs
        shutil.copy(ds / row["file_name"], out / INPUTS / name)
    _cli("train", ds, "--out", out / "model", "--encoders", "visual,context,title-desc")
    _cli("finetune", ds, "--out", out / "finetuned", "--backbone", "test-cnn", "--epochs", "2",
         "--batch-size", "32", "--workers", "0", "--json")  # fmt: skip
    shutil.rmtree(out / "finetuned" / "checkpoint")
    _cli("sae", "train", ds, "--out", out / "sae-topk", "--features", "visual", "--arch", "topk",
         "--k", "4", "--expansion", "2", "--epochs", "10", "--batch-size", "32")  # fmt: skip
    _write_shards(out / INPUTS / "shards")
    _cli("sae", "train", "--activations", out / INPUTS / "shards", "--out", out / "sae-relu",
         "--arch", "relu-l1", "--expansion", "2", "--epochs", "10", "--batch-size", "32")  # fmt: skip
    prompts = work / "prompts.txt"
    prompts.write_text(f"I tried it for 30 days\tbright red poster\n{BOT_TITLE}\n", "utf-8")
    _cli("bot", "tiny-base", work / "base", "--seed", "0")
    _cli("bot", "train", "--base", work / "base", "--model", out / "model", "--prompts", prompts,
         "--out", out / "bot", "--epochs", "1", "--lr", "0.01", *TINY_BOT)  # fmt: skip
    _save_topk_inputs(ds, out / INPUTS / "sae-topk-activations.npy")


def _write_shards(folder: Path) -> None:
    """200 x 8 Gaussian activations in two shards (`sae.shards.write_shards`)."""
    from thumbview.sae.shards import write_shards

    rng = np.random.default_rng(0)
    write_shards([rng.standard_normal((200, 8)).astype(np.float32)], folder, shard_rows=128)


def _save_topk_inputs(ds: Path, path: Path) -> None:
    """The visual features `sae train --features visual` read (from the same feature cache)."""
    from thumbview.data.dataset import load_dataset
    from thumbview.embed.cache import embed
    from thumbview.embed.registry import get_encoder

    features, _ = embed(load_dataset(ds), get_encoder("visual"))  # (N, 26)
    np.save(path, features)


def _prediction_rows(predictions) -> list[dict]:
    return [
        {k: getattr(p, k) for k in ("title", "log10", "views", "low", "high", "coverage")}
        for p in predictions
    ]


def model_reference(model_dir: Path, inputs: Path) -> dict:
    """What a model folder gives on the fixed inputs: predict_images, blocks, intervals."""
    from thumbview.data.images import load_image
    from thumbview.inference import LoadedPredictor

    loaded = LoadedPredictor.load(model_dir)
    images = [load_image(inputs / name) for name in IMAGES]
    ref = {"predictions": _prediction_rows(loaded.predict_images(images, IMAGES, TITLES))}
    blocks = loaded.blocks(images, [TITLES[0]] * len(images))  # {encoder: (3, D)}
    lo, hi = loaded.intervals(blocks)
    ref.update(predict=loaded.predict(blocks).tolist(), low=lo.tolist(), high=hi.tolist())
    if loaded.training_range is not None:
        ref["range_warning"] = loaded.training_range.warning(blocks)
    if (pairwise := loaded.pairwise) is not None:
        ref["pairwise_sigma"] = float(pairwise.calibration_.sigma)
        ref["fold_predictions"] = np.asarray(pairwise.fold_predictions(blocks)).tolist()
    return ref


def sae_reference(sae_dir: Path, activations: np.ndarray) -> dict:
    """Latents and reconstructions of the first 16 activation rows (`load_sae`)."""
    import torch

    from thumbview.sae.train import load_sae

    sae = load_sae(sae_dir)
    x = torch.from_numpy(np.ascontiguousarray(activations[:16])).float()  # (16, d_in)
    with torch.no_grad():
        z = sae.encode(x)  # (16, d_sae)
        recon = sae.decode(z)  # (16, d_in)
    return {"d_sae": sae.cfg.d_sae, "latents": z.tolist(), "reconstruction": recon.tolist()}


def bot_reference(bot_dir: Path, base: Path, images_file: Path) -> dict:
    """The bot's deterministic samples with and without its LoRA (saved, uint8, as
    `images_file`: (2 = LoRA/base, seeds, H, W, 3)) and the ranked candidates `generate`
    returns for a fixed title and seed."""
    from thumbview.bot.generate import LoadedBot, generate

    bot = LoadedBot.load(bot_dir)
    pixels = np.stack([
        np.stack([np.asarray(img) for img in bot.images([BOT_TITLE] * 2, BOT_SEEDS, lora=lora)])
        for lora in (True, False)
    ])  # fmt: skip
    np.save(images_file, pixels)
    result = generate(bot, BOT_TITLE, n=2, seed=0)
    return {
        "base_digest": tensor_digest(base),
        "lora_effect": float(np.abs(pixels[0].astype(float) - pixels[1]).mean()),
        "candidates": [
            {k: getattr(c, k) for k in ("seed", "log10", "views", "low", "high", "p_best")}
            for c in result.candidates
        ],
    }


def cli_predict_json(model_dir: Path, inputs: Path) -> list[dict]:
    """`thumbview predict MODEL A B C --json` of the old CLI, image names made relative."""
    cmd = [sys.executable, "-m", "thumbview", "predict", str(model_dir),
           *(str(inputs / n) for n in IMAGES), "--json"]  # fmt: skip
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return [{**row, "image": Path(row["image"]).name} for row in rows]


def write_references(out: Path, work: Path) -> None:
    import thumbview

    inputs = out / INPUTS
    shards = np.concatenate([np.load(p) for p in sorted((inputs / "shards").glob("*.npy"))])
    reference = {
        "written_by": _commit(Path(thumbview.__file__).parent),
        "model": model_reference(out / "model", inputs),
        "finetuned": model_reference(out / "finetuned", inputs),
        "cli_predict": cli_predict_json(out / "model", inputs),
        "sae-topk": sae_reference(out / "sae-topk", np.load(inputs / "sae-topk-activations.npy")),
        "sae-relu": sae_reference(out / "sae-relu", shards),
        "bot": bot_reference(out / "bot", work / "base", inputs / "bot-images.npy"),
    }
    (out / REFERENCE_FILE).write_text(json.dumps(reference, indent=1) + "\n", encoding="utf-8")


def main(out: Path) -> None:
    if out.exists():
        raise SystemExit(f"{out} exists; give a new folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # a fresh feature cache, shared
        os.environ.pop("THUMBVIEW_CACHE_DIR", None)
        write_folders(out, work)
        write_references(out, work)
    log.info("wrote %s", out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        raise SystemExit("usage: PYTHONPATH=<old tree>/src python make_legacy.py OUT")
    main(Path(sys.argv[1]))
