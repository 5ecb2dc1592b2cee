"""What a model folder tells whoever uses it: what it predicts, what it assumes, whether it works.

`card.json` is written by `train` beside the model and read through `ModelCard.load`:

- **context**: the training data's own typical context (median publication date,
  subscribers, channel size) and the horizon it learned (the median upload age when the
  views were counted). A prediction whose context is not given is made for that typical
  video, never for a fixed constant: a model trained on 2006-2015 videos asked without a date
  predicts for its median 2011 video, inside its training range, and says so in one line.
  An input the training data did not have (no subscribers column) is ignored, and said to be.
- **skill**: the held-out verdict. Pooled: does the model beat the training median on
  held-out channels (the mean absolute error gain, with a channel-bootstrap interval)?
  Within a channel: did its same-channel calls beat a coin (`PairCalibration.skilful`)?
  The question asked picks which one speaks: a view count for one thumbnail is pooled,
  choosing between one video's candidates (compare, frames, the bot) is within a channel.

Folders written before `card.json` fall back: the fixed `FILL` context of `embed.context`
(said so), and the verdict read from `eval.json` and `pairwise.json` without an interval.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thumbview.fileio import json_safe, write_json
from thumbview.layout import MODEL_CARD, MODEL_EVAL
from thumbview.schema import Number, Optional, load_json, read_json
from thumbview.units import format_count, format_days

log = logging.getLogger(__name__)

CARD_FILE = MODEL_CARD
VERSION = 1
# The questions a prediction answers, and the skill that must back each one.
POOLED = "pooled"  # how many views will this thumbnail get (any channel)
WITHIN_CHANNEL = "within-channel"  # which of one video's candidates will do best
LEVEL = 0.9  # the interval of the held-out gain over the median
# The context a video can be given (CLI --published, --subscribers, --channel-videos; the
# page's fields of the same names), as a note names it.
INPUTS = {
    "published": "publication date",
    "subscribers": "subscriber count",
    "channel_videos": "channel size",
}
_SCHEMA = {
    "version": int,
    "context": {
        "horizon_days": Optional(Number),
        "published": Optional(str),
        "subscribers": Optional(Number),
        "channel_videos": Optional(Number),
        "n": int,
    },
    "skill": {
        "n_rows": int,
        "n_channels": int,
        "mae_model": Optional(Number),
        "mae_median": Optional(Number),
        "gain_low": Optional(Number),
        "gain_high": Optional(Number),
        "level": Number,
        "within_channel": Optional(bool),
        "source": str,
    },
}


class CardError(ValueError):
    """A damaged card.json (the message names the file and the field)."""


# ----- the training data's typical video -----------------------------------------------------
@dataclass(frozen=True)
class TrainingContext:
    """Medians of the training rows' context; None where the training data lacked it.

    horizon_days: median days from upload to the views snapshot (what "views" means here).
    published: ISO timestamp of the median upload; subscribers, channel_videos: medians.
    """

    horizon_days: float | None
    published: str | None
    subscribers: float | None
    channel_videos: float | None
    n: int

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> TrainingContext:
        """From `embed.context.context_rows` dicts of the training rows."""
        ages = _finite([r.get("age_days") for r in rows])
        subs = _finite([r.get("subscribers") for r in rows])
        videos = _finite([r.get("channel_videos") for r in rows])
        when = pd.to_datetime(
            pd.Series([r.get("published") for r in rows], dtype=object),
            utc=True,
            errors="coerce",
            format="mixed",
        ).dropna()
        return cls(
            horizon_days=float(np.median(ages)) if len(ages) else None,
            published=when.sort_values().iloc[len(when) // 2].isoformat() if len(when) else None,
            subscribers=float(np.median(subs)) if len(subs) else None,
            channel_videos=float(np.median(videos)) if len(videos) else None,
            n=len(rows),
        )

    def horizon_line(self, relative: bool = False) -> str:
        """'predicts views about 4.2 years after upload (...)': what a number means."""
        what = "views relative to the channel's typical video" if relative else "views"
        if self.horizon_days is None:
            return (
                f"predicts {what} at the time the training data was collected (upload ages unknown)"
            )
        return (
            f"predicts {what} about {format_days(self.horizon_days)} after upload "
            "(the training videos' median age when their views were counted)"
        )

    def value_text(self, key: str) -> str:
        """How an assumed value reads: 'published 2011-06-04', '12K subscribers'."""
        value = getattr(self, key)
        if key == "published":
            return f"published {str(value)[:10]}"
        if key == "subscribers":
            return f"{format_count(value)} subscribers"
        return f"a channel of {format_count(value)} video{'s' if value >= 1.5 else ''}"


def _finite(values: list[Any]) -> np.ndarray:
    out = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)
    return out[np.isfinite(out)]


# ----- how a prediction's context was filled -------------------------------------------------
@dataclass(frozen=True)
class ContextNote:
    """What a prediction predicts and what it assumed or ignored, one line each ("" = none)."""

    predicts: str
    assumed: str = ""
    ignored: str = ""

    def lines(self) -> list[str]:
        return [line for line in (self.predicts, self.assumed, self.ignored) if line]

    def to_json_dict(self) -> dict[str, str]:
        return asdict(self)


def fill_context(
    given: dict[str, Any] | None,
    trained: TrainingContext | None,
    reads_context: bool,
    fallback: dict[str, Any],
    relative: bool = False,
) -> tuple[dict[str, Any], ContextNote]:
    """(the context dict the encoder reads, the note saying what was assumed and ignored).

    `given`: what the user passed (`context_from_options`); `reads_context`: the model has a
    context encoder; `fallback`: `embed.context.FILL`, for folders without a card. The age is
    the model's horizon unless given: the prediction is for views at that age.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if trained is None:
        return _legacy_fill(given, reads_context, fallback, relative)
    predicts = trained.horizon_line(relative)
    if not reads_context:
        return {}, ContextNote(predicts, ignored=_ignored(given, "the model reads no context"))
    usable = [k for k in INPUTS if getattr(trained, k) is not None]
    out = {k: given[k] for k in usable if k in given}
    assumed = [k for k in usable if k not in given]
    out.update({k: getattr(trained, k) for k in assumed})
    for key in INPUTS:  # what training never varied keeps the value training saw
        if key not in usable:
            out[key] = fallback[key]
    age = given.get("age_days", trained.horizon_days)
    out["age_days"] = fallback["age_days"] if age is None else age
    said = ", ".join(trained.value_text(k) for k in assumed)
    unused = {k: v for k, v in given.items() if k in INPUTS and k not in usable}
    why = "the training data had no such column, so the model never learned from it"
    return out, ContextNote(
        predicts,
        f"assumed: {said} (the training data's medians)" if said else "",
        _ignored(unused, why),
    )


def _ignored(given: dict[str, Any], why: str) -> str:
    names = [INPUTS[k] for k in INPUTS if k in given]
    return f"ignored: the {' and '.join(names)} given ({why})" if names else ""


def _legacy_fill(given, reads_context, fallback, relative) -> tuple[dict, ContextNote]:
    """A folder without card.json: the old fixed values, said aloud."""
    what = "views relative to the channel's typical video" if relative else "views"
    predicts = f"predicts {what} at an age the model folder does not record (no {CARD_FILE})"
    if not reads_context:
        return {}, ContextNote(predicts, ignored=_ignored(given, "the model reads no context"))
    missing = [k for k in INPUTS if k not in given]
    shown = {
        "published": f"published {fallback['published'][:10]}",
        "subscribers": f"{format_count(fallback['subscribers'])} subscribers",
        "channel_videos": f"a channel of {format_count(fallback['channel_videos'])} video(s)",
    }
    said = ", ".join(shown[k] for k in missing)
    assumed = (
        f"assumed: {said}, {format_days(fallback['age_days'])} after upload (fixed values: this "
        f"model folder has no {CARD_FILE} with its training data's medians; retrain to use them)"
        if missing
        else ""
    )
    return dict(given), ContextNote(predicts, assumed)


# ----- the held-out verdict ------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutSkill:
    """Did the model beat the training median on held-out rows, and order one channel's videos?

    gain = MAE(median) - MAE(model) in log10 units (> 0: the model is better), with its
    `level` interval clustered by held-out channel (`heldout_skill`). within_channel: same-channel
    calls beat a coin (`PairCalibration.skilful`), None when never checked. source: where
    the figures come from ("held-out rows", or "eval.json (no interval)" for old folders).
    """

    n_rows: int = 0
    n_channels: int = 0
    mae_model: float | None = None
    mae_median: float | None = None
    gain_low: float | None = None
    gain_high: float | None = None
    level: float = LEVEL
    within_channel: bool | None = None
    source: str = "held-out rows"

    @property
    def gain(self) -> float | None:
        if self.mae_model is None or self.mae_median is None:
            return None
        return self.mae_median - self.mae_model

    @property
    def beats_median(self) -> bool | None:
        """True: better than the median beyond doubt (interval above 0; an old folder without
        an interval: a lower MAE); False: not shown to be; None: never checked."""
        if self.gain is None or not np.isfinite(self.gain):
            return None
        if self.gain_low is None and self.source == "held-out rows":
            return False  # too few held-out rows to say
        return (self.gain_low if self.gain_low is not None else self.gain) > 0

    def summary(self) -> str:
        """The verdict in plain words (what `train` ends with)."""
        return f"{self._pooled_words()}; {self._within_words()}"

    def _pooled_words(self) -> str:
        if self.gain is None:
            return "was not checked against the median baseline on held-out videos (no hold-out)"
        band = (
            ""
            if self.gain_low is None
            else f", {self.level:.0%} interval {self.gain_low:+.3f} to {self.gain_high:+.3f}"
        )
        mae = f"MAE {self.mae_model:.3f} vs {self.mae_median:.3f} for the median{band}"
        where = f"on {self.n_rows} held-out videos" if self.n_rows else f"({self.source})"
        if self.beats_median:
            return f"beats the median baseline {where} ({mae})"
        worse = self.gain < 0 and (self.gain_high is None or self.gain_high < 0)
        word = "is WORSE than" if worse else "does not clearly beat"
        return f"{word} guessing the training median for every video {where} ({mae})"

    def _within_words(self) -> str:
        return {
            True: "it orders videos of one channel better than a coin",
            False: "its calls between videos of one channel were not clearly better than a coin",
            None: "its calls between videos of one channel were never checked",
        }[self.within_channel]

    def note(self, question: str) -> str:
        """One line when the model has no demonstrated skill for `question`, else ""."""
        if question == POOLED:
            if self.beats_median:
                return ""
            return f"no demonstrated skill: this model {self._pooled_words()}"
        if self.within_channel:
            return ""
        return (
            f"no demonstrated skill at choosing between one video's candidates: "
            f"{self._within_words()}; treat the ranking as a tie"
        )


def heldout_skill(
    y, pred, median: float, groups=None, within: bool | None = None, level: float = LEVEL
) -> HeldOutSkill:
    """The verdict on held-out rows: y, pred (N,) in target units; `groups` (N,) channels.

    The gain is the mean of |y - median| - |y - pred| over rows; its interval is Student's t
    with G - 1 degrees of freedom around a channel-clustered standard error (CR1: videos of
    one channel share their errors), so two held-out channels give a wide interval, as they
    should. Rows count as their own clusters when channels are unknown or only one is held
    out. Coverage by simulation: tests/test_card.py.
    """
    from scipy import stats

    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)  # (N,)
    gain_row = np.abs(y - median) - np.abs(y - pred)  # (N,) > 0 where the model is closer
    channels = None if groups is None else pd.Series(groups, dtype=object).astype(str)
    n_channels = 0 if channels is None else channels.nunique()
    codes = pd.factorize(channels)[0] if n_channels > 1 else np.arange(len(y))
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    gain = float(gain_row.mean()) if len(y) else float("nan")
    low = high = None
    if n_groups >= 2:
        resid = np.bincount(codes, gain_row - gain)  # (G,) per-channel sums of deviations
        se = float(np.sqrt(n_groups / (n_groups - 1) * np.sum(resid**2)) / len(y))
        half = float(stats.t.ppf((1 + level) / 2, n_groups - 1)) * se
        low, high = gain - half, gain + half
    return HeldOutSkill(
        n_rows=len(y),
        n_channels=n_channels,
        mae_model=float(np.mean(np.abs(y - pred))),
        mae_median=float(np.mean(np.abs(y - median))),
        gain_low=low,
        gain_high=high,
        level=level,
        within_channel=within,
    )


def write_card(
    out_dir: Path, dataset, train_rows, test_rows=(), y=None, pred=None, median: float = 0.0,
    within: bool | None = None, as_of: str | None = None,
) -> ModelCard:  # fmt: skip
    """`card.json` of a model trained on `train_rows` of `dataset`, judged on `test_rows`
    (`pred`: its predictions there, `y`: the whole target) against the training `median`.
    Every model kind writes it this way (`predict.workflow.train`, `finetune`)."""
    from thumbview.embed.context import context_rows  # the one context definition

    rows = context_rows(dataset.table, as_of)  # the whole table: ages share one snapshot
    context = TrainingContext.from_rows([rows[i] for i in train_rows])
    skill = HeldOutSkill(within_channel=within)
    if len(test_rows) and pred is not None:
        channels = None if dataset.channels is None else dataset.channels[test_rows]
        skill = heldout_skill(np.asarray(y)[test_rows], pred, median, channels, within)
    card = ModelCard(context, skill)
    card.save(out_dir)
    return card


# ----- the card ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCard:
    """card.json: the training context and the held-out verdict."""

    context: TrainingContext
    skill: HeldOutSkill = field(default_factory=HeldOutSkill)
    version: int = VERSION

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CARD_FILE
        write_json(path, json_safe(asdict(self)))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> ModelCard | None:
        """The card, checked; None for folders written before it (see `legacy_skill`)."""
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            return None
        d = read_json(path, _SCHEMA, CardError)
        try:
            card = cls(TrainingContext(**d["context"]), HeldOutSkill(**d["skill"]), d["version"])
        except TypeError as e:  # an unknown extra field
            raise CardError(f"{path}: {e}") from e
        if (problem := _skill_problem(card.skill)) is not None:
            raise CardError(f"{path}: skill: {problem}")
        return card


def _skill_problem(skill: HeldOutSkill) -> str | None:
    """What a verdict `heldout_skill` wrote cannot look like: held-out rows without their
    MAEs, half an interval, or an interval upside down (a field removed or edited)."""
    if skill.n_rows and (skill.mae_model is None or skill.mae_median is None):
        return f"a verdict on {skill.n_rows} held-out rows needs mae_model and mae_median"
    if (skill.gain_low is None) != (skill.gain_high is None):
        return "gain_low and gain_high come together (both null: no interval)"
    if skill.gain_low is not None and not skill.gain_low <= skill.gain_high:
        return "gain_low must not exceed gain_high"
    return None


def legacy_skill(model_dir: Path, within: bool | None) -> HeldOutSkill:
    """The verdict of a folder without card.json, from its eval.json (no interval)."""
    path = Path(model_dir) / MODEL_EVAL
    try:
        d = load_json(path, ValueError) if path.is_file() else {}  # size and depth limited
        model, base = d.get("mae_log10"), d.get("baselines", {}).get("global-median", {})
        mae_median = base.get("mae_log10")
        held = (d.get("pairwise") or {}).get("skilful")
    except (ValueError, AttributeError, RecursionError) as e:
        log.warning("%s: unreadable (%s); the model's skill is unknown", path, e)
        return HeldOutSkill(within_channel=within, source="unknown")
    if not isinstance(model, (int, float)) or not isinstance(mae_median, (int, float)):
        return HeldOutSkill(within_channel=within, source="unknown")
    within = held if within is None or held is False else within
    return HeldOutSkill(
        n_rows=int(d.get("n", 0) or 0),
        mae_model=float(model),
        mae_median=float(mae_median),
        within_channel=within,
        source=f"{MODEL_EVAL}, no interval",
    )
