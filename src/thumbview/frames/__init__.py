"""Pick the best thumbnail frames from a video: decode, find shots, score, diversify.

`select` is pure (histograms, shot tracking, quality filters, MMR); `extract` is the
PyAV IO; `rank` scores candidates with a trained predictor and writes the outputs.
"""

from thumbview.frames.extract import FramesError, scan_video
from thumbview.frames.rank import FrameChoice, FramesConfig, FramesResult, rank_frames
from thumbview.frames.select import SelectConfig

__all__ = [
    "FrameChoice",
    "FramesConfig",
    "FramesError",
    "FramesResult",
    "SelectConfig",
    "rank_frames",
    "scan_video",
]
