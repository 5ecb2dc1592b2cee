"""Safetensors files someone else may have written: the header is checked before any tensor.

A config says how big a network is (an MLP's `hidden`, an SAE's `d_sae`, a backbone's
width). Building the network first allocates whatever the config claims (10^9 latents: over
100 GB) before the weights can disagree. So every loader of a shared folder reads the
header first (names, shapes, dtypes: kilobytes, whatever the file's size), compares it with
the shapes the config implies (`meta_shapes` builds the network on PyTorch's `meta` device,
which allocates nothing), and only then reads the tensors and builds the network.

The header cannot claim more than the file holds (safetensors checks every tensor's offsets
against the file's size when it opens it), so a config whose sizes equal the header's shapes
is capped by the size of the weights file; `cap_sizes` refuses a size larger than the file's
element count before anything is built from it, even on the meta device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Header = dict[str, tuple[tuple[int, ...], str]]  # {name: (shape, dtype)}, e.g. (3, 4), "F32"
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
INT_DTYPES = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"})


def read_header(path: str | Path, error: type[Exception]) -> Header:
    """{name: (shape, dtype)} of a safetensors file, no tensor read; `error` names the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {}
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                part = f.get_slice(name)
                header[name] = (tuple(int(n) for n in part.get_shape()), str(part.get_dtype()))
            return header
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise error(
            f"{path}: unreadable, corrupt safetensors file or truncated ({str(e)[:200]})"
        ) from e


def n_elements(header: Header) -> int:
    """Elements stored in the file: no size a config gives can exceed it."""
    return sum(math.prod(shape) for shape, _ in header.values())


def cap_sizes(config: Path, header: Header, sizes: dict[str, Any], error: type[Exception]) -> None:
    """Each named size in the file `config` a positive integer no larger than the number of
    values the weights file holds (`header`).

    Checked before a network is built from them (even on the meta device, a size of 10^12
    would overflow a shape); `sizes` maps a config field's name to its value."""
    limit = max(n_elements(header), 1)
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise error(f"{config}: {name} must be a positive integer, got {str(value)[:40]}")
        if value > limit:
            raise error(
                f"{config}: {name}={value} is larger than the weights file holds ({limit} values)"
            )


def meta_state(build: Callable[[], Any], prefix: str = "") -> dict[str, tuple[tuple, bool]]:
    """{prefix + name: (shape, is floating point)} of the state dict of the module `build()`
    returns, built on the meta device: what a config implies, at no memory cost."""
    import torch

    with torch.device("meta"):
        module = build()
    state = module.state_dict()
    return {prefix + k: (tuple(v.shape), v.is_floating_point()) for k, v in state.items()}


def meta_shapes(build: Callable[[], Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{prefix + name: shape} of `meta_state`."""
    return {k: shape for k, (shape, _) in meta_state(build, prefix).items()}


def shape_problem(
    header: Header,
    expected: dict[str, tuple[int, ...]],
    dtypes: Iterable[str] = FLOAT_DTYPES,
    exact: bool = True,
) -> str | None:
    """How the header differs from `expected` (name -> shape), or None.

    Every expected tensor present with that shape and one of `dtypes`; with `exact`, no
    tensor other than the expected ones (names outside `expected` may be checked by the
    caller otherwise)."""
    dtypes = frozenset(dtypes)
    missing = sorted(set(expected) - set(header))
    if missing:
        return f"tensor {missing[0]!r} is missing ({len(missing)} missing)"
    if exact and (extra := sorted(set(header) - set(expected))):
        return f"unexpected tensor {extra[0]!r} ({len(extra)} not part of this model)"
    for name, want in expected.items():
        shape, dtype = header[name]
        if shape != tuple(want):
            return f"tensor {name!r} has shape {shape}, the config implies {tuple(want)}"
        if dtype not in dtypes:
            return f"tensor {name!r} has dtype {dtype}, expected one of {', '.join(sorted(dtypes))}"
    return None


def dtype_problem(header: Header, dtypes: Iterable[str]) -> str | None:
    """The first tensor whose dtype is not one of `dtypes`, in words, or None."""
    dtypes = frozenset(dtypes)
    for name, (_, dtype) in sorted(header.items()):
        if dtype not in dtypes:
            return f"tensor {name!r} has dtype {dtype}, expected one of {', '.join(sorted(dtypes))}"
    return None
