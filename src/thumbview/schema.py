"""Reading a JSON artifact that someone else may have written: read, parse, then check its shape.

Model folders are shared, downloaded and hand-edited, so their JSON is read as untrusted.
`load_json` is the one reader for such files: it refuses a path that is not a regular file
(a FIFO would block, `/dev/zero` never ends) before reading a byte, reads at most a size cap
(+1 byte, to tell "at the cap" from "over it"), and refuses nesting deeper than
`MAX_JSON_DEPTH` *before* `json.loads` recurses into it (10^5 brackets would raise
RecursionError, or crash a thread with a small stack). Every message names the file.
`parse_json` is the same parse for JSON that arrives in memory (a jsonl line, Parquet
metadata). `read_json` adds a schema: plain data, a type (or tuple of types),
`{key: schema}` for an object with those keys (`Optional(schema)` for a key that may be
absent or null), `[schema]` for a list of items, `MapOf(schema)` for an object with any keys.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MAX_JSON_BYTES = 64 * 1024 * 1024  # a model's JSON is kilobytes; refuse to parse a giant
# thumbview's own files nest 6 deep; json's C parser recurses once per level and fails near
# 1000 (or crashes a worker thread's smaller stack well before); `check` recurses per level.
MAX_JSON_DEPTH = 100
# A JSON string (escapes included): its brackets are text, not nesting.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
NOT_REGULAR = "not a regular file (a folder, FIFO or device)"
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)


class SchemaError(ValueError):
    """A JSON file is missing, unreadable or has the wrong shape; the message names the file."""


@dataclass(frozen=True)
class Optional:
    """A key that may be absent or null."""

    schema: Any


@dataclass(frozen=True)
class MapOf:
    """An object with arbitrary string keys, each value matching `schema`."""

    schema: Any


Number = (int, float)


class JsonDepthError(ValueError):
    """JSON nested deeper than the limit (refused before the parser recurses)."""


def read_json(path: str | Path, schema: Any = None, error: type[ValueError] = SchemaError) -> Any:
    """The parsed file, checked against `schema`; any problem raises `error` naming `path`."""
    value = load_json(path, error)
    if schema is not None:
        problem = check(value, schema)
        if problem:
            raise error(f"{path}: {problem}")
    return value


def load_json(
    path: str | Path,
    error: type[ValueError] = SchemaError,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    allow_nan: bool = False,
) -> Any:
    """The parsed JSON file, read within the size and depth limits; any problem (missing,
    not a regular file, too large, not UTF-8, not JSON, too deep) raises `error` naming `path`.
    `allow_nan` admits Python's NaN/Infinity spellings (files other tools wrote)."""
    path = Path(path)
    try:
        data = read_regular_file(path, max_bytes)
    except FileNotFoundError as e:
        raise error(f"{path}: missing") from e
    except OSError as e:  # not a regular file, permissions
        raise error(f"{path}: {e.strerror or e}") from e
    except ValueError as e:  # over the cap
        raise error(f"{path}: {e}") from e
    try:
        return parse_json(data, max_depth=max_depth, allow_nan=allow_nan)
    except JsonDepthError as e:
        raise error(f"{path}: {e}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from e
    except ValueError as e:
        raise error(f"{path}: not valid JSON ({e})") from e


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file; else IsADirectoryError
    ("not a regular file"), decided on the open descriptor before any read. O_NONBLOCK: opening
    a FIFO must not wait for a writer (reads of a regular file are unaffected)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, NOT_REGULAR)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Refused before reading (one line,
    no path): a FIFO, a device (a link to /dev/zero), a folder (IsADirectoryError); a file
    over the cap (ValueError). At most max_bytes + 1 are read, so a file growing while it
    is read cannot take more memory either."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"too large ({size:,} bytes; at most {max_bytes:,})")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"too large (over {max_bytes:,} bytes)")
    return data


def parse_json(
    data: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, allow_nan: bool = False
) -> Any:
    """`json.loads` that refuses nesting over `max_depth` before parsing (JsonDepthError),
    and NaN/Infinity unless `allow_nan`. Other problems: json.JSONDecodeError, UnicodeDecodeError."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if nests_deeper(raw, max_depth):
        raise JsonDepthError(f"nested too deeply (over {max_depth} levels)")
    text = data if isinstance(data, str) else data.decode("utf-8")
    return json.loads(text) if allow_nan else json.loads(text, parse_constant=_no_constant)


def nests_deeper(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether the brackets of `raw` nest deeper than `max_depth` outside strings. Linear:
    strings removed by one regex, brackets counted by numpy in 4 MB chunks, so a 64 MB file
    of brackets costs well under a second and tens of MB."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:  # the common case: cannot nest deeper
        return False
    import numpy as np  # only for files with many brackets: keeps `model_format` cheap

    only = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS), np.uint8)
    carry, chunk = 0, 1 << 22
    for start in range(0, len(only), chunk):
        part = only[start : start + chunk]
        step = (part == ord("[")).astype(np.int32) + (part == ord("{"))
        step -= (part == ord("]")).astype(np.int32) + (part == ord("}"))
        depth = np.cumsum(step, dtype=np.int64) + carry
        if depth.max() > max_depth:
            return True
        carry = int(depth[-1])
    return False


def check(value: Any, schema: Any, where: str = "") -> str | None:
    """None when `value` matches `schema`, else one line saying where and what is wrong."""
    if isinstance(schema, Optional):
        return None if value is None else check(value, schema.schema, where)
    if isinstance(schema, dict):
        return _check_object(value, schema, where)
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            return _wrong(where, "an object", value)
        return next(
            (p for k, v in value.items() if (p := check(v, schema.schema, f"{where}.{k}"))), None
        )
    if isinstance(schema, list):
        if not isinstance(value, list):
            return _wrong(where, "a list", value)
        return next(
            (p for i, v in enumerate(value) if (p := check(v, schema[0], f"{where}[{i}]"))), None
        )
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types:
        return _wrong(where, _names(types), value)
    if not isinstance(value, types):
        return _wrong(where, _names(types), value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where.lstrip('.') or 'value'}: must be a finite number"
    return None


def _check_object(value: Any, schema: dict, where: str) -> str | None:
    if not isinstance(value, dict):
        return _wrong(where, "an object", value)
    for key, sub in schema.items():
        if key not in value:
            if isinstance(sub, Optional):
                continue
            return f"{where.lstrip('.') or 'the file'}: missing {key!r}"
        problem = check(value[key], sub, f"{where}.{key}")
        if problem:
            return problem
    return None


def _wrong(where: str, expected: str, value: Any) -> str:
    return f"{where.lstrip('.') or 'the file'}: expected {expected}, got {type(value).__name__}"


def _names(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
