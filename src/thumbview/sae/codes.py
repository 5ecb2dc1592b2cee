"""The training dataset's SAE codes (`codes.npz`) and the sidecar saying what produced them.

`sae train` has the dataset's activations at hand after fitting, so it writes each video's
latents once; `sae analyze --sae` on the same dataset reads them back instead of running
the network over every image again (minutes for an SAE of every position). The sidecar
(`codes.json`) is the cache key: the SAE weights' sha256, the encoder's spec and whether
it reads every position, and one content digest of the dataset's rows in order. Any
difference (trained on since, another layer, dataset, row set or image) means recompute;
the sidecar is written last, so a run killed while writing the codes leaves none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from thumbview.data.dataset import ThumbnailDataset
from thumbview.fileio import atomic_write
from thumbview.layout import SAE_CODES, SAE_CODES_KEY, SAE_SUBDIR, SAE_WEIGHTS
from thumbview.schema import SchemaError, load_json

logger = logging.getLogger(__name__)

# key field -> why codes whose sidecar differs there cannot be reused (first mismatch named)
_STALE = {
    "weights_sha256": "they were written for other SAE weights (trained on since?)",
    "encoder": "they were written from other activations (network, layer or hook)",
    "positions": "they were written from other activations (pooled vs every position)",
    "rows": "they were written for a dataset with another number of rows",
    "inputs_sha256": "they were written for other images or rows (another dataset?)",
}


def codes_key(weights: Path, encoder: Any, dataset: ThumbnailDataset) -> dict[str, Any]:
    """Everything that determines the codes of `dataset` under the SAE saved in `weights`.

    The inputs' digest is over the same per-row content digests the feature cache keys on
    (image bytes, or title text), in row order, so reordered or edited rows change it.
    """
    from thumbview.embed.cache import input_digests

    inputs = hashlib.sha256(b"".join(input_digests(dataset, encoder))).hexdigest()
    key = {
        "weights_sha256": _file_sha256(weights),
        "encoder": encoder.spec(),
        "positions": bool(getattr(encoder, "positions", False)),
        "rows": len(dataset),
        "inputs_sha256": inputs,
    }
    return json.loads(json.dumps(key))  # as it reads back from the sidecar


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_codes(out_dir: Path, codes: sp.csr_matrix, key: dict[str, Any] | None) -> Path:
    """`out_dir/codes.npz`, then (if `key`) its sidecar: the sidecar last, whole, vouches."""
    path, sidecar = out_dir / SAE_CODES, out_dir / SAE_CODES_KEY
    sidecar.unlink(missing_ok=True)  # else a run killed mid-write leaves the old key

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: save_npz would append .npz to a name
            sp.save_npz(f, codes)

    atomic_write(path, save)
    if key is not None:
        atomic_write(sidecar, json.dumps(key))
    return path


def codes_path(sae_folder: Path) -> Path:
    """Where `sae train` put the codes of the SAE whose weights are in `sae_folder`: its
    `--out` folder (the weights are in `--out/sae`), or beside the weights."""
    return (sae_folder.parent if sae_folder.name == SAE_SUBDIR else sae_folder) / SAE_CODES


def saved_codes(
    sae_folder: Path, encoder: Any, dataset: ThumbnailDataset, d_sae: int
) -> tuple[sp.csr_matrix | None, str]:
    """(codes, why): the codes `sae train` wrote for exactly this SAE and dataset, else
    (None, the reason they cannot be used). Never unpickles; a damaged file is a reason."""
    path = codes_path(sae_folder)
    sidecar = path.with_name(SAE_CODES_KEY)
    if not path.is_file():
        return None, f"no {SAE_CODES} in {path.parent}"
    stored = _read_key(sidecar)
    if stored is None:
        return None, f"{path} has no readable {SAE_CODES_KEY} saying what produced it"
    key = codes_key(sae_folder / SAE_WEIGHTS, encoder, dataset)
    stale = next((f for f in _STALE if stored.get(f) != key[f]), None)
    if stale is not None or stored != key:
        return None, f"{path} cannot be reused: {_STALE.get(stale, 'its key differs')}"
    return _checked_codes(path, (len(dataset), d_sae))


def _read_key(sidecar: Path) -> dict[str, Any] | None:
    try:
        stored = load_json(sidecar) if sidecar.is_file() else None
    except SchemaError:
        return None
    return stored if isinstance(stored, dict) else None


def _checked_codes(path: Path, shape: tuple[int, int]) -> tuple[sp.csr_matrix | None, str]:
    try:
        codes = sp.load_npz(path)  # np.load(allow_pickle=False) inside: objects are refused
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
        return None, f"{path} is damaged ({type(e).__name__}: {e})"
    if codes.shape != shape or codes.dtype.kind != "f":
        return None, f"{path} holds {codes.shape} {codes.dtype}, expected {shape} floats"
    codes = codes.tocsr().astype(np.float32, copy=False)
    if not np.isfinite(codes.data).all():
        return None, f"{path} holds non-finite codes"
    return codes, f"{path} (written by `sae train` for these weights and rows)"
