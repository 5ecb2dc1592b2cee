"""Reading a JSON artifact that someone else may have written: parse, then check its shape.

Model folders are shared, downloaded and hand-edited, so their JSON is read as untrusted:
a deeply nested file must not raise RecursionError, a wrong type must not become a
TypeError deep in the loader, and every message names the file and the field. A schema is
plain data: a type (or tuple of types), `{key: schema}` for an object with those keys
(`Optional(schema)` for a key that may be absent or null), `[schema]` for a list of items,
`MapOf(schema)` for an object with any keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 * 1024 * 1024  # a model's JSON is kilobytes; refuse to parse a giant


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


def read_json(path: str | Path, schema: Any = None, error: type[ValueError] = SchemaError) -> Any:
    """The parsed file, checked against `schema`; any problem raises `error` naming `path`."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{path}: too large for a JSON artifact ({path.stat().st_size} bytes)")
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError as e:
        raise error(f"{path}: missing") from e
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else e
        raise error(f"{path}: not valid JSON ({what})") from e
    if schema is not None:
        problem = check(value, schema)
        if problem:
            raise error(f"{path}: {problem}")
    return value


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
