"""Upload checks: size caps, content sniffing by decoding, server-chosen file names.

Everything here treats the request as hostile. Bytes are capped while they are read, images
are accepted only if `load_image` decodes them (never by extension or content type), and the
client's file name is used for display only: files land on disk under fixed names inside a
server-made temporary folder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from thumbview.data.images import ImageError, load_image
from thumbview.frames.extract import MAX_FRAME_PIXELS

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one request may send. Thumbnails are at most 1280x720; the caps leave room."""

    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 16_000_000
    max_images: int = 6
    max_titles: int = 3
    max_title_chars: int = 300
    max_video_bytes: int = 512 * 2**20
    max_frame_pixels: int = MAX_FRAME_PIXELS  # video frame width x height
    max_frame_jobs: int = 2  # queued + running frame jobs at once
    keep_finished_jobs: int = 8  # finished jobs (and their stills) kept for the page to read
    # Time (seconds): see serve.server (headers), serve.security.BodyPace (body), serve.engine.
    header_timeout_s: float = 10.0  # a request's headers, from connection (or last response)
    body_grace_s: float = 10.0  # a body: this, plus 1 s per min_body_bytes_per_s received
    min_body_bytes_per_s: float = 64 * 1024
    compute_timeout_s: float = 60.0  # a model call (predict, compare, explain) -> 503
    shutdown_grace_s: float = 3.0  # running requests get this long after SIGTERM / Ctrl+C

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, int) and value < 1:
                raise ValueError(f"Limits.{name} must be at least 1, got {value}")
            if not value > 0:
                raise ValueError(f"Limits.{name} must be positive, got {value}")

    def max_request_bytes(self, video: bool) -> int:
        """Whole-body cap, counted as the body streams in (form fields: 1 MB on top)."""
        files = self.max_video_bytes if video else self.max_images * self.max_image_bytes
        return files + 2**20


class UploadError(ValueError):
    """A request the server refuses; `status` is the HTTP status, the message says why."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An accepted upload: the decoded RGB image and a name fit for display."""

    name: str
    image: Image.Image


def display_name(filename: str | None, index: int) -> str:
    """The client's file name reduced to a short, printable label (never used as a path)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^\w.\- ()\[\]]+", "_", base).strip(" ._")[:80]
    return base or f"image {index + 1}"


def read_capped(fp: BinaryIO, max_bytes: int, label: str) -> bytes:
    """Read at most `max_bytes`; one byte more means the upload is too large (413)."""
    data = fp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(f"{label} is larger than the {_mb(max_bytes)} limit", 413)
    if not data:
        raise UploadError(f"{label} is empty")
    return data


def decode_image(data: bytes, label: str, max_pixels: int) -> Image.Image:
    """Decode with `load_image`: a file that does not decode is not an image, whatever its name."""
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as e:
        reason = str(e).removeprefix("upload: ")
        status = 413 if "pixel" in reason else 422
        raise UploadError(f"{label}: {reason}", status) from e


def unique_names(names: list[str]) -> list[str]:
    """Candidates are told apart by name on the page, so duplicates get a counter."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def clean_titles(titles: list[str] | None, limits: Limits) -> list[str]:
    """Non-empty, stripped titles; too many or too long ones are refused, not truncated."""
    kept = [t.strip() for t in titles or [] if t and t.strip()]
    if len(kept) > limits.max_titles:
        raise UploadError(f"at most {limits.max_titles} titles per request, got {len(kept)}")
    for t in kept:
        if len(t) > limits.max_title_chars:
            raise UploadError(f"titles are limited to {limits.max_title_chars} characters")
    return kept


def clean_context(
    published: str = "", subscribers: float | None = None, channel_videos: float | None = None
) -> dict:
    """The video's context from form fields (as `predict --published ...`); a bad value is
    refused in words. Empty fields are left to the model's training medians."""
    from thumbview.embed.context import context_from_options

    try:
        return context_from_options(
            published.strip() or None, subscribers, channel_videos=channel_videos
        )
    except ValueError as e:
        raise UploadError(str(e).replace("--", "").replace("-", " ", 1)) from None


def video_suffix(filename: str | None) -> str:
    """A suffix from a fixed list (decoders like a familiar one); anything else gets .mp4."""
    suffix = Path(display_name(filename, 0)).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".mp4"


def save_capped(fp: BinaryIO, dest: Path, max_bytes: int, label: str) -> int:
    """Copy an upload to `dest` (a server-chosen path) in chunks, stopping at the cap."""
    total = 0
    with open(dest, "wb") as out:
        while chunk := fp.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise UploadError(f"{label} is larger than the {_mb(max_bytes)} limit", 413)
            out.write(chunk)
    if total == 0:
        raise UploadError(f"{label} is empty")
    return total


def check_video(path: Path, label: str, max_frame_pixels: int) -> None:
    """Sniff a video the way frame ranking will read it (PyAV), decoding its first frame,
    so a renamed text file, a still image or frames above the size cap (checked from the
    header, before decoding) fail at upload time, not in the job."""
    import av

    from thumbview.frames.extract import FramesError, FrameSizeError, open_video

    try:
        with open_video(path, max_frame_pixels) as (container, stream):
            next(container.decode(stream))
    except FramesError as e:
        status = 413 if isinstance(e, FrameSizeError) else 422
        raise UploadError(str(e).replace(str(path), label), status) from e
    except (av.error.FFmpegError, StopIteration, OSError) as e:
        raise UploadError(f"{label}: not a readable video (no frame could be decoded)") from e


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n:,} bytes"
