"""Safe image decoding: every image thumbview reads goes through `load_image`.

Thumbnails come from the internet and from users, so decoding must never crash the
pipeline or exhaust memory: truncated files, decompression bombs, CMYK, palette,
alpha and animated GIFs all arrive in practice.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from thumbview.schema import NOT_REGULAR, open_regular

# 50 megapixels is far above any YouTube thumbnail (maxres is 1280x720 = 0.9 MP) and
# far below what would exhaust memory when decoded (50 MP x 4 bytes = 200 MB).
DEFAULT_MAX_PIXELS = 50_000_000
# 16x YouTube's own 2 MB limit on a custom thumbnail. The pixel cap alone does not bound
# the bytes: a valid JPEG may carry any amount of trailing data, which a file read whole
# (digests, Parquet cells) would bring into memory. Image files and shard cells share it.
DEFAULT_MAX_BYTES = 32 * 2**20

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "MPO")

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# What Pillow's plugins raise on malformed input besides OSError; hostile files reach all of them.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


class ImageError(ValueError):
    """An image that cannot be used; the message says why in words a person understands."""


def over_byte_cap(size: int, max_bytes: int) -> str | None:
    """Why an image of `size` bytes is refused ("... over the ...-byte image cap"), or None."""
    if size <= max_bytes:
        return None
    return f"{size:,} bytes, over the {max_bytes:,}-byte image cap"


def load_image(
    source: str | Path | bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Decode `source` (a path or raw bytes) to an RGB image, or raise `ImageError`.

    The pixel count is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing; the byte size (`max_bytes`) from the file's size or
    the buffer's length. GIFs and other animations give their first frame.
    Transparent images are composited on white, the way YouTube shows them. `name` is what
    error messages call the image (default: the path, or "upload" for bytes).
    """
    in_memory = isinstance(source, bytes | bytearray | memoryview)
    name = name or ("upload" if in_memory else str(source))
    try:
        fp = io.BytesIO(source) if in_memory else open_regular(source)  # never waits on a FIFO
    except FileNotFoundError as e:
        raise ImageError(f"{name}: file not found") from e
    except IsADirectoryError as e:
        raise ImageError(f"{name}: {NOT_REGULAR}") from e
    except OSError as e:
        raise ImageError(f"{name}: cannot open ({e.strerror or e})") from e
    except (ValueError, TypeError) as e:  # embedded NUL byte, not a path at all
        raise ImageError(f"{name}: not a valid path ({e})") from e
    with fp:
        size = memoryview(source).nbytes if in_memory else os.fstat(fp.fileno()).st_size
        if too_large := over_byte_cap(size, max_bytes):
            raise ImageError(f"{name}: {too_large}")
        return _decode(fp, name, max_pixels)


def _decode(fp, name: str, max_pixels: int) -> Image.Image:
    img = _open_checked(fp, name, max_pixels)
    try:
        img.seek(0)  # first frame of an animation
        img.load()
    except _DECODE_ERRORS as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from e
    return to_rgb(img)


def _open_checked(fp, name: str, max_pixels: int) -> Image.Image:
    """The image opened from its header only (format and size checked, no pixel decoded)."""
    # No warnings.catch_warnings() here: it swaps process-wide state and is not thread-safe,
    # and images are decoded from thread pools. Pillow raises DecompressionBombError itself
    # above 2 x MAX_IMAGE_PIXELS; our own cap below handles everything smaller.
    try:
        img = Image.open(fp)
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (unrecognised format)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: too many pixels (decompression bomb guard: {e})") from e
    except _DECODE_ERRORS as e:
        raise ImageError(f"{name}: unreadable image ({e})") from e
    if img.format not in SUPPORTED_FORMATS:
        raise ImageError(f"{name}: unsupported format {img.format}")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} exceeds the {max_pixels:,} pixel cap")
    if width == 0 or height == 0:
        raise ImageError(f"{name}: empty image")
    return img


def header_problem(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why bytes are not a usable image judged from the header alone (None when they may be).

    Microseconds per image, so a whole shard can be screened (`unpack`) where a full decode
    of every image would take most of an hour per million; a truncated body is found only by
    a full decode (`load_image`, the loader's verification)."""
    try:
        _open_checked(io.BytesIO(data), "cell", max_pixels)
    except ImageError as e:
        return str(e).removeprefix("cell: ")
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (L, P, CMYK, RGBA, LA, I;16, ...) to RGB; alpha goes onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit grayscale: map the fixed 0..65535 range onto 0..255 (not min-max, which
        # would turn a flat mid-grey into black). Float images are taken as 0..255 already.
        arr = np.asarray(img, dtype=np.float64)  # (H, W)
        scale = 1.0 if img.mode == "F" else 65535.0 / 255.0
        scaled = np.clip(np.rint(arr / scale), 0, 255)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


# A bar is a border line of near-black, near-uniform pixels (YouTube pads a 16:9 video's 4:3
# thumbnail with them). JPEG noise in real bars stays well under these bounds.
BAR_MEAN = 24.0
BAR_STD = 10.0
MIN_CONTENT = 1 / 3  # never cut a picture below a third of its side (a dark photo is not a bar)


def _bar_lines(gray: np.ndarray) -> tuple[int, int]:
    """How many leading and trailing rows of `gray` (H, W) are bars."""
    is_bar = (gray.mean(axis=1) < BAR_MEAN) & (gray.std(axis=1) < BAR_STD)  # (H,)
    lead = int(np.argmin(is_bar)) if not is_bar.all() else len(is_bar)
    trail = int(np.argmin(is_bar[::-1])) if not is_bar.all() else len(is_bar)
    return lead, trail


def bar_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of `rgb` (H, W, 3) inside its letterbox/pillarbox bars."""
    gray = rgb.astype(np.float32).mean(axis=2)  # (H, W)
    h, w = gray.shape
    top, bottom = _bar_lines(gray)
    left, right = _bar_lines(gray.T)
    if h - top - bottom < max(1, h * MIN_CONTENT):
        top = bottom = 0
    if w - left - right < max(1, w * MIN_CONTENT):
        left = right = 0
    return left, top, w - right, h - bottom


def strip_bars(img: Image.Image) -> Image.Image:
    """`img` without the uniform dark bars around it, so the picture, not the file's frame, is
    what models see: a 16:9 thumbnail and the same picture letterboxed to 4:3 come out alike."""
    box = bar_box(np.asarray(img.convert("RGB")))
    return img if box == (0, 0, img.width, img.height) else img.crop(box)


def fit_frame(rgb: np.ndarray, size: tuple[int, int], fit: str = "crop") -> Image.Image:
    """`rgb` (H, W, 3) as a `size` (w, h) image: centre-cropped to the aspect, or letterboxed."""
    img = Image.fromarray(rgb)
    w, h = size
    scale = (max if fit == "crop" else min)(w / img.width, h / img.height)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(new, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(img, ((w - new[0]) // 2, (h - new[1]) // 2))
    return canvas
