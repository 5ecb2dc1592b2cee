"""`load_image`: every format and mode a thumbnail arrives in becomes RGB; bad input gives ImageError."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from thumbview.data.images import ImageError, load_image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pixel(img: Image.Image, xy=(0, 0)) -> np.ndarray:
    return np.asarray(img, dtype=int)[xy[1], xy[0]]


@pytest.mark.parametrize(("fmt", "tolerance"), [("JPEG", 6), ("PNG", 0), ("WEBP", 6), ("BMP", 0)])
def test_common_formats_decode_to_rgb(fmt, tolerance):
    data = encode(Image.new("RGB", (32, 24), (200, 40, 10)), fmt)
    img = load_image(data)
    assert img.mode == "RGB" and img.size == (32, 24)
    assert np.abs(pixel(img, (5, 5)) - [200, 40, 10]).max() <= tolerance


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    img = load_image(data)
    assert img.mode == "RGB"
    assert pixel(img).tolist() == [255, 0, 0]


def test_grayscale_becomes_grey_rgb():
    img = load_image(encode(Image.new("L", (8, 8), 128), "PNG"))
    assert img.mode == "RGB" and pixel(img).tolist() == [128, 128, 128]


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK
    img = load_image(data)
    assert img.mode == "RGB"
    r, g, b = pixel(img, (8, 8))
    assert r > 200 and g < 60 and b < 60


def test_palette_transparency_goes_on_white():
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, index 1 green
    img.putpixel((0, 0), 0)
    out = load_image(encode(img, "PNG", transparency=0))
    assert pixel(out, (0, 0)).tolist() == [255, 255, 255]  # transparent black shows white
    assert pixel(out, (4, 4)).tolist() == [0, 255, 0]


def test_rgba_is_composited_on_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[0, 0] = [255, 0, 0, 255]  # opaque red
    arr[0, 1] = [255, 0, 0, 0]  # fully transparent
    arr[0, 2] = [255, 0, 0, 128]  # half red over white
    out = load_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert out.mode == "RGB"
    assert pixel(out, (0, 0)).tolist() == [255, 0, 0]
    assert pixel(out, (1, 0)).tolist() == [255, 255, 255]
    assert np.abs(pixel(out, (2, 0)) - [255, 127, 127]).max() <= 1


def test_16bit_png_keeps_absolute_brightness():
    arr = np.full((4, 4), 128 * 257, dtype=np.uint16)  # flat mid grey
    arr[0, 0], arr[0, 1] = 0, 65535
    src = Image.fromarray(arr)
    assert src.mode == "I;16"
    out = load_image(encode(src, "PNG"))
    assert out.mode == "RGB"
    assert pixel(out, (0, 0)).tolist() == [0, 0, 0]
    assert pixel(out, (1, 0)).tolist() == [255, 255, 255]
    assert pixel(out, (2, 2)).tolist() == [128, 128, 128]
    flat = load_image(encode(Image.fromarray(np.full((4, 4), 128 * 257, np.uint16)), "PNG"))
    assert pixel(flat).tolist() == [128, 128, 128]  # min-max scaling would give black


def test_truncated_jpeg_is_refused():
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", quality=95)
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_random_bytes_are_not_an_image():
    with pytest.raises(ImageError, match="not an image"):
        load_image(np.random.default_rng(1).bytes(2000))
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"")


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size in its IHDR chunk but carries no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header():
    with pytest.raises(ImageError, match="pixels"):
        load_image(png_header(100_000, 100_000))


def test_pixel_cap_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="pixel cap"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_decoding_does_not_touch_global_warning_state():
    """catch_warnings() swaps process-wide filters and races in thread pools: never use it."""

    def forbidden(*args, **kwargs):
        raise AssertionError("warnings.catch_warnings used while decoding")

    before = list(warnings.filters)
    with mock.patch.object(warnings, "catch_warnings", forbidden):
        load_image(encode(Image.new("RGB", (4, 4)), "PNG"))
        with pytest.raises(ImageError):
            load_image(png_header(100_000, 100_000))
    assert warnings.filters == before


def test_missing_file_and_bad_paths(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)  # a folder
    with pytest.raises(ImageError, match="not a valid path"):
        load_image("bad\x00name.jpg")


def test_unsupported_format_is_refused():
    with pytest.raises(ImageError, match="unsupported format TIFF"):
        load_image(encode(Image.new("RGB", (4, 4)), "TIFF"))


def test_path_str_and_bytes_give_the_same_pixels(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(path)
    from_path = np.asarray(load_image(path))
    assert np.array_equal(from_path, np.asarray(load_image(str(path))))
    assert np.array_equal(from_path, np.asarray(load_image(path.read_bytes())))
    assert np.array_equal(from_path, np.asarray(load_image(bytearray(path.read_bytes()))))
    assert np.array_equal(from_path, np.arange(48).reshape(4, 4, 3))


def test_bytes_over_the_byte_cap_are_refused_before_decoding(tmp_path):
    """Issue 24: a valid JPEG followed by junk decodes, so only its size can refuse it; the
    same cap holds for a file and for bytes (a Parquet cell)."""
    data = encode(Image.new("RGB", (8, 8)), "JPEG") + b"\0" * 5000
    assert load_image(data).size == (8, 8)  # under the default cap: fine
    (tmp_path / "padded.jpg").write_bytes(data)
    for source in (data, tmp_path / "padded.jpg"):
        with pytest.raises(ImageError, match=f"{len(data):,} bytes, over the 4,096-byte image cap"):
            load_image(source, max_bytes=4096)
        with mock.patch("thumbview.data.images._decode") as decode:
            with pytest.raises(ImageError):
                load_image(source, max_bytes=4096)
            decode.assert_not_called()


def test_header_problem_screens_without_decoding_pixels():
    """`unpack` screens every cell by its header: junk and cut headers are named, a good
    image passes, and a body cut after the header is left to the full decode."""
    from thumbview.data.images import header_problem

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")  # noise: most of the file is pixel data
    good = buf.getvalue()
    assert header_problem(good) is None
    assert "not an image" in header_problem(b"hello, not an image")
    assert header_problem(good[:40]) is not None  # the header itself is cut
    assert header_problem(good[: len(good) // 2]) is None  # only the pixels are cut...
    with pytest.raises(ImageError, match="truncated"):
        load_image(good[: len(good) // 2])  # ...which the full decode finds
    assert "pixel cap" in header_problem(good, max_pixels=128 * 127)


@pytest.mark.parametrize("kind", ["folder", "fifo", "dev-zero"])
def test_a_path_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, kind):
    """Issue 30: a FIFO made `load_image` (and `predict`) wait forever for a writer."""
    import os
    import threading
    from pathlib import Path

    path = tmp_path / "a.jpg"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo" and hasattr(os, "mkfifo"):
        os.mkfifo(path)
    elif kind == "dev-zero" and Path("/dev/zero").exists():
        path.symlink_to("/dev/zero")
    else:
        pytest.skip(f"no {kind} here")
    raised: list[Exception] = []

    def load():
        try:
            load_image(path)
        except ImageError as e:
            raised.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(10)
    assert raised, "load_image blocked or accepted it"
    assert str(raised[0]) == f"{path}: not a regular file (a folder, FIFO or device)"
