"""Visual descriptors: each column moves the way its name says, and detectors find what is planted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from thumbview.embed.visual import (
    FEATURE_NAMES,
    N_FEATURES,
    VisualEncoder,
    VisualInputError,
    VisualModelError,
    describe,
    haar_cascade_path,
)

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _haar_available() -> bool:
    try:
        haar_cascade_path()
    except VisualModelError:
        return False
    return True


needs_haar = pytest.mark.skipif(
    not _haar_available(), reason="this OpenCV ships no Haar cascades (OpenCV >= 5)"
)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (160, 90)) -> np.ndarray:
    return np.asarray(Image.new("RGB", size, rgb))


def checkerboard(size: int = 128, square: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    board = (((yy // square) + (xx // square)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def text_image(text: str = "BIG SALE") -> Image.Image:
    img = Image.new("RGB", (320, 180), (255, 255, 255))
    ImageDraw.Draw(img).text((20, 60), text, fill=(0, 0, 0), font=ImageFont.load_default(size=40))
    return img


def drawn_face(size: int = 180) -> Image.Image:
    """A flat cartoon face: dark brows and eyes over bright cheeks, which is what Haar keys on."""
    img = Image.new("RGB", (size * 4 // 3, size), (60, 90, 140))
    d = ImageDraw.Draw(img)
    cx, cy, fw, fh = size * 2 // 3, size // 2, size * 0.30, size * 0.40
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=(225, 180, 150))
    ey = cy - fh * 0.2
    for x in (cx - fw * 0.42, cx + fw * 0.42):
        d.rectangle([x - fw * 0.3, ey - fh * 0.30, x + fw * 0.3, ey - fh * 0.22], fill=(70, 45, 30))
        d.ellipse([x - fw * 0.22, ey - fh * 0.09, x + fw * 0.22, ey + fh * 0.09], fill=(245,) * 3)
        d.ellipse([x - fw * 0.1, ey - fh * 0.09, x + fw * 0.1, ey + fh * 0.09], fill=(30, 20, 15))
    nose = [(cx, ey), (cx - fw * 0.12, cy + fh * 0.2), (cx + fw * 0.12, cy + fh * 0.2)]
    d.polygon(nose, fill=(205, 155, 125))
    d.ellipse([cx - fw * 0.4, cy + fh * 0.38, cx + fw * 0.4, cy + fh * 0.52], fill=(150, 60, 60))
    return img.filter(ImageFilter.GaussianBlur(1.5))


@pytest.fixture(scope="module")
def ocr_encoder() -> VisualEncoder:
    return VisualEncoder(ocr=True, faces=False)


def test_feature_names_match_dim():
    enc = VisualEncoder(ocr=False, faces=False)
    assert len(FEATURE_NAMES) == N_FEATURES == enc.dim == len(enc.feature_names())
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    assert describe(solid((10, 20, 30))).shape == (N_FEATURES,)
    assert describe(solid((10, 20, 30))).dtype == np.float32


def test_bright_beats_dark():
    bright, dark = describe(solid((230, 230, 230))), describe(solid((25, 25, 25)))
    assert bright[COL["brightness"]] > 0.85 > 0.15 > dark[COL["brightness"]]
    assert bright[COL["near-white fraction"]] == pytest.approx(1.0)
    assert dark[COL["near-black fraction"]] == pytest.approx(1.0)


def test_red_is_colourful_and_red():
    red, grey = describe(solid((220, 20, 20))), describe(solid((128, 128, 128)))
    assert red[COL["colorfulness"]] > 50 > 1 > grey[COL["colorfulness"]]
    assert red[COL["hue: red"]] > 0.8
    assert grey[COL["hue: red"]] == 0.0
    assert red[COL["saturation"]] > grey[COL["saturation"]]
    assert red[COL["warmth (red minus blue)"]] > 0.5


@pytest.mark.parametrize(
    ("rgb", "bin_name"),
    [((0, 200, 0), "hue: green"), ((0, 0, 220), "hue: blue"), ((240, 220, 0), "hue: yellow")],
)
def test_hue_bins_name_the_colour(rgb, bin_name):
    out = describe(solid(rgb))
    hues = {n: out[i] for n, i in COL.items() if n.startswith("hue: ")}
    assert max(hues, key=hues.get) == bin_name


def test_blur_lowers_sharpness():
    sharp = checkerboard()
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(4)))
    s, b = describe(sharp), describe(blurred)
    assert (
        s[COL["sharpness (log Laplacian variance)"]]
        > b[COL["sharpness (log Laplacian variance)"]] + 2
    )
    assert s[COL["edge density"]] > b[COL["edge density"]]
    assert describe(solid((90, 90, 90)))[COL["edge density"]] == 0.0


def test_bright_centre_stands_out():
    img = np.full((90, 160, 3), 20, dtype=np.uint8)
    img[22:68, 40:120] = 240  # the middle half in each direction
    assert describe(img)[COL["centre minus border brightness"]] > 0.7
    assert describe(255 - img)[COL["centre minus border brightness"]] < -0.7


def test_descriptors_comparable_across_sizes():
    img = Image.fromarray(checkerboard(256, 32)).convert("RGB")
    small, big = describe(np.asarray(img.resize((64, 64)))), describe(np.asarray(img))
    for name in ("brightness", "contrast", "edge density"):
        assert small[COL[name]] == pytest.approx(big[COL[name]], abs=0.05)


def test_big_text_is_read(ocr_encoder):
    out = ocr_encoder.encode([text_image("BIG SALE"), Image.new("RGB", (320, 180), "white")])
    assert out[0, COL["text area (fraction)"]] > 0.02
    assert out[0, COL["text length (characters)"]] >= 4
    assert out[0, COL["text boxes"]] >= 1
    assert out[1, COL["text area (fraction)"]] == 0.0
    assert out[1, COL["text length (characters)"]] == 0.0


def test_models_load_lazily():
    enc = VisualEncoder(ocr=True, faces=_haar_available())
    assert getattr(enc._local, "text", None) is None and getattr(enc._local, "faces", None) is None


def test_parallel_workers_match_one_worker():
    images = [Image.new("RGB", (160, 90), (i * 40, 200 - i * 30, 90)) for i in range(5)]
    one = VisualEncoder(ocr=True, faces=_haar_available(), workers=1).encode(images)
    two = VisualEncoder(ocr=True, faces=_haar_available(), workers=2).encode(images)
    np.testing.assert_array_equal(one, two)


@needs_haar
def test_faces_found_only_where_drawn():
    enc = VisualEncoder(ocr=False, faces=True)
    face, blank = enc.encode([drawn_face(), Image.new("RGB", (240, 180), (60, 90, 140))])
    assert face[COL["face count"]] == 1
    assert 0.2 < face[COL["largest face area (fraction)"]] < 0.8
    assert blank[COL["face count"]] == 0
    assert blank[COL["largest face area (fraction)"]] == 0


@pytest.mark.skipif(_haar_available(), reason="only checks the message when cascades are missing")
def test_missing_cascade_says_how_to_fix():
    with pytest.raises(VisualModelError, match="faces=False"):
        VisualEncoder(faces=True)


def test_flags_zero_their_columns_and_change_spec(ocr_encoder):
    off = VisualEncoder(ocr=False, faces=False)
    out = off.encode([text_image()])[0]
    for name in ("face count", "largest face area (fraction)", "text area (fraction)"):
        assert out[COL[name]] == 0.0
    assert off.spec()["ocr"] is False and off.spec()["faces"] is False
    assert ocr_encoder.spec()["ocr"] is True and ocr_encoder.spec()["rapidocr"] == "1.4.4"
    assert off.spec()["working_size"] == 320 and "opencv" in off.spec()
    assert off.spec_hash() != ocr_encoder.spec_hash()


def test_deterministic(ocr_encoder):
    images = [text_image(), Image.fromarray(checkerboard())]
    first, second = ocr_encoder.encode(images), ocr_encoder.encode(images)
    np.testing.assert_array_equal(first, second)


def test_any_mode_and_size(ocr_encoder):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    images = [
        noise.convert("L"),
        noise.convert("RGBA"),
        noise.convert("P"),
        Image.new("RGB", (1, 1), (5, 200, 9)),
        noise.resize((1200, 20)),
        noise.resize((640, 480)),
    ]
    out = ocr_encoder.encode(images)
    assert out.shape == (len(images), N_FEATURES) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out[4, COL["picture aspect ratio (width / height, bars removed)"]] == pytest.approx(60.0)
    gray = np.asarray(noise.convert("L"))
    np.testing.assert_array_equal(
        describe(gray), describe(np.asarray(noise.convert("L").convert("RGB")))
    )


def test_encode_batch_shape():
    enc = VisualEncoder(ocr=False, faces=False)
    out = enc.encode([Image.fromarray(checkerboard())] * 3)
    assert out.shape == (3, N_FEATURES) and out.dtype == np.float32
    assert enc.encode([]).shape == (0, N_FEATURES)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((0, 10, 3), dtype=np.uint8),
        [[1, 2], [3, 4]],
    ],
)
def test_describe_rejects_bad_arrays(bad):
    with pytest.raises(VisualInputError):
        describe(bad)


def test_encode_rejects_non_images():
    with pytest.raises(VisualInputError, match="input 1"):
        VisualEncoder(ocr=False, faces=False).encode([Image.new("RGB", (4, 4)), "a title"])


def test_registry_builds_visual():
    from thumbview.embed.registry import EncoderOptionError, get_encoder

    enc = get_encoder("visual", ocr=False, faces=False)
    assert isinstance(enc, VisualEncoder) and enc.spec()["ocr"] is False
    with pytest.raises(EncoderOptionError, match="visual"):
        get_encoder("visual", colour=True)


# ----- the fast profile against version 1's settings ("reference") ----------------------------
# Stated tolerances (also in the VisualEncoder/RapidTextReader docstrings): the colour, edge
# and layout columns are identical; face count and text box count equal the reference on at
# least 80% of thumbnails and never differ by more than one box; text area within 0.05.
FACE_TEXT = [j for j, n in enumerate(FEATURE_NAMES) if "face" in n or n.startswith("text")]
OTHER = [j for j in range(N_FEATURES) if j not in FACE_TEXT]


@pytest.fixture(scope="module")
def planted_thumbnails() -> list[Image.Image]:
    """Synthetic 16:9 thumbnails, half with a drawn face and half with a big text block."""
    from thumbview.data.synth import render_thumbnail

    rng = np.random.default_rng(7)
    flags = [{"face": i % 2 == 0, "big_text": i % 3 != 2} for i in range(18)]
    return [Image.fromarray(render_thumbnail(rng, f)) for f in flags]


@needs_haar
def test_fast_profile_agrees_with_reference(planted_thumbnails):
    fast = VisualEncoder(profile="fast").encode(planted_thumbnails)
    ref = VisualEncoder(profile="reference").encode(planted_thumbnails)
    np.testing.assert_allclose(fast[:, OTHER], ref[:, OTHER], rtol=1e-6, atol=1e-6)
    for name in ("face count", "text boxes"):
        j = COL[name]
        assert (fast[:, j] == ref[:, j]).mean() >= 0.8, name
        assert np.abs(fast[:, j] - ref[:, j]).max() <= 1, name
    area = COL["text area (fraction)"]
    assert (np.abs(fast[:, area] - ref[:, area]) <= 0.05).mean() >= 0.8
    assert ref[:, COL["text boxes"]].sum() > 0 and ref[:, COL["face count"]].sum() > 0  # planted


def test_profile_is_part_of_the_cache_key():
    fast, ref = (
        VisualEncoder(ocr=False, profile="fast"),
        VisualEncoder(ocr=False, profile="reference"),
    )
    assert fast.spec()["profile"] == "fast" and fast.spec()["version"] == "3"
    assert fast.spec_hash() != ref.spec_hash()
    with pytest.raises(VisualInputError, match="profile"):
        VisualEncoder(profile="turbo")


def test_letterboxed_copy_gets_the_descriptors_of_the_picture():
    """A 16:9 thumbnail and the same picture letterboxed into a 4:3 file are described alike:
    the file's frame is not read as darkness, edges or aspect ratio (visual version 3)."""
    rng = np.random.default_rng(3)
    base = rng.integers(60, 255, (9, 16, 3), dtype=np.uint8)
    wide = Image.fromarray(base).resize((320, 180), Image.Resampling.BILINEAR)
    boxed = Image.new("RGB", (320, 240), (0, 0, 0))
    boxed.paste(wide, (0, 30))
    encoder = VisualEncoder(ocr=False, faces=False)
    a, b = encoder.encode([wide, boxed])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert a[COL["picture aspect ratio (width / height, bars removed)"]] == pytest.approx(16 / 9)
    assert a[COL["near-black fraction"]] == 0.0
