"""Video IO: open with PyAV, stream-decode to small frames, re-decode chosen ones at full size.

Memory is bounded whatever the video's length: each decoded frame is scaled by swscale
straight to the analysis size (never converted to a full-size RGB array), measured, and
dropped unless `select.ShotTracker` keeps it as a candidate; the candidate pool has a cap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from thumbview.frames.select import (
    Candidate,
    CandidatePool,
    SelectConfig,
    ShotTracker,
    drop_blurry,
    measure,
)
from thumbview.progress import SILENT, Progress

log = logging.getLogger(__name__)

# Demuxers that read still images (or plain text): a file they open is not a video.
_STILL_FORMATS = {"image2", "webp_pipe"}
_STILL_CODECS = {"mjpeg", "png", "bmp", "webp", "tiff"}
_TEXT_FORMATS = {"tty"}  # FFmpeg renders any text file as an "ANSI art" video


# Decoded frames cost width x height x 1.5 bytes each, several at once with threaded
# decoding: a few hundred KB of H.264 can declare 8192x8192 frames (a decompression bomb).
# 16 MP admits 4K (8.3 MP) and 5K (14.7 MP) video and matches the cap on uploaded images.
MAX_FRAME_PIXELS = 16_000_000


class FramesError(ValueError):
    """A video that cannot be used (missing, not a video, no frames, unknown codec)."""


class FrameSizeError(FramesError):
    """A video whose frames are larger than the frame-size cap; refused before decoding."""


@dataclass(frozen=True)
class ScanResult:
    """What one streaming pass over a video produced."""

    candidates: tuple[Candidate, ...]
    skipped: dict[str, int]
    n_sampled: int
    n_shots: int
    duration_s: float
    width: int
    height: int


@contextmanager
def open_video(
    path: Path, max_frame_pixels: int = MAX_FRAME_PIXELS
) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The container and its first video stream, or a `FramesError` naming what is wrong.

    Streams whose declared frame size exceeds `max_frame_pixels` are refused here, from the
    header, before a single frame is decoded (`check_frame_size` repeats the check on
    decoded frames for containers that declare no size).
    """
    path = Path(path)
    if not path.exists():
        raise FramesError(f"{path}: file not found")
    if not path.is_file():
        raise FramesError(f"{path}: not a file")
    try:
        container = av.open(str(path))
    except av.error.EOFError as e:
        raise FramesError(f"{path}: empty or zero-length video") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise FramesError(f"{path}: not a video file ({e})") from e
    try:
        stream = _video_stream(path, container)
        ctx = stream.codec_context
        check_frame_size(path, ctx.width or 0, ctx.height or 0, max_frame_pixels)
        yield container, stream
    finally:
        container.close()


def check_frame_size(path: Path, width: int, height: int, max_frame_pixels: int) -> None:
    """Refuse frames of more than `max_frame_pixels` (width x height), in one line."""
    if width * height > max_frame_pixels:
        raise FrameSizeError(
            f"{path}: video frames are {width}x{height} ({width * height / 1e6:.3g} MP), "
            f"above the {max_frame_pixels / 1e6:.3g} MP limit; scale the video down first"
        )


def _video_stream(path: Path, container) -> av.VideoStream:
    fmt = container.format.name
    if fmt in _TEXT_FORMATS:
        raise FramesError(f"{path}: not a video file (FFmpeg reads it as text)")
    if not container.streams.video:
        kind = "an audio-only file" if container.streams.audio else "not a video"
        raise FramesError(f"{path}: {kind} (no video stream)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise FramesError(f"{path}: unreadable video codec (no decoder available in FFmpeg)")
    if fmt in _STILL_FORMATS or fmt.endswith("_pipe") or stream.codec_context.name in _STILL_CODECS:
        raise FramesError(f"{path}: this is an image ({fmt}), not a video")
    return stream


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) with w = target_width (or less for small videos), even sizes, same aspect."""
    w = min(target_width, width)
    h = max(2, int(round(w * height / width / 2)) * 2)
    return w, h


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return float(container.duration or 0) / av.time_base


def scan_video(
    path: Path,
    config: SelectConfig = SelectConfig(),
    *,
    analysis_width: int = 320,
    sample_fps: float = 2.0,
    keyframes_only: bool = False,
    progress: Progress = SILENT,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
) -> ScanResult:
    """One streaming pass: sample frames, detect shots, keep de-duplicated candidates.

    Shown as the task "scanning video", counted in sample points of the video's duration
    (unknown size when the container states no duration).
    """
    tracker, pool = ShotTracker(config), CandidatePool(config)
    with open_video(path, max_frame_pixels) as (container, stream):
        stream.thread_type = "AUTO"
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        duration = _duration(container, stream)
        size = analysis_size(
            stream.codec_context.width, stream.codec_context.height, analysis_width
        )
        total = math.ceil(duration * sample_fps) if duration > 0 else None
        options = (size, sample_fps, keyframes_only, max_frame_pixels)
        frames = _sampled_frames(path, container, stream, *options)
        with progress.task("scanning video", total) as advance:
            n = _track(frames, tracker, pool, total, sample_fps, advance)
        width, height = stream.codec_context.width, stream.codec_context.height
    for cand in tracker.finish():
        pool.add(cand)
    if n == 0:
        raise FramesError(f"{path}: zero-length video (no decodable frames)")
    kept, n_blurry = drop_blurry(pool.items, np.asarray(tracker.sharpness), config)
    skipped = {**tracker.skipped, **pool.skipped}
    skipped["blurry"] += n_blurry
    kept.sort(key=lambda c: c.timestamp_s)
    return ScanResult(tuple(kept), skipped, n, tracker.n_shots, duration, width, height)


def _track(frames, tracker: ShotTracker, pool: CandidatePool, total, sample_fps, advance) -> int:
    """Feed sampled frames to the shot tracker and the pool; returns how many there were.

    Progress counts sample points of the duration reached (a sample's time, not the count of
    samples, so keyframe-only scans and dropped frames still end near the total).
    """
    n = reached = 0
    for t, rgb in frames:
        n += 1
        for cand in tracker.push(measure(rgb, t)):
            pool.add(cand)
        now = n if total is None else min(total, math.floor(t * sample_fps) + 1)
        advance(max(now - reached, 0))
        reached = max(reached, now)
    return n


def _sampled_frames(path, container, stream, size, sample_fps, keyframes_only, max_pixels):
    """(timestamp_s, (h, w, 3) uint8) at about `sample_fps`; decode errors become FramesError.

    Each decoded frame is held to the cap again: a header may declare no size, or small
    frames that then grow mid-stream.
    """
    step = 0.0 if keyframes_only else 1.0 / sample_fps
    next_t = -np.inf
    try:
        for frame in container.decode(stream):
            check_frame_size(path, frame.width, frame.height, max_pixels)
            t = _frame_time(frame)
            if t is None or t < next_t:
                continue
            if step > 0:  # next point of a fixed grid, so the rate never drifts
                next_t = (np.floor(t / step + 1e-6) + 1) * step - 1e-6
            yield t, frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
    except av.error.FFmpegError as e:
        raise FramesError(f"{path}: cannot decode the video stream ({e})") from e


def _frame_time(frame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return frame.time
    return float(frame.pts * frame.time_base)


def grab_frames(
    path: Path, timestamps: list[float], max_frame_pixels: int = MAX_FRAME_PIXELS
) -> dict[float, np.ndarray]:
    """Full-resolution RGB (H, W, 3) for each timestamp, by seeking to the keyframe before it.

    Each seek decodes at most one GOP, so this costs little next to the full scan.
    """
    out: dict[float, np.ndarray] = {}
    with open_video(path, max_frame_pixels) as (container, stream):
        stream.thread_type = "AUTO"
        for t in sorted(set(timestamps)):
            out[t] = _grab_one(path, container, stream, t, max_frame_pixels)
    return out


def _grab_one(path: Path, container, stream, t: float, max_frame_pixels: int) -> np.ndarray:
    container.seek(int(t / stream.time_base), stream=stream)  # keyframe at or before t
    last = None
    try:
        for frame in container.decode(stream):
            last = frame
            ft = _frame_time(frame)
            if ft is not None and ft >= t - 1e-3:
                break
    except av.error.FFmpegError as e:
        raise FramesError(f"{path}: cannot decode the frame at {t:.2f} s ({e})") from e
    if last is None:
        raise FramesError(f"{path}: no frame at {t:.2f} s")
    check_frame_size(path, last.width, last.height, max_frame_pixels)
    return last.to_ndarray(format="rgb24")
