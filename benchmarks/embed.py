"""Throughput of the embedding encoders, and of ClipEncoder against the naive transformers loop.

Run by hand, not in the tests:

    .venv/bin/python benchmarks/embed.py --n 256
    .venv/bin/python benchmarks/embed.py --visual-only --text-sizes 320 240 192 160 120 \
        --sheet disagreements.png      # where text is read, against version 1's reading

CLIP uses the ViT-B/32 architecture (`CLIPVisionConfig()` defaults) with random weights,
built here: the compute is the same as the real checkpoint and nothing is downloaded.
Images are the real thumbnails from ../shared/data/yt-virality when present, else
generated ones. Prints a markdown table; peak RSS is the process maximum so far.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from thumbview.data.images import load_image
from thumbview.embed.clip import ClipEncoder

try:  # transformers 5 without torchvision: the PIL (slow, reference) processor
    from transformers import CLIPImageProcessorPil
except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
    from transformers import CLIPImageProcessor as CLIPImageProcessorPil

NAIVE = "clip naive loop float32 (processor + forward per image)"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "yt-virality"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def load_inputs(n: int) -> tuple[list[Image.Image], list[str], str]:
    """N thumbnails + titles from the real dataset, or generated ones when it is absent."""
    if (DATA / "metadata.csv").exists():
        with open(DATA / "metadata.csv", newline="", encoding="utf-8") as f:
            rows = [r for _, r in zip(range(n), csv.DictReader(f), strict=False)]
        images = [load_image(DATA / r["file_name"]) for r in rows]
        return images, [r["title"] for r in rows], f"real thumbnails from {DATA}"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(n)]
    titles = [f"I tried {i} things for 24 hours and this happened" for i in range(n)]
    return images, titles, "generated 120x90 images"


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], np.ndarray]], repeats: int) -> dict[str, tuple]:
    """name -> (output, best seconds). Runs alternate, so background load hits all alike."""
    best: dict[str, tuple] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            out, seconds = timed(fn)
            if name not in best or seconds < best[name][1]:
                best[name] = (out, seconds)
    return best


def build_vit_b32(root: Path) -> Path:
    """A random ViT-B/32 CLIP vision tower + default processor, saved like a Hub checkpoint."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig()).save_pretrained(root)
    CLIPImageProcessorPil().save_pretrained(root)
    return root


def naive_clip(model_dir: Path) -> Callable[[list[Image.Image]], np.ndarray]:
    """What a first script does: processor + forward, one image at a time, no batching."""
    from transformers import CLIPVisionModelWithProjection

    processor = CLIPImageProcessorPil.from_pretrained(model_dir)
    model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval()

    @torch.no_grad()
    def loop(images: list[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            embeds = model(**processor(image, return_tensors="pt")).image_embeds  # (1, 512)
            rows.append(torch.nn.functional.normalize(embeds, dim=-1)[0].numpy())
        return np.stack(rows)

    return loop


def clip_runs(model_dir: Path, images, batch_size: int) -> dict[str, Callable[[], np.ndarray]]:
    """The timed CLIP variants, each loaded and warmed up at its real batch shape."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        encoder = ClipEncoder(str(model_dir), batch_size=batch_size, dtype=dtype)
        encoder.encode(images[:batch_size])
        runs[f"clip ViT-B/32 {dtype} (batch {batch_size})"] = lambda e=encoder: e.encode(images)
    runs["clip bfloat16 residual stream layer -2, all tokens"] = lambda e=encoder: (
        e.residual_stream(images, layer=-2, tokens="all")
    )
    naive = naive_clip(model_dir)
    naive(images[:1])  # warm-up
    runs[NAIVE] = lambda: naive(images)
    return runs


def bench_clip(model_dir: Path, images, batch_size: int, repeats: int) -> tuple[list, list[str]]:
    """Table rows for ClipEncoder (float32, bfloat16, residual stream) and the naive loop."""
    best = interleaved(clip_runs(model_dir, images, batch_size), repeats)
    rss = peak_rss_mb()
    rows = [(name, len(images), seconds, rss) for name, (_, seconds) in best.items()]
    naive, naive_s = best.pop(NAIVE)
    fp32, bf16 = (out for name, (out, _) in best.items() if "residual" not in name)
    cosine = (bf16 * naive).sum(1).min()
    notes = [
        f"max |clip float32 - naive| = {np.abs(fp32 - naive).max():.1e}; "
        f"min cosine(clip bfloat16, naive) = {cosine:.5f}"
    ]
    for name, (_, seconds) in best.items():
        notes.append(f"{name}: {naive_s / seconds:.2f}x the naive loop (goal >= 3x)")
    return rows, notes


def bench_optional(label: str, factory: Callable[[], object], inputs) -> tuple | None:
    """Row for an encoder that may not exist yet: skipped with a note instead of failing."""
    try:
        encoder = factory()
        encoder.encode(inputs[:2])  # load models + warm-up
    except (ImportError, AttributeError, ValueError) as e:
        print(f"skipping {label}: {type(e).__name__}: {e}")
        return None
    _, seconds = timed(lambda: encoder.encode(inputs))
    return (label, len(inputs), seconds, peak_rss_mb())


def bench_visual(images, repeats: int) -> tuple[list, list[str]]:
    """The visual encoder's fast profile against version 1's settings ("reference").

    Both use the same threads, warmed up, interleaved; the ratio is the speed-up, and the
    notes say how far the face/text columns moved (the colour/edge columns are identical).
    """
    from thumbview.embed.visual import FEATURE_NAMES, VisualEncoder

    encoders = {p: VisualEncoder(profile=p) for p in ("reference", "fast")}
    for enc in encoders.values():
        enc.encode(images[:2])
    best = interleaved(
        {f"visual {p}": (lambda e=e: e.encode(images)) for p, e in encoders.items()}, repeats
    )
    rss = peak_rss_mb()
    rows = [(name, len(images), seconds, rss) for name, (_, seconds) in best.items()]
    (ref, ref_s), (fast, fast_s) = best["visual reference"], best["visual fast"]
    notes = [f"visual fast: {ref_s / fast_s:.2f}x the reference (goal >= 5x)"]
    for col in ("face count", "text boxes", "text area (fraction)", "text length (characters)"):
        j = FEATURE_NAMES.index(col)
        same = np.isclose(ref[:, j], fast[:, j], atol=0.02 if "area" in col else 0).mean()
        notes.append(f"{col}: equal to the reference on {100 * same:.0f}% of images")
    other = [j for j, n in enumerate(FEATURE_NAMES) if "face" not in n and not n.startswith("text")]
    notes.append(
        f"max |difference| in the other columns: {np.abs(ref[:, other] - fast[:, other]).max():.1e}"
    )
    return rows, notes


def bench_text_sizes(images, sizes: list[int], sheet: Path | None) -> None:
    """Read text at smaller sizes than the working size: cost per image against agreement
    with version 1's reading (the "reference" profile, which upscales). With `sheet`, a
    contact sheet of the images where the smallest size and the reference disagree about
    whether there is any text, to judge by eye which one is right."""
    from thumbview.embed.visual import RapidTextReader, resize_to_working, text_stats

    rgbs = [np.asarray(img.convert("RGB")) for img in images]
    reference, reader = RapidTextReader("reference"), RapidTextReader("fast")
    ref = np.stack(
        [text_stats(resize_to_working(x), reference) for x in rgbs]
    )  # area, chars, boxes
    print(
        "\n| text read at (longest side) | ms/image, 1 thread | boxes equal | area within 0.02 "
        "| length equal | any text equal |\n|---:|---:|---:|---:|---:|---:|"
    )
    for size in sizes:
        t0 = time.perf_counter()
        got = np.stack([text_stats(resize_to_working(x, size), reader) for x in rgbs])
        ms = (time.perf_counter() - t0) / len(rgbs) * 1000
        same = [
            np.isclose(ref[:, j], got[:, j], atol=0.02 if j == 0 else 0).mean() for j in (2, 0, 1)
        ]
        anytext = ((ref[:, 2] > 0) == (got[:, 2] > 0)).mean()
        print(
            f"| {size} | {ms:.1f} | "
            + " | ".join(f"{100 * v:.0f}%" for v in [*same, anytext])
            + " |"
        )
    if sheet is not None:
        _contact_sheet(
            [x for x, r, g in zip(rgbs, ref, got, strict=True) if (r[2] > 0) != (g[2] > 0)], sheet
        )


def _contact_sheet(rgbs: list[np.ndarray], path: Path, cols: int = 6, tile=(240, 180)) -> None:
    sheet = Image.new("RGB", (tile[0] * cols, tile[1] * max(1, -(-len(rgbs) // cols))), "gray")
    for k, x in enumerate(rgbs):
        sheet.paste(Image.fromarray(x).resize(tile), ((k % cols) * tile[0], (k // cols) * tile[1]))
    sheet.save(path)
    print(f"{len(rgbs)} disagreements about any text: {path}")


def dataset_images(folder: Path, n: int) -> list[Image.Image]:
    """The first n images of any thumbview dataset folder (e.g. `thumbview synth` output)."""
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f), strict=False)]
    return [load_image(folder / r["file_name"]) for r in rows]


def other_encoders(images, titles) -> list[tuple]:
    """visual (with faces, else without when OpenCV lacks its cascades) and title rows."""
    from importlib import import_module

    def make(module: str, cls: str, **kwargs) -> Callable[[], object]:
        return lambda: getattr(import_module(module), cls)(**kwargs)

    visual = bench_optional("visual", make("thumbview.embed.visual", "VisualEncoder"), images)
    if visual is None:
        factory = make("thumbview.embed.visual", "VisualEncoder", faces=False)
        visual = bench_optional("visual (faces=False)", factory, images)
    title = bench_optional("title (texts)", make("thumbview.embed.title", "TitleEncoder"), titles)
    return [row for row in (visual, title) if row is not None]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images for the CLIP rows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=1, help="best of this many interleaved CLIP runs"
    )
    parser.add_argument(
        "--visual-n", type=int, default=64, help="images for the visual row (OCR is slow)"
    )
    parser.add_argument(
        "--visual-only",
        type=Path,
        nargs="*",
        default=None,
        help="only the visual fast-vs-reference rows, on the real thumbnails and these dataset folders",
    )
    parser.add_argument(
        "--text-sizes",
        type=int,
        nargs="*",
        default=None,
        help="with --visual-only: also read text at these sizes (see bench_text_sizes)",
    )
    parser.add_argument("--sheet", type=Path, help="with --text-sizes: contact sheet PNG")
    parser.add_argument("--resize", help="with --visual-only DIR: also its images resized to WxH")
    args = parser.parse_args(argv)
    images, titles, source = load_inputs(args.n)
    if args.text_sizes:
        bench_text_sizes(images[: args.visual_n], args.text_sizes, args.sheet)
    if args.visual_only is not None:
        sets = [(source, images[: args.visual_n])]
        sets += [(str(d), dataset_images(d, args.visual_n)) for d in args.visual_only]
        if args.resize:  # e.g. the 1280x720 thumbnails `collect` fetches: decode/resize costs too
            size = tuple(int(v) for v in args.resize.split("x"))
            sets += [(f"{label} resized", [im.resize(size, Image.BICUBIC) for im in imgs])
                     for label, imgs in sets[1:]]  # fmt: skip
        for label, imgs in sets:
            rows, notes = bench_visual(imgs, args.repeats)
            print(f"\n{label} ({imgs[0].size[0]}x{imgs[0].size[1]})")
            print_table(rows, notes)
        return
    print(f"inputs: {source}; torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows, notes = bench_clip(build_vit_b32(Path(tmp)), images, args.batch_size, args.repeats)
    rows += other_encoders(images[: args.visual_n], titles)
    print_table(rows, notes)


def print_table(rows: list[tuple], notes: list[str]) -> None:
    print(
        "\n| encoder | items | seconds | items/s | peak RSS so far (MB) |\n|---|---:|---:|---:|---:|"
    )
    for label, n, seconds, rss in rows:
        print(f"| {label} | {n} | {seconds:.2f} | {n / seconds:.1f} | {rss:.0f} |")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main(sys.argv[1:])
