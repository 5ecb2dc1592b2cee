"""Crash-safe file writes, used by every stage that produces an artifact.

A reader (or a crash) must see either the old file or the new one, never half of either:
the content goes to a temp file in the same folder (so the rename stays on one filesystem),
is flushed to disk, and then replaces the target in one `os.replace`; the folder is then
flushed too, since a rename lives in the folder's entries: without it a power cut can undo
the rename while a database row written after it (a collected video) survives.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, content: bytes | str | Callable[[Path], None]) -> Path:
    """Write `content` to `path` atomically.

    `content` is bytes, text (UTF-8), or a writer called with the temp path (for libraries
    that write files themselves, e.g. `safetensors.save_file` or `DataFrame.to_csv`).
    """
    path = Path(path)
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if not callable(content):
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        if callable(content):
            content(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for folder in (path.parent, *(d.parent for d in created)):  # new folders' entries too
        fsync_dir(folder)
    return path


def publish_dir(staging: str | Path, target: str | Path) -> Path:
    """Publish a folder of files written together under a new name, all or nothing.

    `staging` (a sibling of `target`, filled by any writer) has its files and itself flushed,
    then becomes `target` in one rename: a crash before it leaves no `target`, after it the
    whole folder. `target` must not exist yet (a rename cannot replace a full folder in one
    step), so a writer publishes each version under a fresh name, e.g. numbered."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for folder in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(folder)
    fsync_dir(staging)
    os.rename(staging, target)
    fsync_dir(target.parent)
    return target


def published(folder: str | Path, name: re.Pattern) -> list[Path]:
    """The folders in `folder` that `publish_dir` published under numbered names: those
    whose name fully matches `name` (its first group the number), oldest first. Hidden
    staging folders never match, so a half-written version is never listed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := name.fullmatch(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder: its renames are already durable
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder (EINVAL)
        pass
    finally:
        os.close(fd)


def user_cache_root() -> Path:
    """`$XDG_CACHE_HOME/thumbview`, else `~/.cache/thumbview`: where derived, rebuildable data lives.

    Never inside a dataset folder: datasets are often read-only, shared or synced, and
    permission bits do not stop root from writing where it should not.
    """
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "thumbview"


def dataset_cache_name(root: str | Path) -> str:
    """`<folder>-<hash of its resolved path>`: readable, yet two folders named alike never share."""
    root = Path(root).resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return f"{root.name}-{tag}"


def json_safe(x: Any) -> Any:
    """Recursively: NaN/inf -> None, numpy scalars -> Python, tuples -> lists, keys -> str.

    Every JSON artifact thumbview writes is strict JSON (`allow_nan=False` readers accept it).
    """
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy scalar
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | Path, payload: Any) -> Path:
    """Strict JSON (NaN/inf -> null, numpy -> Python), indented, written atomically.

    The one way thumbview writes a JSON artifact: readers never see half a file, and
    `json.loads(..., allow_nan=False)`-style readers (browsers, jq) accept every file.
    """
    text = json.dumps(json_safe(payload), indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write(path, text + "\n")


@contextmanager
def while_running(
    marker: str | Path, command: str, *, lazy: bool = False
) -> Iterator[Callable[[], None]]:
    """A marker file that exists, flushed to disk, while the body runs, and is removed when
    it returns: a run that is killed or raises leaves it behind (`layout.RUN_UNFINISHED`).

    With `lazy`, the marker is written only when the body calls the function it is given
    (a resumed run first checks its checkpoint, so a refused resume leaves the folder as it
    was), and removed only if it was written."""
    marker = Path(marker)
    note = (
        f"`{command}` started writing this folder at {time.strftime('%Y-%m-%d %H:%M:%S')} and "
        "has not finished: this file is removed when it does. Run it again (or resume it).\n"
    )
    written = []

    def start() -> None:
        if not written:
            written.append(atomic_write(marker, note))

    if not lazy:
        start()
    yield start
    if written:
        marker.unlink(missing_ok=True)
        fsync_dir(marker.parent)
