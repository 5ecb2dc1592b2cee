"""The registry of model kinds: how each kind of model folder loads, found by its format.

A model folder says what it is in `config.json` (`"format": "thumbview-predictor"` for a head
on frozen features, `"thumbview-finetuned"` for a network trained end to end). Each kind is a
module with two functions, registered under the entry-point group `thumbview.model_kinds`
(pyproject.toml) by the package that defines it:

    load_folder(model_dir) -> (model, {encoder name: Encoder}, TrainingRange | None)
    check_folder(model_dir) -> None   # the same checks, without building encoders

`model` has the `ViewPredictor` interface (`predict`, `predict_interval`, `config`). The
inference layer never imports a kind: it looks the format up here. A new kind is a new
module and one entry point; nothing in `thumbview.inference` changes. `register_kind` adds
one at run time (plugins without packaging, tests).
"""

from __future__ import annotations

import functools
import importlib
import logging
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from thumbview.layout import MODEL_CONFIG
from thumbview.schema import SchemaError, load_json

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "thumbview.model_kinds"
# A folder whose config.json names no known format is read as the original kind, whose own
# loader then says precisely what is wrong with it (missing file, corrupt JSON, bad field).
DEFAULT_KIND = "thumbview-predictor"  # = predict.model.FORMAT (tests/test_kinds.py checks)
_registered: dict[str, Any] = {}


class KindError(RuntimeError):
    """No loader is installed for a model kind (a packaging problem, not a bad folder)."""


def register_kind(name: str, kind: Any) -> None:
    """Make `kind` (an object with `load_folder` and `check_folder`) load folders of `name`."""
    _registered[name] = kind


@functools.cache
def _installed() -> dict[str, str]:
    """{format: module path} of the installed entry points (read once: it scans metadata)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    return sorted({*_installed(), *_registered})


def model_format(model_dir: Path) -> str | None:
    """The `format` in a folder's config.json, or None when it cannot be read (cheap: no torch)."""
    try:  # within the size and depth limits: a link to /dev/zero or 10^5 brackets is None
        meta = load_json(Path(model_dir) / MODEL_CONFIG)
    except SchemaError:
        return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else None


def kind_for(model_dir: Path) -> Any:
    """The kind that loads this folder (by its format; the default kind when none matches)."""
    fmt = model_format(model_dir)
    name = fmt if fmt in _registered or fmt in _installed() else DEFAULT_KIND
    return _kind(name)


def _kind(name: str) -> Any:
    if name in _registered:
        return _registered[name]
    target = _installed().get(name)
    if target is None:
        raise KindError(
            f"no loader for model kind {name!r} is installed (known: "
            f"{', '.join(known_kinds()) or 'none'}); reinstall thumbview (pip install -e .) "
            f"so its entry points {ENTRY_POINT_GROUP!r} exist"
        )
    module, _, attr = target.partition(":")
    loaded: ModuleType = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded
