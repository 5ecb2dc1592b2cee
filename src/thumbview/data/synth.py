"""A synthetic thumbnail dataset with planted effects whose size is known exactly.

Real view counts have no ground truth, so a pipeline that "explains" them cannot be
checked on them. Here every thumbnail and title is drawn from a known recipe, each
planted trait multiplies the expected views by a recorded factor, and `truth.csv`
holds the true mean per row: a predictor that recovers the ranking, or an explanation
that names the right traits, can be scored against the truth.

Pure parts: `plan_table` (the metadata and truth as a table), `make_title` and
`render_thumbnail` (an RGB array). `make_synthetic` only writes files. Every draw comes
from a `numpy.random.Generator` seeded from `SynthConfig.seed`, and each image from its
own stream keyed by its row, so the output is reproducible byte for byte.
"""

from __future__ import annotations

import colorsys
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from thumbview.data.dataset import write_metadata
from thumbview.fileio import atomic_write
from thumbview.progress import SILENT, Progress

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
BASE_VIEWS = 10_000
CHANNEL_SD = 0.25  # sd of the per-channel multiplier, in log10 units
AGE_LOG10_PER_YEAR = 0.03  # each extra year online adds 0.03 to log10(views) (x1.07)
DATE_START = datetime(2015, 1, 1, tzinfo=UTC)
DATE_END = datetime(2026, 1, 1, tzinfo=UTC)  # exclusive; also the "now" ages are measured at
JPEG_QUALITY = 90

# Separate random streams, so adding a draw to one part never changes another part.
_STREAM_TABLE, _STREAM_TITLES, _STREAM_IMAGES = 1, 2, 3


@dataclass(frozen=True)
class PlantedEffect:
    """One planted trait: present in a `rate` share of rows, multiplying views by `factor`."""

    name: str  # column name in truth.csv
    kind: str  # "image" | "title"
    description: str
    factor: float
    rate: float = 0.3

    @property
    def log10_factor(self) -> float:
        return float(np.log10(self.factor))


EFFECTS: tuple[PlantedEffect, ...] = (
    PlantedEffect(
        "warm_colours",
        "image",
        "bright warm colours: a saturated red / orange / yellow background dominates the image",
        2.5,
    ),
    PlantedEffect(
        "big_text",
        "image",
        "big text block: one or two large bold high-contrast words (40-60 px) that OCR reads",
        2.2,
    ),
    PlantedEffect(
        "face",
        "image",
        "face: a large cartoon face (skin-coloured oval, hair, dark brows, eyes, nose, "
        "mouth); OpenCV's Haar frontal-face cascade finds about 80% of them (fewer when "
        "text covers the face or it is dark and blurry); the rest leave only a skin-coloured blob",
        1.7,
    ),
    PlantedEffect(
        "dark_blurry",
        "image",
        "dark and blurry: the finished thumbnail is darkened to 25-45% and Gaussian-blurred "
        "(radius 1.8-2.8 px at 320x180)",
        0.4,
    ),
    PlantedEffect(
        "hook_title",
        "title",
        "hook title: contains a hook phrase (INSANE, secret, I tried, you won't believe)",
        2.2,
    ),
    PlantedEffect(
        "dull_title",
        "title",
        "dull title: long, formal, lecture-like wording",
        0.65,
    ),
)
EFFECT_NAMES: tuple[str, ...] = tuple(e.name for e in EFFECTS)

METADATA_COLUMNS = (
    "file_name",
    "views",
    "title",
    "video_id",
    "channel_id",
    "channel_title",
    "published_at",
    "subscribers",
    "likes",
    "comments",
)


class SynthError(ValueError):
    """A synthetic dataset that cannot be made as asked (bad config, non-empty output folder)."""


@dataclass(frozen=True)
class SynthConfig:
    """How many rows, from which seed, at what size, and how noisy the views are.

    `noise_sigma` is the sd of the per-video noise added to log10(views).
    """

    n: int = 2000
    seed: int = 0
    width: int = 320
    height: int = 180
    n_channels: int = 60
    noise_sigma: float = 0.25

    def __post_init__(self) -> None:
        if self.n < 1:
            raise SynthError(f"n must be at least 1, got {self.n}")
        if self.seed < 0:
            raise SynthError(f"seed must be a non-negative integer, got {self.seed}")
        if not (64 <= self.width <= 4096 and 36 <= self.height <= 4096):
            raise SynthError(f"image size {self.width}x{self.height} is outside 64x36 .. 4096x4096")
        if self.n_channels < 1:
            raise SynthError(f"n_channels must be at least 1, got {self.n_channels}")
        if not (0.0 <= self.noise_sigma <= 3.0):
            raise SynthError(f"noise_sigma must be in [0, 3] (log10 units), got {self.noise_sigma}")


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for (seed, stream, row, ...)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# ---------------------------------------------------------------------------------------
# The table: channels, dates, effects, views, titles
# ---------------------------------------------------------------------------------------


def plan_table(config: SynthConfig) -> pd.DataFrame:
    """Every row's metadata and truth (no pixels): one row per video, in output order.

    Columns: METADATA_COLUMNS, one 0/1 column per effect, channel_log10, age_log10,
    true_log10_mean.
    """
    rng = _rng(config.seed, _STREAM_TABLE)
    n = config.n
    channels = _channels(rng, config.n_channels)
    who = rng.choice(len(channels), size=n, p=channels["weight"].to_numpy())  # (n,)
    flags = {e.name: (rng.random(n) < e.rate).astype(np.int64) for e in EFFECTS}
    published, age_log10 = _dates(rng, n)
    channel_log10 = channels["effect"].to_numpy()[who]  # (n,)
    effect_log10 = sum(flags[e.name] * e.log10_factor for e in EFFECTS)  # (n,)
    true_log10 = np.log10(BASE_VIEWS) + effect_log10 + channel_log10 + age_log10
    views, likes, comments = _counts(rng, true_log10, config.noise_sigma)
    video_ids = _video_ids(rng, n)
    chosen = channels.iloc[who].reset_index(drop=True)
    table = pd.DataFrame(
        {
            "file_name": [f"images/{v}.jpg" for v in video_ids],
            "views": views,
            "title": _titles(config.seed, flags["hook_title"], flags["dull_title"]),
            "video_id": video_ids,
            "channel_id": chosen["channel_id"],
            "channel_title": chosen["channel_title"],
            "published_at": published,
            "subscribers": chosen["subscribers"],
            "likes": likes,
            "comments": comments,
            **flags,
            "channel_log10": channel_log10,
            "age_log10": age_log10,
            "true_log10_mean": true_log10,
        }
    )
    return table


_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def _random_ids(rng: np.random.Generator, n: int, length: int, prefix: str = "") -> list[str]:
    """YouTube-like ids, unique even on a case-insensitive filesystem, never starting with '-'."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        chars = _ID_ALPHABET[rng.integers(0, 62, size=1)].tolist()  # first char alphanumeric
        chars += _ID_ALPHABET[rng.integers(0, 64, size=length - 1)].tolist()
        candidate = prefix + "".join(chars)
        if candidate.lower() not in seen:
            seen.add(candidate.lower())
            out.append(candidate)
    return out


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    return _random_ids(rng, n, 11)


_CHANNEL_WORDS = (
    (
        "Daily",
        "Pixel",
        "Urban",
        "Tiny",
        "Golden",
        "Midnight",
        "Happy",
        "Wild",
        "Honest",
        "Rapid",
        "Cosy",
        "Epic",
        "Quiet",
        "Bold",
        "Lucky",
        "Clever",
        "Cosmic",
        "Retro",
        "Fresh",
        "Solar",
    ),
    (
        "Kitchen",
        "Garage",
        "Studio",
        "Lab",
        "Nomad",
        "Gamer",
        "Workshop",
        "Garden",
        "Coach",
        "Traveller",
        "Academy",
        "Builder",
        "Reviews",
        "Channel",
        "Crew",
        "Diaries",
        "Films",
        "Plays",
        "Talks",
        "Tech",
    ),
)
_NON_LATIN_CHANNELS = ("ラーメン日記", "مطبخ سارة", "Кухня Ивана", "게임하는 민수")


def _channels(rng: np.random.Generator, n_channels: int) -> pd.DataFrame:
    """Channels with a log10 view multiplier, a subscriber count that tracks it, and a share of uploads."""
    effect = rng.normal(0.0, CHANNEL_SD, size=n_channels)  # (C,) log10 multiplier
    log_subs = 4.3 + 2.0 * effect + rng.normal(0.0, 0.25, size=n_channels)
    weight = 1.0 / np.sqrt(np.arange(1, n_channels + 1))  # a few channels upload a lot
    weight = rng.permutation(weight / weight.sum())
    first, second = _CHANNEL_WORDS
    names: list[str] = []
    for i in range(n_channels):
        if rng.random() < 0.08:
            name = str(rng.choice(_NON_LATIN_CHANNELS))
        else:
            name = f"{rng.choice(first)} {rng.choice(second)}"
        names.append(name if name not in names else f"{name} {i}")
    return pd.DataFrame(
        {
            "channel_id": _random_ids(rng, n_channels, 22, prefix="UC"),
            "channel_title": names,
            "effect": effect,
            "subscribers": np.round(10.0**log_subs).astype(np.int64),
            "weight": weight,
        }
    )


def _dates(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    """Upload times uniform over 2015-2025 and the age effect they carry (centred on 0)."""
    start, end = DATE_START.timestamp(), DATE_END.timestamp()
    stamps = np.floor(rng.uniform(start, end, size=n))  # (n,) unix seconds
    age_years = (end - stamps) / (365.25 * 86400)
    mid_age = (end - start) / 2 / (365.25 * 86400)
    age_log10 = AGE_LOG10_PER_YEAR * (age_years - mid_age)
    published = [
        datetime.fromtimestamp(s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z") for s in stamps
    ]
    return published, age_log10


def _counts(
    rng: np.random.Generator, true_log10: np.ndarray, noise_sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views with log10-normal noise; likes and comments as noisy shares of views."""
    n = len(true_log10)
    views = np.round(10.0 ** (true_log10 + rng.normal(0.0, noise_sigma, size=n)))
    like_rate = 10.0 ** rng.normal(np.log10(0.03), 0.2, size=n)
    comment_rate = 10.0 ** rng.normal(np.log10(0.002), 0.3, size=n)
    likes = np.round(views * like_rate)
    comments = np.round(views * comment_rate)
    return views.astype(np.int64), likes.astype(np.int64), comments.astype(np.int64)


# ---------------------------------------------------------------------------------------
# Titles
# ---------------------------------------------------------------------------------------


def _titles(seed: int, hook: np.ndarray, dull: np.ndarray) -> list[str]:
    """All titles from their own stream, so title wording never shifts the other draws."""
    rng = _rng(seed, _STREAM_TITLES)
    return [make_title(rng, bool(h), bool(d)) for h, d in zip(hook, dull, strict=True)]


_TOPICS = (
    "ramen in Tokyo",
    "a budget gaming PC",
    "sourdough bread",
    "Minecraft hardcore",
    "the new iPhone camera",
    "marathon training",
    "a tiny house build",
    "street food in Bangkok",
    "Python for beginners",
    "chess openings",
    "an electric bike commute",
    "a home workout",
    "bass guitar practice",
    "a skincare routine",
    "drone flights over Iceland",
    "car detailing",
    "houseplant care",
    "stock market basics",
    "Mario Kart speedruns",
    "cat behaviour",
)
_NON_LATIN_TOPICS = ("東京のラーメン", "البيت الذكي", "борщ по-домашнему", "김치찌개", "猫の一日")
_NATIVE_TITLES = (
    "東京で一番おいしいラーメンを探してみた",
    "أفضل وصفة فلافل في المنزل",
    "Лучший рецепт борща за 30 минут",
    "초보자를 위한 김치찌개 만들기",
    "猫と過ごす静かな日曜日",
)
_NORMAL = (
    "{topic} vlog #{k}",
    "My take on {topic}",
    "{topic} | episode {k}",
    "Quick look at {topic}",
    "{topic} review",
    "Weekend with {topic}",
    "{topic}, day {k}",
    "Notes on {topic}",
)
_HOOK = (
    "INSANE {topic} hack",
    "The secret to {topic}",
    "I tried {topic} for 30 days",
    "You won't believe this {topic}",
    "{topic}: the secret nobody tells you",
    "I tried {topic} and it was INSANE",
    "You won't believe what {topic} did",
)
_HOOK_LEADS = ("INSANE:", "You won't believe this:", "The secret:", "I tried it:")
_DULL = (
    "An overview of {topic}: procedures, considerations and frequently asked questions "
    "(part {k} of {m})",
    "Lecture {k}: an introduction to the general principles of {topic}, with notes on "
    "terminology and supplementary reference material",
    "Detailed documentation of the standard procedures for {topic} and the associated "
    "administrative requirements, session {k} of {m}",
    "A summary of recent developments regarding {topic}, including a review of the relevant "
    "regulations and guidelines (revised edition {k})",
)
_EMOJI = ("🔥", "😱", "🤯", "✨", "💯", "😂")


def make_title(rng: np.random.Generator, hook: bool, dull: bool) -> str:
    """A title from templates: hook phrases only when `hook`, formal long wording only when `dull`.

    Topics, emoji and non-Latin text are neutral (no effect on views), so a model that
    keys on them is learning noise.
    """
    non_latin = rng.random() < 0.06
    if non_latin and not (hook or dull):
        title = str(rng.choice(_NATIVE_TITLES))
    else:
        topic = str(rng.choice(_NON_LATIN_TOPICS if non_latin else _TOPICS))
        k, m = int(rng.integers(1, 10)), int(rng.integers(10, 20))
        if dull:
            body = str(rng.choice(_DULL)).format(topic=topic, k=k, m=m)
            title = f"{rng.choice(_HOOK_LEADS)} {body[0].lower()}{body[1:]}" if hook else body
        else:
            title = str(rng.choice(_HOOK if hook else _NORMAL)).format(topic=topic, k=k, m=m)
            title = title[0].upper() + title[1:]
    if rng.random() < 0.2:
        title = f"{title} {rng.choice(_EMOJI)}"
    return title


# ---------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)) * 255.0  # (3,)


def _warm_colour(rng: np.random.Generator) -> np.ndarray:
    """Saturated red / orange / yellow (hue -8 to 50 deg), bright."""
    return _hsv(rng.uniform(-8.0, 50.0), rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0))


def _plain_colour(rng: np.random.Generator) -> np.ndarray:
    """Anything but a saturated warm colour: cool hues at any saturation, or muted tones."""
    if rng.random() < 0.55:
        return _hsv(rng.uniform(70.0, 330.0), rng.uniform(0.25, 0.9), rng.uniform(0.3, 0.95))
    return _hsv(rng.uniform(0.0, 360.0), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.95))


def _clutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    c = _hsv(rng.uniform(0.0, 360.0), rng.uniform(0.0, 0.8), rng.uniform(0.1, 1.0))
    return (int(c[0]), int(c[1]), int(c[2]))


def _background(rng: np.random.Generator, warm: bool, width: int, height: int) -> Image.Image:
    """Solid, linear-gradient or radial-gradient fill.

    Gradients are smooth, so they are computed on a 1/8-size grid and upsampled
    bilinearly: same look, a fraction of the cost.
    """
    pick = _warm_colour if warm else _plain_colour
    c1, c2 = pick(rng), pick(rng)
    style = rng.integers(0, 3)
    if style == 0:
        return Image.new("RGB", (width, height), tuple(int(round(c)) for c in c1))
    h, w = max(2, height // 8), max(2, width // 8)
    ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]  # (h, 1)
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]  # (1, w)
    if style == 1:
        angle = rng.uniform(0.0, 2 * np.pi)
        t = xs * np.cos(angle) + ys * np.sin(angle)  # (h, w)
    else:
        t = np.hypot(xs - rng.uniform(0, 1), ys - rng.uniform(0, 1))  # (h, w)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]  # (h, w, 1)
    small = c1 * (1 - t) + c2 * t  # (h, w, 3)
    img = Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    return img.resize((width, height), Image.Resampling.BILINEAR)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Random rectangles, ellipses, triangles and lines: texture that means nothing."""
    unit = min(width, height)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.3) * unit, rng.uniform(0.05, 0.3) * unit
        colour = _clutter_colour(rng)
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        elif kind == 2:
            draw.polygon([(x, y), (x + w, y + h * 0.3), (x + w * 0.4, y + h)], fill=colour)
        else:
            x2, y2 = rng.uniform(0, width), rng.uniform(0, height)
            draw.line((x, y, x2, y2), fill=colour, width=int(rng.integers(1, 5)))


_SKIN = ((255, 224, 196), (241, 194, 155), (224, 172, 125), (198, 134, 92), (141, 85, 54))
_HAIR = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (20, 20, 20), (160, 120, 70))


def _face(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """A frontal cartoon face whose light/dark layout (dark eyes and brows over lighter
    cheeks, a lighter nose bridge between the eyes) is what Haar features look for."""
    fh = rng.uniform(0.55, 0.8) * height
    fw = fh * rng.uniform(0.72, 0.82)
    cx = rng.uniform(fw / 2 + 2, width - fw / 2 - 2)
    cy = rng.uniform(fh / 2 + 2, max(fh / 2 + 3, height - fh / 2 - 2))
    left, top = cx - fw / 2, cy - fh / 2
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    hair = _HAIR[int(rng.integers(len(_HAIR)))]
    brows = tuple(int(c * 0.45) for c in hair)  # dark brows even under fair hair
    shade = tuple(int(c * 0.8) for c in skin)
    draw.ellipse((left - fw * 0.06, top - fh * 0.08, left + fw * 1.06, top + fh * 0.55), fill=hair)
    draw.ellipse((left, top + fh * 0.08, left + fw, top + fh), fill=skin)
    eye_y, eye_dx = top + fh * 0.45, fw * 0.2
    eye_w, eye_h = fw * 0.17, fh * 0.075
    for side in (-1, 1):
        ex = cx + side * eye_dx
        brow = (ex - eye_w * 0.7, eye_y - fh * 0.13, ex + eye_w * 0.7, eye_y - fh * 0.08)
        socket = (ex - eye_w * 0.75, eye_y - eye_h * 1.3, ex + eye_w * 0.75, eye_y + eye_h * 1.1)
        draw.ellipse(socket, fill=shade)  # eyes sit in a darker band, as in photos
        draw.rectangle(brow, fill=brows)
        draw.ellipse(
            (ex - eye_w / 2, eye_y - eye_h / 2, ex + eye_w / 2, eye_y + eye_h / 2),
            fill=(250, 250, 250),
        )
        r = eye_h * 0.5
        draw.ellipse((ex - r, eye_y - r, ex + r, eye_y + r), fill=(35, 25, 20))
    nose = [
        (cx, eye_y + fh * 0.02),
        (cx - fw * 0.06, eye_y + fh * 0.2),
        (cx + fw * 0.05, eye_y + fh * 0.2),
    ]
    draw.polygon(nose, fill=shade)
    mouth_y = top + fh * 0.8
    draw.ellipse(
        (cx - fw * 0.2, mouth_y - fh * 0.04, cx + fw * 0.2, mouth_y + fh * 0.05), fill=(120, 30, 40)
    )


_WORDS = (
    "WOW",
    "NEW",
    "TOP 10",
    "HUGE",
    "FREE",
    "BEST",
    "EPIC",
    "FAIL",
    "WIN",
    "OMG",
    "DAY 1",
    "$100",
    "100%",
    "VS",
    "LIVE",
    "SALE",
    "BIG",
    "HOW?",
    "WHY",
    "NO WAY",
)
_TEXT_STYLES = (
    ((255, 255, 255), (0, 0, 0)),
    ((255, 230, 0), (0, 0, 0)),
    ((0, 0, 0), (255, 255, 255)),
)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (Aileron), identical on every machine, at `size` px."""
    return ImageFont.load_default(size=size)


def _text_block(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int
) -> None:
    """One or two big words with a thick outline, placed where they fit entirely."""
    words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 3)), replace=False))
    fill, stroke = _TEXT_STYLES[int(rng.integers(len(_TEXT_STYLES)))]
    size = int(rng.integers(40, 61) * min(width / 320, height / 180))
    while True:
        font, sw = _font(max(size, 8)), max(2, size // 14)
        x0, y0, x1, y1 = draw.textbbox((0, 0), words, font=font, stroke_width=sw)
        if (x1 - x0 <= width * 0.92 and y1 - y0 <= height * 0.9) or size <= 8:
            break
        size = int(size * 0.85)
    x = rng.uniform(0, max(width - (x1 - x0), 1)) - x0
    y = rng.uniform(0, max(height - (y1 - y0), 1)) - y0
    draw.text((x, y), words, font=font, fill=fill, stroke_width=sw, stroke_fill=stroke)


def render_thumbnail(
    rng: np.random.Generator, flags: dict[str, int | bool], width: int = 320, height: int = 180
) -> np.ndarray:
    """One thumbnail as an (H, W, 3) uint8 array, with the image effects named in `flags`.

    Order matters and mirrors real thumbnails: background and clutter first, then the face
    and the text on top, then darkening/blur over everything (a dim, soft photo).
    """
    img = _background(rng, bool(flags.get("warm_colours")), width, height)
    draw = ImageDraw.Draw(img)
    _clutter(rng, draw, width, height)
    if flags.get("face"):
        _face(rng, draw, width, height)
    if flags.get("big_text"):
        _text_block(rng, draw, width, height)
    scale = min(width / 320, height / 180)
    if flags.get("dark_blurry"):
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1.8, 2.8) * scale))
        gain = rng.uniform(0.25, 0.45)
    else:
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * scale))
        gain = rng.uniform(0.85, 1.1)
    cast = rng.normal(0.0, 3.0, size=3)  # (3,) a global colour cast
    levels = np.arange(256, dtype=np.float64)  # (256,)
    lut = np.clip(np.rint(levels[None, :] * gain + cast[:, None]), 0, 255)  # (3, 256)
    return np.array(img.point(lut.astype(np.uint8).ravel().tolist()))  # (H, W, 3)


def thumbnail_for_row(config: SynthConfig, row: int, flags: dict[str, int | bool]) -> np.ndarray:
    """The thumbnail of row `row`: its own random stream, so rows can be drawn in any order."""
    rng = _rng(config.seed, _STREAM_IMAGES, row)
    return render_thumbnail(rng, flags, config.width, config.height)


# ---------------------------------------------------------------------------------------
# IO
# ---------------------------------------------------------------------------------------


def make_synthetic(out: str | Path, config: SynthConfig, progress: Progress = SILENT) -> Path:
    """Write a synthetic dataset folder and return it.

    Layout: images/<video_id>.jpg, metadata.csv (what `load_dataset` reads), planted.json
    (the recipe and effect sizes) and truth.csv (per-row true mean and effect flags).
    metadata.csv is written last, so a folder that has it is complete.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"{out} already exists and is not an empty folder; choose a new one")
    table = plan_table(config)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    flag_rows = table[list(EFFECT_NAMES)].to_dict("records")
    with progress.task("drawing thumbnails", len(table)) as advance:
        for i, (name, flags) in enumerate(zip(table["file_name"], flag_rows, strict=True)):
            rgb = thumbnail_for_row(config, i, flags)
            Image.fromarray(rgb).save(out / name, "JPEG", quality=JPEG_QUALITY)
            advance(1)
    truth_cols = ["video_id", "true_log10_mean", *EFFECT_NAMES, "channel_log10", "age_log10"]
    atomic_write(out / "truth.csv", table[truth_cols].to_csv(index=False, lineterminator="\n"))
    atomic_write(
        out / "planted.json",
        json.dumps(planted_record(config, table), indent=2, ensure_ascii=False) + "\n",
    )
    write_metadata(out, table[list(METADATA_COLUMNS)])
    logger.info("wrote %d synthetic thumbnails to %s", len(table), out)
    return out


def planted_record(config: SynthConfig, table: pd.DataFrame) -> dict[str, Any]:
    """The recipe as JSON: config, every effect with its factor and count, and the nuisances."""
    effects = [
        {**asdict(e), "log10_factor": e.log10_factor, "n_rows": int(table[e.name].sum())}
        for e in EFFECTS
    ]
    return {
        "generator": f"thumbview.data.synth v{GENERATOR_VERSION}",
        "config": asdict(config),
        "seed": config.seed,
        "noise_sigma": config.noise_sigma,
        "base_views": BASE_VIEWS,
        "model": "log10(views) = log10(base_views) + sum(effect log10_factor) + channel_log10 "
        "+ age_log10 + Normal(0, noise_sigma); true_log10_mean omits the noise",
        "effects": effects,
        "channel_effect": {
            "distribution": "normal, log10 units",
            "sd": CHANNEL_SD,
            "subscribers": "log10(subscribers) = 4.3 + 2 * channel_log10 + Normal(0, 0.25)",
        },
        "age_effect": {
            "log10_per_year": AGE_LOG10_PER_YEAR,
            "reference_date": DATE_END.date().isoformat(),
            "description": "older videos have more views; centred so the mean age adds 0",
        },
        "neutral": "topics, emoji, non-Latin titles, background clutter and channel names carry no effect",
        "truth_file": "truth.csv",
    }
