"""Download the best available thumbnail and store it as a validated JPEG."""

from __future__ import annotations

import io
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from thumbview.collect.http import FetchError, HttpClient, NotFoundError, RefusedError
from thumbview.collect.store import image_relpath
from thumbview.collect.types import VideoInfo
from thumbview.data.images import ImageError, load_image
from thumbview.fileio import atomic_write

logger = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
# YouTube answers some missing sizes with a 120x90 grey placeholder instead of a 404.
PLACEHOLDER_SIZE = (120, 90)
# Thumbnails are < 1 MB (a 1280x720 maxres JPEG is ~100-300 KB); anything far larger is not one.
DEFAULT_MAX_BYTES = 2_000_000
# Where YouTube serves thumbnails (Data API and yt-dlp URLs, and their redirects).
THUMB_HOSTS = frozenset(
    {"i.ytimg.com", "img.youtube.com", "yt3.ggpht.com", "yt3.googleusercontent.com"}
    | {f"i{n}.ytimg.com" for n in range(1, 10)}
)


@dataclass(frozen=True)
class SavedThumb:
    file_name: str  # relative to the dataset root
    url: str
    width: int
    height: int


class ThumbSkip(Exception):
    """No usable thumbnail; `reason` is the summary key, `permanent` False means try again later."""

    def __init__(self, reason: str, detail: str, permanent: bool) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.permanent = reason, detail, permanent


def to_jpeg(data: bytes) -> tuple[bytes, int, int]:
    """Validate image bytes; JPEGs are kept byte for byte, anything else is re-encoded."""
    image = load_image(data)
    if data.startswith(JPEG_MAGIC):
        return data, image.width, image.height
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), image.width, image.height


def fetch_thumbnail(
    http: HttpClient,
    video: VideoInfo,
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    hosts: Collection[str] = THUMB_HOSTS,
) -> SavedThumb:
    """Try sizes best first; a 404 moves on to the next size, other failures are transient.

    Each size streams into the image's temp file (at most `max_bytes`, only from `hosts`)
    and is validated there before the rename, so nothing unchecked is ever in place.
    """
    rel = image_relpath(video.video_id)
    problems: list[str] = []
    refused = False
    for thumb in video.thumbnails:
        try:
            width, height = _save(http, thumb.url, root / rel, max_bytes, hosts, thumb.rank)
        except (NotFoundError, _Placeholder):
            continue
        except RefusedError as e:
            refused = True
            problems.append(str(e))
            continue
        except FetchError as e:
            raise ThumbSkip("thumbnail fetch failed", str(e), permanent=False) from e
        except ImageError as e:
            problems.append(str(e))
            continue
        return SavedThumb(rel, thumb.url, width, height)
    if refused:
        raise ThumbSkip("thumbnail refused", "; ".join(problems)[:300], permanent=True)
    if problems:
        raise ThumbSkip("corrupt thumbnail", "; ".join(problems)[:300], permanent=False)
    raise ThumbSkip("no thumbnail", f"{len(video.thumbnails)} sizes tried", permanent=True)


class _Placeholder(Exception):
    """The grey 120x90 image YouTube serves for a size that does not exist."""


def _save(
    http: HttpClient, url: str, path: Path, max_bytes: int, hosts: Collection[str], rank: int
) -> tuple[int, int]:
    """Download `url` to `path` atomically as a validated JPEG; returns (width, height)."""
    size: list[int] = []

    def write(tmp: Path) -> None:
        with open(tmp, "r+b") as sink:
            http.download(url, sink, max_bytes=max_bytes, hosts=hosts)
        data = tmp.read_bytes()  # at most max_bytes
        jpeg, width, height = to_jpeg(data)
        if (width, height) == PLACEHOLDER_SIZE and rank < 4:
            raise _Placeholder
        if jpeg is not data:
            tmp.write_bytes(jpeg)
        size.extend((width, height))

    atomic_write(path, write)
    return size[0], size[1]
