"""Title descriptors: a small, named, explainable block beside the MiniLM sentence vector.

MiniLM captures topic and tone but its 384 columns explain nothing to a creator. These
descriptors are what creators argue about: length, capitals ("SHOUTING"), numbers ("7
ways"), question and exclamation marks, emoji, brackets ("[OFFICIAL]"), addressing the
viewer ("you") or speaking as "I", and a small lexicon of clickbait words. Each column has a
name, so the model's weights and explanations can be read directly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from thumbview.embed.base import Encoder

FEATURES = (
    "length (characters)",
    "length (words)",
    "share of capital letters",
    "words in ALL CAPS",
    "digits",
    "numbers",
    "question marks",
    "exclamation marks",
    "emoji",
    "brackets",
    "first-person words",
    "second-person words",
    "clickbait words",
)
FIRST_PERSON = frozenset("i me my mine we us our ours i'm i've we're".split())
SECOND_PERSON = frozenset("you your yours you're you've u ya".split())
CLICKBAIT = frozenset(
    """shocking insane crazy unbelievable secret secrets revealed exposed truth never
    ever best worst ultimate epic amazing incredible must watch gone wrong won't believe
    what happened hack hacks trick tricks easy fast free instantly everyone nobody
    mistake mistakes vs challenge""".split()
)
_WORD = re.compile(r"[\w']+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_BRACKETS = re.compile(r"[\[\]()【】{}]")


class TitleDescriptorEncoder(Encoder):
    """Title text -> 13 named descriptors (see FEATURES); counts, not embeddings."""

    name = "title-desc"
    version = "1"
    modality = "text"

    @property
    def dim(self) -> int:
        return len(FEATURES)

    def feature_names(self) -> list[str]:
        return list(FEATURES)

    def encode(self, inputs: Sequence[str]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([describe_title(str(t)) for t in inputs]).astype(np.float32)


def describe_title(title: str) -> np.ndarray:
    """(13,) descriptors of one title, in FEATURES order."""
    words = _WORD.findall(title)
    lower = [w.lower() for w in words]
    letters = [c for c in title if c.isalpha()]
    caps = sum(c.isupper() for c in letters)
    return np.array(
        [
            len(title),
            len(words),
            caps / len(letters) if letters else 0.0,
            sum(len(w) >= 2 and w.isupper() for w in words),
            sum(c.isdigit() for c in title),
            len(_NUMBER.findall(title)),
            title.count("?") + title.count("？"),
            title.count("!") + title.count("！"),
            count_emoji(title),
            len(_BRACKETS.findall(title)),
            sum(w in FIRST_PERSON for w in lower),
            sum(w in SECOND_PERSON for w in lower),
            sum(w in CLICKBAIT for w in lower),
        ],
        dtype=np.float64,
    )


def count_emoji(text: str) -> int:
    """Pictographic symbols (Unicode category So outside letters/CJK), e.g. 🔥 😱 ✅."""
    return sum(1 for c in text if unicodedata.category(c) == "So" and ord(c) >= 0x2190)
