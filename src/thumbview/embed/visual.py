"""Interpretable thumbnail descriptors: colour, edges, faces and on-image text.

Dense embeddings predict well but explain nothing; these columns are the vocabulary an
explanation is written in ("brighter", "more text", "a big face"). Everything runs on
CPU from models shipped inside installed packages, so nothing is downloaded.

The pure part is `describe`: an RGB array in, a float32 vector out. Face and text
detectors are injected as plain callables, so the colour/edge maths is testable without
any model and `VisualEncoder` only owns the lazily loaded models.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image

from thumbview.data.images import strip_bars, to_rgb
from thumbview.embed.base import Encoder

logger = logging.getLogger(__name__)

# Every image is resized so its longest side is this many pixels before anything is
# measured: edge density, face sizes and text areas are then comparable between a
# 120x90 thumbnail and a 1280x720 one, and the cost per image is bounded.
WORKING_SIZE = 320

# Hue bins (degrees, 0-360) named the way people name colours; red wraps around 0.
HUE_BINS: tuple[tuple[str, float, float], ...] = (
    ("red", 345.0, 15.0),
    ("orange", 15.0, 45.0),
    ("yellow", 45.0, 75.0),
    ("green", 75.0, 165.0),
    ("cyan", 165.0, 195.0),
    ("blue", 195.0, 255.0),
    ("purple", 255.0, 285.0),
    ("magenta", 285.0, 345.0),
)

FEATURE_NAMES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "saturation",
    "colorfulness",
    "warmth (red minus blue)",
    *(f"hue: {name}" for name, _, _ in HUE_BINS),
    "near-white fraction",
    "near-black fraction",
    "luminance entropy (bits)",
    "centre minus border brightness",
    "edge density",
    "centre minus border edge density",
    "sharpness (log Laplacian variance)",
    "picture aspect ratio (width / height, bars removed)",
    "face count",
    "largest face area (fraction)",
    "text area (fraction)",
    "text length (characters)",
    "text boxes",
)
N_FEATURES = len(FEATURE_NAMES)

# Detectors take the working-size image and return boxes in its pixel coordinates.
FaceDetector = Callable[[np.ndarray], np.ndarray]  # gray (H, W) uint8 -> (N, 4) x, y, w, h
TextReader = Callable[[np.ndarray], list[tuple[np.ndarray, str]]]  # RGB -> [(box (4, 2), text)]


class VisualInputError(ValueError):
    """An input the visual descriptors cannot be computed on (wrong type, shape or dtype)."""


class VisualModelError(ValueError):
    """A face or text model that cannot be loaded in this environment; says how to fix it."""


def describe(
    rgb: np.ndarray,
    detect_faces: FaceDetector | None = None,
    read_text: TextReader | None = None,
) -> np.ndarray:
    """Descriptor vector (len(FEATURE_NAMES),) float32 for one RGB uint8 image.

    Without a detector its columns are 0, which is what `VisualEncoder(faces=False)`
    and `ocr=False` promise.
    """
    rgb = _as_rgb(rgb)
    height, width = rgb.shape[:2]
    work = resize_to_working(rgb)  # (h, w, 3), longest side WORKING_SIZE
    gray = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)  # (h, w) uint8
    parts = [
        colour_stats(work, gray),
        edge_stats(gray),
        np.array([width / height]),
        face_stats(gray, detect_faces),
        text_stats(work, read_text),
    ]
    return np.concatenate(parts).astype(np.float32)  # (N_FEATURES,)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    """Accept (H, W), (H, W, 1) or (H, W, 3) uint8 arrays; reject the rest in words."""
    if not isinstance(rgb, np.ndarray):
        raise VisualInputError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise VisualInputError(f"expected a uint8 image array, got dtype {rgb.dtype}")
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    if rgb.ndim != 3 or rgb.shape[2] not in (1, 3):
        raise VisualInputError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise VisualInputError(f"empty image of shape {rgb.shape}")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.ascontiguousarray(rgb)


def resize_to_working(rgb: np.ndarray, size: int = WORKING_SIZE) -> np.ndarray:
    """Resize so the longest side is `size` (area filter down, bilinear up)."""
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (new_w, new_h), interpolation=interp)


def colour_stats(rgb: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation, colourfulness, warmth, hue mix, extremes, layout."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float64)  # H 0-179, S/V 0-255
    sat, val = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0  # (h, w)
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    lum = gray.astype(np.float64) / 255.0
    return np.concatenate(
        [
            [val.mean(), lum.std(), sat.mean(), colorfulness(r, g, b), (r - b).mean() / 255.0],
            hue_histogram(hsv[..., 0] * 2.0, sat, val),
            [((val > 0.9) & (sat < 0.15)).mean(), (val < 0.1).mean()],
            [_entropy_bits(gray), _centre_minus_border(lum)],
        ]
    )


def colorfulness(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness on 0-255 channels (~0 grey, >100 vivid)."""
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = np.hypot(rg.std(), yb.std())
    offset = np.hypot(rg.mean(), yb.mean())
    return float(spread + 0.3 * offset)


def hue_histogram(hue_deg: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Share of the image in each named hue, weighted by saturation, (len(HUE_BINS),).

    Near-black pixels get no weight: their hue and saturation are sensor noise.
    A fully saturated red image scores 1 in "red"; a grey one scores 0 everywhere.
    """
    weight = np.where(val >= 0.1, sat, 0.0)  # (h, w)
    out = np.empty(len(HUE_BINS))
    for i, (_, lo, hi) in enumerate(HUE_BINS):
        inside = (hue_deg >= lo) | (hue_deg < hi) if lo > hi else (hue_deg >= lo) & (hue_deg < hi)
        out[i] = (weight * inside).sum() / weight.size
    return out


def _entropy_bits(gray: np.ndarray) -> float:
    """Shannon entropy of the grey-level histogram: 0 for flat colour, up to 8 for noise."""
    counts = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _centre_mask(shape: tuple[int, int]) -> np.ndarray:
    """Boolean (h, w) mask of the middle half in each direction (a quarter of the area)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    return mask


def _centre_minus_border(values: np.ndarray) -> float:
    """Mean over the centre minus mean over the border: does the middle stand out?"""
    mask = _centre_mask(values.shape)
    if mask.all() or not mask.any():  # too small to have a border
        return 0.0
    return float(values[mask].mean() - values[~mask].mean())


def edge_stats(gray: np.ndarray) -> np.ndarray:
    """Canny edge density, its centre-vs-border difference, and log Laplacian variance."""
    edges = cv2.Canny(gray, 100, 200) > 0  # (h, w) bool
    laplacian = cv2.Laplacian(gray, cv2.CV_64F)
    return np.array(
        [edges.mean(), _centre_minus_border(edges.astype(np.float64)), np.log1p(laplacian.var())]
    )


def face_stats(gray: np.ndarray, detect_faces: FaceDetector | None) -> np.ndarray:
    """Face count and the largest face's share of the image area."""
    if detect_faces is None:
        return np.zeros(2)
    boxes = np.asarray(detect_faces(gray), dtype=np.float64).reshape(-1, 4)  # (N, 4) x y w h
    if len(boxes) == 0:
        return np.zeros(2)
    areas = boxes[:, 2] * boxes[:, 3]
    return np.array([len(boxes), areas.max() / gray.size])


def text_stats(rgb: np.ndarray, read_text: TextReader | None) -> np.ndarray:
    """Area covered by text (union of boxes), characters recognised, number of boxes."""
    if read_text is None:
        return np.zeros(3)
    found = read_text(rgb)
    if not found:
        return np.zeros(3)
    mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
    for box, _ in found:
        cv2.fillPoly(mask, [np.round(np.asarray(box)).astype(np.int32).reshape(-1, 2)], 1)
    n_chars = sum(len(text.strip()) for _, text in found)
    return np.array([mask.mean(), n_chars, len(found)])


# Detector settings by profile. "fast" is the default; "reference" is version 1's, kept so the
# speed-up is measured against it side by side and its values stay checkable (tests/benchmarks).
PROFILES = ("fast", "reference")


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python (< 5).

    The fast profile steps the detection window by 1.2x instead of 1.1x (half the scales);
    on real thumbnails it finds the same face count on 97% of images.
    """

    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"scaleFactor": 1.2, "minNeighbors": 4, "minSize": (24, 24)},
        "reference": {"scaleFactor": 1.1, "minNeighbors": 5, "minSize": (24, 24)},
    }

    def __init__(self, profile: str = "fast") -> None:
        self.options = self.OPTIONS[profile]
        self._cascade = cv2.CascadeClassifier(haar_cascade_path())
        if self._cascade.empty():
            raise VisualModelError(f"OpenCV could not read its face cascade {haar_cascade_path()}")

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        faces = self._cascade.detectMultiScale(gray, **self.options)
        return np.asarray(faces, dtype=np.int64).reshape(-1, 4)  # (N, 4) x, y, w, h


def haar_cascade_path() -> str:
    """Path of the shipped cascade, or a VisualModelError saying how to get one.

    OpenCV 5 moved Haar cascades out of the main wheels, so `faces=True` needs OpenCV 4.x.
    """
    data_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = f"{data_dir}haarcascade_frontalface_default.xml" if data_dir else ""
    if not hasattr(cv2, "CascadeClassifier") or not path or not Path(path).is_file():
        raise VisualModelError(
            f"face detection needs OpenCV's Haar cascades, which OpenCV {cv2.__version__} "
            "does not ship; install 'opencv-python-headless<5' (and 'opencv-python<5'), "
            "or use VisualEncoder(faces=False)"
        )
    return path


class RapidTextReader:
    """RapidOCR (PP-OCRv4 det + rec, ONNX, models inside the wheel), tuned for thumbnails.

    The detector dominates the cost and grows with the pixels it sees. Version 1
    ("reference") upscaled the short side to 480 px, i.e. a 320x180 working image became
    853x480; the fast profile detects at the working size itself (longest side 320), about
    5-8x less work, and recognises only the boxes found. On real 120x90 thumbnails the box
    count agrees with the reference on ~96% of images (see tests/test_visual.py for the
    stated tolerances). The angle classifier is off: thumbnail text is upright. One thread
    per engine, because images run in parallel threads.
    """

    _COMMON: ClassVar[dict[str, Any]] = {
        "use_cls": False,
        "text_score": 0.5,
        "intra_op_num_threads": 1,
        "inter_op_num_threads": 1,
    }
    OPTIONS: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"det_limit_side_len": WORKING_SIZE, "det_limit_type": "max", **_COMMON},
        "reference": {"det_limit_side_len": 480, "det_limit_type": "min", **_COMMON},
    }

    def __init__(self, profile: str = "fast") -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise VisualModelError(
                "on-image text needs rapidocr-onnxruntime: pip install rapidocr-onnxruntime==1.4.4,"
                " or use VisualEncoder(ocr=False)"
            ) from e
        self._engine = RapidOCR(**self.OPTIONS[profile])

    def __call__(self, rgb: np.ndarray) -> list[tuple[np.ndarray, str]]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        result, _ = self._engine(bgr)
        if not result:
            return []
        return [(np.asarray(box, dtype=np.float64), str(text)) for box, text, _score in result]


class VisualEncoder(Encoder):
    """Interpretable descriptors (see FEATURE_NAMES) for thumbnails; CPU, no download."""

    name = "visual"
    # 2: the fast detector profile (1 = profile "reference"); 3: letterbox/pillarbox bars are
    # cut before describing, so a 16:9 picture and the same picture letterboxed into 4:3 get
    # the same descriptors (the bars were read as "near-black" and as the aspect ratio).
    version = "3"
    modality = "image"

    def __init__(
        self,
        ocr: bool = True,
        faces: bool = True,
        workers: int | None = None,
        profile: str = "fast",
    ) -> None:
        if profile not in PROFILES:
            raise VisualInputError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        self.ocr = bool(ocr)
        self.faces = bool(faces)
        self.profile = profile
        # OCR dominates the cost and OpenCV/onnxruntime release the GIL, so images run in
        # parallel threads, each with its own detectors (neither is documented thread-safe).
        self.workers = max(1, workers or os.cpu_count() or 1)
        if self.faces:
            haar_cascade_path()  # fail now, in words, rather than mid-batch
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def dim(self) -> int:
        return N_FEATURES

    def feature_names(self) -> list[str]:
        return list(FEATURE_NAMES)

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec.update(
            ocr=self.ocr,
            faces=self.faces,
            working_size=WORKING_SIZE,
            opencv=cv2.__version__,
            profile=self.profile,
            face_options=dict(HaarFaceDetector.OPTIONS[self.profile]) if self.faces else None,
            rapidocr=_package_version("rapidocr-onnxruntime") if self.ocr else None,
            ocr_options=dict(RapidTextReader.OPTIONS[self.profile]) if self.ocr else None,
        )
        return spec

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        """(len(inputs), dim) float32; any PIL mode is converted to RGB first."""
        for i, img in enumerate(inputs):
            if not isinstance(img, Image.Image):
                raise VisualInputError(f"input {i}: expected a PIL image, got {type(img).__name__}")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="visual")
        rows = list(self._pool.map(self._describe_one, inputs))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, N_FEATURES), np.float32)

    def _describe_one(self, img: Image.Image) -> np.ndarray:
        detect_faces, read_text = self._detectors()
        return describe(np.asarray(strip_bars(to_rgb(img))), detect_faces, read_text)  # (D,)

    def _detectors(self) -> tuple[FaceDetector | None, TextReader | None]:
        """This thread's models, loaded on first use so constructing an encoder stays cheap."""
        local = self._local
        if self.faces and getattr(local, "faces", None) is None:
            local.faces = HaarFaceDetector(self.profile)
        if self.ocr and getattr(local, "text", None) is None:
            logger.debug("loading RapidOCR with %s", RapidTextReader.OPTIONS[self.profile])
            local.text = RapidTextReader(self.profile)
        return getattr(local, "faces", None), getattr(local, "text", None)


def _package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
