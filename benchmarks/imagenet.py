"""Throughput of the `imagenet` encoder (EfficientNet-Lite0) against the naive one-image loop.

Run by hand, not in the tests:

    .venv/bin/python benchmarks/imagenet.py --n 256

Rows, all on the same images in the same run, framing included (bars cut, letterboxed to
224 px, scaled to [-1, 1]):
- naive: one image at a time, NCHW float32, the way a first script would do it;
- batched NCHW float32, batched channels_last float32 (what `ImagenetEncoder` runs);
- batched channels_last under bf16 autocast (native on CPUs with AVX512-BF16/AMX);
- ONNX Runtime float32 (the runtime OCR already installs; what `ImagenetEncoder` runs by
  default), when the `onnx` exporter is importable, else the row says it was skipped.
Outputs are compared with the torch float32 path: the largest |difference| of the 1,280 pooled
features and whether the top ImageNet class agrees on every image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from thumbview.data.images import load_image
from thumbview.embed.imagenet import ImagenetEncoder, frame, head_features, onnx_session, to_input

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yt-virality"


def load_images(n: int) -> tuple[list[Image.Image], str]:
    files = sorted((DATA / "images").glob("*.jpg"))[:n] if DATA.is_dir() else []
    if files:
        return [load_image(f) for f in files], f"{len(files)} real thumbnails (120x90) from {DATA}"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(n)]
    return images, f"{n} generated 120x90 images"


def pooled_and_logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    pooled = head_features(net, x).mean(dim=(2, 3))  # (B, 1280)
    return torch.cat([pooled, net._fc(pooled)], dim=1)  # (B, 2280)


def naive(net, images) -> np.ndarray:
    net = net.to(memory_format=torch.contiguous_format)
    rows = []
    with torch.inference_mode():
        for image in images:
            x = torch.from_numpy(frame(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
            rows.append(pooled_and_logits(net, x.contiguous()).numpy())
    return np.concatenate(rows)


def batched(net, images, fmt, bf16: bool = False, batch: int = 32) -> np.ndarray:
    net = net.to(memory_format=fmt)
    rows = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch):
            frames = np.stack([frame(im) for im in images[start : start + batch]])
            x = to_input(frames).contiguous(memory_format=fmt)
            rows.append(pooled_and_logits(net, x).float().numpy())
    return np.concatenate(rows)


def onnx_runner(net) -> Callable[[list[Image.Image]], np.ndarray] | str:
    """The shipped ONNX Runtime path (`imagenet.onnx_session`), exported into a temporary
    cache so the user's is left alone; its two outputs joined as the torch rows are."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as e:
        return f"skipped ({e.name} not installed)"
    session = onnx_session(net, Path(tempfile.mkdtemp()))
    if session is None:
        return "skipped (the export or ONNX Runtime failed: see the log)"

    def run(images, batch: int = 32) -> np.ndarray:
        rows = []
        for start in range(0, len(images), batch):
            x = to_input(np.stack([frame(im) for im in images[start : start + batch]]))
            pooled, logits = session.run(None, {"x": x.contiguous().numpy()})
            rows.append(np.concatenate([pooled, logits], axis=1))
        return np.concatenate(rows)

    return run


def warm_up(net) -> None:
    """One untimed pass per path, so oneDNN's kernel creation is not counted in any row."""
    x = torch.zeros(32, 3, 224, 224)
    with (
        torch.no_grad()
    ):  # not inference_mode: `.to` in it would make the weights inference tensors
        for fmt in (torch.contiguous_format, torch.channels_last):
            for bf16 in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    pooled_and_logits(net.to(memory_format=fmt), x.contiguous(memory_format=fmt))
        pooled_and_logits(net.to(memory_format=torch.contiguous_format), x[:1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    images, source = load_images(args.n)
    net = ImagenetEncoder().network
    runs: list[tuple[str, Callable[[], np.ndarray] | str]] = [
        ("naive loop, NCHW float32, 1 image", lambda: naive(net, images)),
        ("batched 32, NCHW float32", lambda: batched(net, images, torch.contiguous_format)),
        ("batched 32, channels_last float32 (backend torch)", lambda: batched(net, images, torch.channels_last)),
        ("batched 32, channels_last bf16 autocast", lambda: batched(net, images, torch.channels_last, True)),
    ]  # fmt: skip
    warm_up(net)
    ort_run = onnx_runner(net)
    runs.append(
        (
            "ONNX Runtime float32, batched 32 (backend auto: shipped)",
            ort_run if isinstance(ort_run, str) else lambda: ort_run(images),
        )
    )
    net.to(memory_format=torch.channels_last)
    print(f"images: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| path | images/s | x naive | max abs diff vs torch float32 (pooled) | top class agrees |"
    )
    print("|---|---:|---:|---:|---:|")
    results, reference, naive_rate = {}, None, None
    for name, fn in runs:
        if isinstance(fn, str):
            print(f"| {name} | - | - | - | {fn} |")
            continue
        start = time.perf_counter()
        out = fn()
        rate = len(images) / (time.perf_counter() - start)
        results[name] = (out, rate)
        naive_rate = naive_rate or rate
        if "backend torch" in name:
            reference = out
    for name, (out, rate) in results.items():
        diff = np.abs(out[:, :1280] - reference[:, :1280]).max()
        agree = (out[:, 1280:].argmax(1) == reference[:, 1280:].argmax(1)).mean()
        print(f"| {name} | {rate:.1f} | {rate / naive_rate:.2f} | {diff:.2e} | {agree:.1%} |")


if __name__ == "__main__":
    main()
