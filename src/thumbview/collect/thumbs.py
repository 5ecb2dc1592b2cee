"""Download the best available thumbnail and store it as a validated JPEG."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from thumbview.collect.http import FetchError, HttpClient, NotFoundError
from thumbview.collect.store import image_relpath
from thumbview.collect.types import VideoInfo
from thumbview.data.images import ImageError, load_image
from thumbview.fileio import atomic_write

logger = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
# YouTube answers some missing sizes with a 120x90 grey placeholder instead of a 404.
PLACEHOLDER_SIZE = (120, 90)


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


def fetch_thumbnail(http: HttpClient, video: VideoInfo, root: Path) -> SavedThumb:
    """Try sizes best first; a 404 moves on to the next size, other failures are transient."""
    problems: list[str] = []
    for thumb in video.thumbnails:
        try:
            data = http.get(thumb.url).content
            jpeg, width, height = to_jpeg(data)
        except NotFoundError:
            continue
        except FetchError as e:
            raise ThumbSkip("thumbnail fetch failed", str(e), permanent=False) from e
        except ImageError as e:
            problems.append(str(e))
            continue
        if (width, height) == PLACEHOLDER_SIZE and thumb.rank < 4:
            continue  # the grey placeholder served for a size that does not exist
        rel = image_relpath(video.video_id)
        atomic_write(root / rel, jpeg)
        return SavedThumb(rel, thumb.url, width, height)
    if problems:
        raise ThumbSkip("corrupt thumbnail", "; ".join(problems)[:300], permanent=False)
    raise ThumbSkip("no thumbnail", f"{len(video.thumbnails)} sizes tried", permanent=True)
