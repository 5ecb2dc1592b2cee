"""`FinetunedPredictor`: a trained `FusionNet` behind the `ViewPredictor` interface.

It subclasses `ViewPredictor` so every consumer (and the conformal interval code) works as
it does for a head on frozen features: `predict(blocks)` runs the network on the `pixels`
block (and the title block), intervals come from validation residual quantiles. Saved as
`model.safetensors` (network + residual quantiles) and `config.json` (the run's config and
the network's architecture): no pickle.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from thumbview import __version__
from thumbview.embed.base import Encoder
from thumbview.fileio import atomic_write
from thumbview.finetune.config import FORMAT, FORMAT_VERSION, FinetuneConfig, FinetuneError
from thumbview.finetune.encoders import (
    TITLE_MAX_TOKENS,
    build_encoder,
    picture_names,
    picture_stats,
)
from thumbview.layout import MODEL_ENCODERS as ENCODERS_FILE
from thumbview.layout import check_finished
from thumbview.predict.drift import TrainingRange
from thumbview.predict.folder import checked_range, encoder_specs
from thumbview.predict.model import (
    CONFIG_FILE,
    QUANTILE_LEVELS,
    WEIGHTS_FILE,
    ArtifactError,
    ViewPredictor,
    quantile_arrays,
)
from thumbview.schema import MapOf, Number, Optional, check, read_json
from thumbview.tensorfile import (
    FLOAT_DTYPES,
    INT_DTYPES,
    cap_sizes,
    dtype_problem,
    meta_state,
    read_header,
    shape_problem,
)

log = logging.getLogger(__name__)

PREDICT_BATCH = 64


class FinetunedPredictor(ViewPredictor):
    """A fine-tuned network with the predictor interface.

    Fitted attributes: `net_` (FusionNet, eval mode), `arch_` (its JSON description),
    `y_mean_`, `y_std_` (target standardisation), `y_median_`, `n_train_`, `block_dims_`,
    `block_mean_`, `block_scale_` (identity scalers: frames' diversity reads them),
    `quantile_levels_`, `residual_quantiles_` (signed validation residuals), `history_`
    (epoch, train MSE, validation MSE) and `val_metrics_` (a dict).
    """

    def __init__(self, config: FinetuneConfig):  # noqa: D107 - no PredictorConfig here
        self.config = config

    def set_fitted(self, net, arch: dict, y_mean: float, y_std: float, y_median: float, n: int):
        """Attach a trained network and its target scaling (training calls this, then `calibrate`)."""
        self.net_, self.arch_ = net.eval(), arch
        self.y_mean_, self.y_std_, self.y_median_, self.n_train_ = y_mean, y_std, y_median, n
        size = arch["image_size"]
        dims = {"pixels": 3 * size * size, "title": 384, "title-tokens": 2 * TITLE_MAX_TOKENS}
        self.block_dims_ = {name: dims[name] for name in self.config.encoders}
        self.block_mean_ = {name: np.zeros(d) for name, d in self.block_dims_.items()}
        self.block_scale_ = {name: np.ones(d) for name, d in self.block_dims_.items()}
        self.head_ = None  # no linear head: `explain` dispatches on the model's kind
        return self

    def calibrate(self, y_val: np.ndarray, pred_val: np.ndarray) -> FinetunedPredictor:
        """Split-conformal: the signed residual quantiles of the validation channels."""
        self.quantile_levels_ = QUANTILE_LEVELS.copy()
        self.residual_quantiles_ = np.quantile(np.asarray(y_val) - pred_val, QUANTILE_LEVELS)
        return self

    # ----- prediction ------------------------------------------------------------------------
    def predict(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """Point predictions (N,) in target units, in batches of 64, without gradients."""
        return self._run(blocks)[0]

    def embeddings(self, blocks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{"image": (N, D_img), "title": (N, 384) when the network reads titles}: what its
        head reads for these rows, which its training range describes (`finetune.range`).
        The embeddings of the last `predict` are reused when given the same pixels array
        (the same object: a prediction and its range check cost one pass)."""
        last = getattr(self, "_last_embedded", None)
        key = blocks.get(self.config.encoders[0]) if isinstance(blocks, dict) else None
        if last is not None and key is not None and last[0]() is key:
            return last[1]
        return self._run(blocks)[1]

    def range_inputs(self, blocks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the training range describes (`finetune.range`): the `embeddings` and the
        picture's colour and edge descriptors ("picture" (N, 20), `picture_stats`)."""
        size = self.arch_["image_size"]
        return {**self.embeddings(blocks), "picture": picture_stats(blocks["pixels"], size)}

    @property
    def range_widths(self) -> dict[str, int]:
        """{block: width} of `range_inputs`."""
        return {**self.net_.embedding_dims, "picture": len(picture_names())}

    def _run(self, blocks) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(predictions (N,) in target units, `embeddings` {part: (N, D)}), remembered for
        the pixels array given (a weak reference: nothing is kept alive)."""
        import torch

        self._require("net_")
        n = _first_rows(blocks, self.config.encoders)
        key = blocks[self.config.encoders[0]]
        blocks = self._check_blocks(blocks, n)
        device = next(self.net_.parameters()).device
        out, parts = [], {name: [] for name in self.net_.embedding_dims}
        with torch.no_grad():
            for start in range(0, n, PREDICT_BATCH):
                pix, title = self.tensors(blocks, slice(start, start + PREDICT_BATCH), device)
                embedded = self.net_.embed(pix, title)  # {part: (B, D)}
                out.append(self.net_.head_of(embedded).float().cpu().numpy())
                for name, value in embedded.items():
                    parts[name].append(value.float().cpu().numpy())
        dims = self.net_.embedding_dims
        emb = {k: np.concatenate(v).astype(np.float64) if v else np.zeros((0, dims[k]))
               for k, v in parts.items()}  # fmt: skip
        pred = np.concatenate(out) if out else np.zeros(0)
        try:
            self._last_embedded = (weakref.ref(key), emb)
        except TypeError:  # not weakly referable (a list): nothing remembered
            self._last_embedded = None
        return pred.astype(np.float64) * self.y_std_ + self.y_mean_, emb

    def tensors(self, blocks: dict[str, np.ndarray], rows, device):
        """(pixels (B, 3, S, S), title (B, D) or None) tensors for rows of the blocks."""
        import torch

        size = self.arch_["image_size"]
        pix = torch.as_tensor(np.asarray(blocks["pixels"][rows], np.float32), device=device)
        pix = pix.view(-1, 3, size, size)  # (B, 3, S, S)
        names = [n for n in self.config.encoders if n != "pixels"]
        title = None
        if names:
            title = torch.as_tensor(np.asarray(blocks[names[0]][rows], np.float32), device=device)
        return pix, title

    # ----- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """`model.safetensors` (network + residual quantiles) and `config.json`."""
        from safetensors.torch import save_file

        self._require("residual_quantiles_")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = network_state(self.net_)
        tensors["residual_quantiles"] = _tensor(self.residual_quantiles_)
        tensors["quantile_levels"] = _tensor(self.quantile_levels_)
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p))
        atomic_write(directory / CONFIG_FILE, json.dumps(self._meta(), indent=2))
        return directory

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "thumbview_version": __version__,
            "config": self.config.to_dict(),
            "architecture": self.arch_,
            "encoders": list(self.config.encoders),
            "block_dims": self.block_dims_,
            "target": self.config.target,
            "coverage": self.config.coverage,
            "y_mean": self.y_mean_,
            "y_std": self.y_std_,
            "y_median": self.y_median_,
            "n_train": self.n_train_,
            "val_metrics": getattr(self, "val_metrics_", None),
            "history": getattr(self, "history_", []),
        }

    @classmethod
    def load(cls, directory: str | Path) -> FinetunedPredictor:
        """Rebuild the network from its stored architecture and weights (`ArtifactError` if damaged)."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from thumbview.finetune.network import FusionNet

        directory = Path(directory)
        meta = read_meta(directory)
        _require_backbone_package(meta["architecture"].get("kind"))
        try:
            model = cls(FinetuneConfig.from_dict(meta["config"]))
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{directory / CONFIG_FILE}: config: {e}") from e
        if meta["architecture"]["title"] != model.config.title:
            raise ArtifactError(
                f"{directory / CONFIG_FILE}: config.title {model.config.title!r} is not the "
                f"network's (architecture.title {str(meta['architecture']['title'])[:20]!r})"
            )
        _check_network(directory, meta["architecture"])  # before anything is allocated
        try:
            tensors = load_file(directory / WEIGHTS_FILE)
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(f"{directory / WEIGHTS_FILE}: corrupt or truncated ({e})") from e
        arrays = {k: v.double().numpy() for k, v in tensors.items() if not k.startswith("net.")}
        quantiles = quantile_arrays(arrays, directory / WEIGHTS_FILE)
        if quantiles is None:
            raise ArtifactError(f"{directory / WEIGHTS_FILE}: residual_quantiles is missing")
        if bad := sorted(k for k, v in tensors.items() if not bool(torch.isfinite(v).all())):
            raise ArtifactError(f"{directory / WEIGHTS_FILE}: non-finite values in {bad[0]}")
        net = FusionNet(meta["architecture"])
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        model.set_fitted(net, meta["architecture"], meta["y_mean"], meta["y_std"],
                         meta["y_median"], meta["n_train"])  # fmt: skip
        model.quantile_levels_, model.residual_quantiles_ = quantiles
        model.history_, model.val_metrics_ = meta.get("history") or [], meta.get("val_metrics")
        return model


def network_state(net) -> dict:
    """The network's tensors under `net.`, contiguous and detached (what safetensors stores)."""
    return {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def _tensor(a: np.ndarray):
    import torch

    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64))


def _first_rows(blocks, encoders) -> int:
    if not isinstance(blocks, dict) or encoders[0] not in blocks:
        raise FinetuneError(f"missing feature block {encoders[0]!r}")
    return int(np.shape(blocks[encoders[0]])[0])


# config.json as `save` writes it (the network's own fields are checked by building it on
# the meta device against the weights' header: `_check_network`).
META_SCHEMA = {
    "format": str,
    "format_version": int,
    "config": dict,
    "architecture": {"kind": str, "image_size": int, "hidden": int, "dropout": Number,
                     "title": str},
    "encoders": Optional([str]),
    "block_dims": Optional(MapOf(int)),
    "y_mean": Number,
    "y_std": Number,
    "y_median": Number,
    "n_train": int,
    "val_metrics": Optional(MapOf(Optional(Number))),
    "history": Optional([[Number]]),
}  # fmt: skip


_FIELD_JSON = {"str": str, "dict": dict, "str | None": Optional(str), "int": int,
               "int | None": Optional(int), "float": Number, "bool": bool}  # fmt: skip


def _config_schema() -> dict[str, Any]:
    """FinetuneConfig's fields, each typed by its annotation (older files may lack new ones)."""
    return {f.name: Optional(_FIELD_JSON.get(str(f.type), object)) for f in fields(FinetuneConfig)}


def _require_backbone_package(kind: str | None) -> None:
    """A missing timm or EfficientNet-Lite package says how to install it, not "model is
    incomplete" (an effnet folder needs the architecture only: its weights are in the folder)."""
    if kind == "timm":
        from thumbview.finetune.timm_backbone import import_timm

        import_timm()
    elif kind == "effnet":
        from thumbview.finetune.effnet_backbone import import_architecture

        import_architecture()


def read_meta(directory: Path) -> dict[str, Any]:
    """config.json of a fine-tuned model folder (`ArtifactError` when it is not one)."""
    check_finished(directory, ArtifactError)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ArtifactError(f"{directory}: missing {name} (not a saved thumbview model?)")
    meta = read_json(directory / CONFIG_FILE, None, ArtifactError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{directory / CONFIG_FILE}: not a fine-tuned thumbview model")
    version = meta.get("format_version", 0)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(f"{directory / CONFIG_FILE}: saved by a newer thumbview; upgrade")
    if problem := check(meta, META_SCHEMA) or check(meta["config"], _config_schema(), ".config"):
        raise ArtifactError(f"{directory / CONFIG_FILE}: {problem}")
    return meta


def _check_network(directory: Path, arch: dict[str, Any]) -> None:
    """The network `arch` describes has exactly the stored tensors, judged from the weights'
    header and a build on the meta device (no memory): every size in `arch` is first capped
    by what the file holds, so a width of 10^9 is refused before anything is built."""
    from thumbview.finetune.network import FusionNet

    path, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    header = read_header(path, ArtifactError)
    sizes = {"architecture.image_size": arch["image_size"], "architecture.hidden": arch["hidden"]}
    cap_sizes(config, header, {**_sizes(arch, "architecture"), **sizes}, ArtifactError)
    try:
        expected = meta_state(lambda: FusionNet(arch), prefix="net.")
    except Exception as e:  # noqa: BLE001 - transformers/timm raise anything on a bad config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ArtifactError(f"{config}: architecture: {first}") from e
    stored = {k: v for k, v in header.items() if k.startswith("net.")}
    if problem := shape_problem(stored, {k: shape for k, (shape, _) in expected.items()},
                                FLOAT_DTYPES | INT_DTYPES):  # fmt: skip
        raise ArtifactError(f"{path}: {problem} ({CONFIG_FILE} architecture)")
    floats = {k: v for k, v in header.items() if expected.get(k, (0, True))[1]}
    ints = {k: v for k, v in header.items() if k not in floats}  # BatchNorm's counters
    if problem := dtype_problem(floats, FLOAT_DTYPES) or dtype_problem(ints, INT_DTYPES):
        raise ArtifactError(f"{path}: {problem}")


def _sizes(value: Any, where: str) -> dict[str, int]:
    """Every positive whole number inside `value` (a JSON tree), by its path: each is a size,
    a count or an index that no network stored in the file can exceed."""
    if isinstance(value, dict):
        return {k: n for key, v in value.items() for k, n in _sizes(v, f"{where}.{key}").items()}
    if isinstance(value, list):
        return {k: n for i, v in enumerate(value) for k, n in _sizes(v, f"{where}[{i}]").items()}
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return {where: value}
    return {}


KIND = FORMAT  # the `format` of config.json this module loads (entry point "thumbview.model_kinds")


def load_folder(
    directory: str | Path,
) -> tuple[FinetunedPredictor, dict[str, Encoder], TrainingRange | None]:
    """The model, the encoders named in its `encoders.json`, and the range of its held-out
    rows (`finetune.range`: embeddings, picture descriptors, predictions), checking the
    blocks it is given through `range_inputs` (None for folders written without one).

    This kind's entry in the inference layer's registry (`thumbview.inference.kinds`)."""
    directory = Path(directory)
    model = FinetunedPredictor.load(directory)
    saved = encoder_specs(directory, model.config.encoders)
    try:
        encoders = {n: build_encoder(n, saved[n].get("options", {})) for n in model.config.encoders}
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{directory / ENCODERS_FILE}: {e}") from e
    for name, encoder in encoders.items():
        if encoder.dim != model.block_dims_[name]:
            raise ArtifactError(
                f"{directory / ENCODERS_FILE}: {name} gives {encoder.dim} values, the network "
                f"reads {model.block_dims_[name]} ({CONFIG_FILE} architecture.image_size)"
            )
    # the range's blocks must be `range_inputs`' at their widths
    found = checked_range(directory, model.range_widths)
    return model, encoders, None if found is None else replace(found, inputs=model.range_inputs)


def check_folder(directory: str | Path) -> None:
    """A fine-tuned folder is checked by loading it: its weights and encoders are small."""
    load_folder(directory)
