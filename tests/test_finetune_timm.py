"""`thumbview finetune --backbone timm:MODEL`: tiny timm models on synthetic thumbnails, on CPU.

Needs the `thumbview[timm]` extra (timm + a torchvision that matches torch); the main venv
has no timm, so the whole module skips there. CI runs it in a second venv (`.ci/run`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from thumbview.cli import app  # noqa: E402
from thumbview.data.dataset import load_dataset  # noqa: E402
from thumbview.data.images import load_image  # noqa: E402
from thumbview.data.synth import SynthConfig, make_synthetic  # noqa: E402
from thumbview.finetune.config import FinetuneConfig  # noqa: E402
from thumbview.finetune.model import FinetunedPredictor  # noqa: E402
from thumbview.finetune.network import build_network  # noqa: E402
from thumbview.finetune.train import finetune  # noqa: E402
from thumbview.inference import LoadedPredictor  # noqa: E402

runner = CliRunner()
FAST = {"batch_size": 32, "workers": 0, "patience": 50, "image_size": 32}
VIT_ARGS = {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
TINY = {
    "vit": {"backbone": "timm:vit_tiny_patch16_224", "backbone_args": VIT_ARGS},
    "cnn": {"backbone": "timm:convnext_atto",
            "backbone_args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm-data") / "ds"
    return make_synthetic(root, SynthConfig(n=160, seed=0, n_channels=16))


@pytest.fixture(scope="module", params=sorted(TINY))
def trained(request, data, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(f"timm-{request.param}") / "model"
    cfg = FinetuneConfig(**TINY[request.param], **FAST, epochs=3, lr=3e-3)
    finetune(load_dataset(data), cfg, out)
    return request.param, out


def _vit(embed_dim: int = 32, size: int = 32, classes: int = 10) -> torch.nn.Module:
    """A timm ViT as someone would have trained and saved it (with a classifier head)."""
    torch.manual_seed(1)
    args = {**VIT_ARGS, "embed_dim": embed_dim}
    return timm.create_model("vit_tiny_patch16_224", num_classes=classes, img_size=size, **args)


def test_loss_decreases_and_folder_records_the_timm_model(trained):
    name, out = trained
    meta = json.loads((out / "config.json").read_text())
    history = meta["history"]
    assert len(history) == 3 and history[-1][1] < history[0][1]  # train MSE falls
    arch = meta["architecture"]
    model_name = TINY[name]["backbone"].removeprefix("timm:")
    assert arch["kind"] == "timm" and arch["timm"]["model_name"] == model_name
    assert arch["timm"]["timm_version"] == timm.__version__
    # timm's own normalisation for the model, not the transformers backbones' 0.5/0.5
    want = timm.data.resolve_model_data_config(timm.create_model(model_name))
    assert arch["timm"]["mean"] == pytest.approx(list(want["mean"]))
    assert arch["timm"]["std"] == pytest.approx(list(want["std"]))
    assert arch["image_size"] == 32
    # a ViT takes the input side; a CNN has no img_size argument and takes any side
    assert ("img_size" in arch["timm"]["kwargs"]) == (name == "vit")


def test_save_load_round_trip_and_commands_accept_the_model(trained, data, tmp_path, monkeypatch):
    _, out = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # loading rebuilds from the folder alone
    ds = load_dataset(data)
    images = [load_image(p) for p in ds.paths[:6]]
    a = LoadedPredictor.load(out).predict_rows(images, list("abcdef"), ["one", "two"] * 3)
    FinetunedPredictor.load(out).save(tmp_path / "again")  # load -> save -> load
    again = FinetunedPredictor.load(tmp_path / "again")
    b = again.predict(LoadedPredictor.load(out).blocks(images, ["one", "two"] * 3))
    assert np.array_equal([p.log10 for p in a], b)
    assert len({round(p.log10, 6) for p in a}) > 1 and all(p.low < p.views < p.high for p in a)
    res = runner.invoke(app, ["predict", str(out), str(ds.paths[0]), "--title", "one", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["log10"] == pytest.approx(a[0].log10, abs=1e-6)
    # `evaluate` through the saved folder reproduces the trained network's hold-out score
    res = runner.invoke(app, ["evaluate", str(out), str(data), "--json"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "eval.json").read_text())
    assert json.loads(res.stdout)["spearman"] == pytest.approx(saved["spearman"], abs=1e-6)


def test_init_from_a_timm_safetensors_file_and_folder(tmp_path):
    source = _vit()
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    cfg = FinetuneConfig(**TINY["vit"], **FAST, init=str(weights))
    net, _ = build_network(cfg)
    mine = net.image.model.state_dict()
    assert mine.keys() == source.state_dict().keys() - {"head.weight", "head.bias"}
    assert all(torch.equal(mine[k], source.state_dict()[k]) for k in mine)
    # a timm folder: its config.json's pretrained_cfg sets the normalisation
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              folder / "model.safetensors")  # fmt: skip
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224",
        "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}))  # fmt: skip
    net, arch = build_network(FinetuneConfig(**{**TINY["vit"], **FAST, "init": str(folder)}))
    assert arch["timm"]["mean"] == [0.1, 0.2, 0.3]
    assert torch.equal(net.image.model.state_dict()["blocks.0.attn.qkv.weight"],
                       source.state_dict()["blocks.0.attn.qkv.weight"])  # fmt: skip


def test_init_resamples_position_embeddings_to_the_input_side(tmp_path):
    """timm's checkpoint filter runs: 32 px weights (4x4 patches) start a 48 px model (6x6)."""
    source = _vit(size=32)
    weights = tmp_path / "vit32.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    cfg = FinetuneConfig(**{**TINY["vit"], **FAST, "image_size": 48}, init=str(weights))
    net, arch = build_network(cfg)
    assert arch["image_size"] == 48
    assert net.image.model.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(net.image.model.state_dict()["blocks.0.mlp.fc1.weight"],
                       source.state_dict()["blocks.0.mlp.fc1.weight"])  # fmt: skip


def _one_line_error(args) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "error" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output  # --json: no progress lines
    return res.output


def test_bad_init_and_backbone_are_one_clear_line(data, tmp_path, monkeypatch):
    head = ["finetune", str(data), "--out", str(tmp_path / "m"), "--json", "--workers", "0"]
    base = [*head, "--backbone", "timm:vit_tiny_patch16_224", "--image-size", "32",
            *[a for k, v in VIT_ARGS.items() for a in ("--backbone-arg", f"{k}={v}")]]  # fmt: skip
    missing = tmp_path / "nope.safetensors"
    assert "no such file" in _one_line_error([*base, "--init", str(missing)])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    assert "not a readable safetensors" in _one_line_error([*base, "--init", str(junk)])
    wider = tmp_path / "wider.safetensors"  # embed_dim 48 weights for an embed_dim 32 model
    save_file({k: v.contiguous() for k, v in _vit(embed_dim=48).state_dict().items()}, wider)
    line = _one_line_error([*base, "--init", str(wider)])
    assert "do not fit" in line and "wider.safetensors" in line
    (tmp_path / "cnn").mkdir()
    save_file({"w": torch.zeros(2)}, tmp_path / "cnn" / "model.safetensors")
    (tmp_path / "cnn" / "config.json").write_text('{"architecture": "convnext_atto"}')
    assert "timm:convnext_atto" in _one_line_error([*base, "--init", str(tmp_path / "cnn")])
    # a Hub id offline: one line, no download attempt hanging
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"
    assert "Hub download failed" in _one_line_error([*base, "--init", hub])
    assert "has no model" in _one_line_error([*head, "--backbone", "timm:no_such_net"])
    assert "cannot build" in _one_line_error([*base, "--backbone-arg", "depthh=2"])
    assert "timm:MODEL" in _one_line_error([*head, "--backbone", "vit-tiny",
                                            "--backbone-arg", "depth=2"])  # fmt: skip


def test_cli_trains_a_timm_cnn_from_scratch(data, tmp_path):
    out = tmp_path / "m"
    args = ["finetune", str(data), "--out", str(out), "--backbone", "timm:convnext_atto",
            "--backbone-arg", "depths=[1, 1, 1, 1]", "--backbone-arg", "dims=[8, 8, 16, 16]",
            "--image-size", "32", "--title", "none", "--epochs", "1", "--workers", "0",
            "--json"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs_run"] == 1
    arch = json.loads((out / "config.json").read_text())["architecture"]
    assert arch["timm"]["kwargs"] == {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
    loaded = LoadedPredictor.load(out)
    assert loaded.model.net_.image.dim == 16
    assert load_file(out / "model.safetensors").keys() >= {"net.image.model.stem.0.weight"}


def test_resume_after_interruption_equals_an_uninterrupted_run(data, tmp_path):
    """Checkpoints hold a timm tower's weights and optimiser state like any other backbone's."""
    from _resume import assert_resume_equals_straight

    cfg = FinetuneConfig(**TINY["vit"], **FAST, epochs=3, holdout=0.0)
    assert_resume_equals_straight(load_dataset(data), cfg, tmp_path)
