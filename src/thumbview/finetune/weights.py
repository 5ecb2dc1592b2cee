"""`--init` weights: read from a safetensors file, a Hugging Face folder or a Hub id, and
loaded strictly into a backbone.

Both backbone families (transformers in `network`, timm in `timm_backbone`) read their
weights the same way, so the reading lives here, below both: neither imports the other.
Only safetensors are read (never pickle), and a Hub id is fetched as config + safetensors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from thumbview.finetune.config import FinetuneError

log = logging.getLogger(__name__)


def is_hub_id(init: str) -> bool:
    """`org/name` that is not an existing path: a Hugging Face Hub repository id."""
    return "/" in init and not init.startswith((".", "/", "~"))


def read_safetensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise FinetuneError(f"--init {name}: not a readable safetensors file ({e})") from e


def download(hub_id: str, name: str) -> Path:
    """The Hub repo's config.json and model.safetensors in a local folder (no pickle files)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(hub_id, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # offline, unknown id, no safetensors: all mean "cannot get it"
        raise FinetuneError(
            f"--init {name}: not a local file or folder, and the Hub download failed "
            f"({type(e).__name__}); download it first or pass a local path"
        ) from e
    return Path(folder)


PREFIXES = ("", "vision_model.", "vit.", "convnext.", "model.", "backbone.")


def _align(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """The state dict under the key prefix that matches the backbone's own names best
    (a full CLIP, a ViT-for-classification or a bare backbone all name weights differently)."""
    best, overlap = state, -1
    for p in PREFIXES:
        cand = {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
        hits = len(own.keys() & cand.keys())
        if hits > overlap:
            best, overlap = cand, hits
    return best


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    own = model.state_dict()
    state = _align(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        example = (missing or wrong)[0]
        raise FinetuneError(
            f"--init {name}: weights do not fit this backbone ({len(missing)} missing, "
            f"{len(wrong)} wrongly shaped, e.g. {example!r}); pick the matching --backbone"
        )
    if unexpected:
        log.info("--init: ignored %d weights the backbone does not use", len(unexpected))
    model.load_state_dict({k: state[k] for k in own})
