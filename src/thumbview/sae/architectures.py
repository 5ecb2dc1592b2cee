"""The SAE architectures by config type: the one place that knows every subclass.

`SparseAutoencoder` (sae.model) is the shared base and knows none of its subclasses; each
architecture module registers itself by subclassing it (`__init_subclass__`). Importing the
modules here fills that registry, and `build_sae(cfg)` picks the class `cfg` names. A new
architecture is a new module plus one import line below.
"""

from __future__ import annotations

import thumbview.sae.relu_l1  # noqa: F401  (registers ReluL1Sae)
import thumbview.sae.topk  # noqa: F401  (registers TopKSae)
from thumbview.sae.config import SaeBaseConfig
from thumbview.sae.model import SaeError, SparseAutoencoder, registered_architecture


def build_sae(cfg: SaeBaseConfig, seed: int = 0) -> SparseAutoencoder:
    """The SAE of the architecture `cfg` names (a `TopKConfig` or `ReluL1Config`), seeded."""
    cls = registered_architecture(type(cfg))
    if cls is None:
        raise SaeError(f"no SAE architecture for config {type(cfg).__name__}")
    return cls(cfg, seed=seed)
