"""The SAE study on ImageNet activations (issue 27 item 3): `sae train --features imagenet`
at a layer, pooled or every position, `sae analyze` naming latents by the network's own
classifier, the report saying what the SAE read, and `explain` on a new image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from typer.testing import CliRunner

from thumbview.cli import app
from thumbview.sae.config import ActivationSource, SaeError

pytest.importorskip("efficientnet_lite_pytorch")
runner = CliRunner()
# 40 videos: a latent qualifies when all of its top 6 are active.
STUDY = ("--top-k", "6", "--min-active", "5", "--n-extreme", "3", "--n-shuffles", "49")
STUDY += ("--n-boot", "20", "--n-perm", "500")
TRAIN = ("--expansion", "1", "--k", "64", "--batch-size", "16", "--epochs", "3")


def ok(*args) -> object:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sae-imagenet") / "synth"
    ok("synth", root, "--n", "40", "--seed", "2")
    return root


@pytest.fixture(scope="module")
def pooled_sae(synth_dir, tmp_path_factory) -> Path:
    """`sae train --features imagenet` at the conv head, one pooled vector per thumbnail."""
    out = tmp_path_factory.mktemp("pooled") / "SAE"
    cache = out.parent / "cache"
    ok("sae", "train", synth_dir, "--out", out, "--features", "imagenet", *TRAIN,
       "--cache-dir", cache)  # fmt: skip
    return out


def test_cfg_json_records_the_layer_tokens_and_hook(pooled_sae):
    cfg = json.loads((pooled_sae / "sae" / "cfg.json").read_text())
    assert cfg["features"] == "imagenet" and cfg["model_name"] == "efficientnet-lite0"
    assert cfg["hook_name"] == "_conv_head" and cfg["d_in"] == 1280
    assert (cfg["imagenet_layer"], cfg["imagenet_tokens"]) == (-1, "pooled")
    codes = sp.load_npz(pooled_sae / "codes.npz")
    assert codes.shape == (40, cfg["d_sae"])
    assert np.allclose(codes.getnnz(axis=1), 64)  # TopK: exactly k per thumbnail


def test_analyze_names_latents_and_the_report_says_what_the_sae_read(
    pooled_sae, synth_dir, tmp_path
):
    from thumbview.embed.imagenet import class_names

    ok("sae", "analyze", synth_dir, "--sae", pooled_sae, *STUDY, "--out", tmp_path / "study",
       "--cache-dir", pooled_sae.parent / "cache")  # fmt: skip
    study = tmp_path / "study"
    table = pd.read_csv(study / "features.csv")
    names = set(class_names())
    assert table["latent_name"].notna().all()
    assert all(set(n.split(", ")) <= names for n in table["latent_name"])  # 3 real classes
    summary = json.loads((study / "summary.json").read_text())
    assert summary["activations"]["features"] == "imagenet"
    assert summary["activations"]["hook_name"] == "_conv_head"
    html = (study / "report.html").read_text()
    assert "<h1>Which things an ImageNet network sees in a thumbnail" in html
    assert "SAE trained on: the ImageNet-trained EfficientNet-Lite0" in html
    assert "looks like: " in html and len(list((study / "grids").glob("*.png"))) == 6
    # explain on a new image: every active latent named, studied or not
    image = next((synth_dir / "images").glob("*.jpg"))
    found = json.loads(ok("explain", pooled_sae, image, "--study", study, "--json").stdout)
    assert len(found) == 10 and all(f["activation"] > 0 for f in found)
    assert all(set(f["name"].split(", ")) <= names for f in found)
    table_out = ok("explain", pooled_sae, image, "--study", study, "--top", "3").stdout
    assert "looks like" in table_out


def test_explain_recomputes_the_codes_sae_train_wrote(pooled_sae, synth_dir):
    """SaeEncoder rebuilds the same activations from cfg.json for a new image."""
    from thumbview.data.dataset import load_dataset
    from thumbview.data.images import load_image
    from thumbview.inference import SaeEncoder

    ds = load_dataset(synth_dir)
    rows = [0, 7]
    z = SaeEncoder.load(pooled_sae).latents([load_image(ds.image_source(r)) for r in rows])
    codes = sp.load_npz(pooled_sae / "codes.npz").toarray()[rows]
    np.testing.assert_allclose(z, codes, rtol=1e-4, atol=1e-4)


def test_sae_lens_reads_the_imagenet_sae(pooled_sae, synth_dir):
    sae_lens = pytest.importorskip("sae_lens")
    from thumbview.sae.folder import load_sae

    theirs = sae_lens.SAE.load_from_disk(str(pooled_sae / "sae"))
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.d_in == 1280
    x = torch.randn(8, 1280).abs()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs.encode(x), load_sae(pooled_sae).encode(x), rtol=1e-5, atol=1e-5
        )


def test_every_position_of_a_block_trains_and_codes_are_the_max_over_positions(synth_dir, tmp_path):
    """--tokens all: each spatial position is a training row (14 x 14 after block 5); the
    study's row per video is each latent's max over the image, the same for `explain`."""
    from thumbview.data.dataset import load_dataset
    from thumbview.data.images import load_image
    from thumbview.inference import SaeEncoder

    out = tmp_path / "SAE"
    res = ok("sae", "train", synth_dir, "--out", out, "--features", "imagenet", "--layer", "5",
             "--tokens", "all", "--expansion", "2", "--k", "8", "--batch-size", "256",
             "--epochs", "1")  # fmt: skip
    assert "SAE on 7,840 activations" in res.output  # 40 images x 196 positions
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert (cfg["hook_name"], cfg["d_in"], cfg["imagenet_tokens"]) == ("_blocks.5", 80, "all")
    codes = sp.load_npz(out / "codes.npz").toarray()
    assert codes.shape == (40, 160)
    assert (np.count_nonzero(codes, axis=1) >= 8).all()  # the union over positions
    image = load_image(load_dataset(synth_dir).image_source(3))
    np.testing.assert_allclose(
        SaeEncoder.load(out).latents([image])[0], codes[3], rtol=1e-4, atol=1e-4
    )
    from thumbview.sae.analyze import sae_activations_info

    info, names = sae_activations_info(out)
    assert names is None and info["latent_names"].startswith("not available: layer 5")


def test_a_planted_classifier_direction_is_named_by_its_class():
    """A decoder row equal to W_fc[c] raises class c's logit most: the latent is named c."""
    from thumbview.embed.imagenet import build_network, class_names
    from thumbview.sae.architectures import build_sae
    from thumbview.sae.config import sae_config
    from thumbview.sae.sources import latent_names

    w_fc = build_network()._fc.weight.detach()  # (1000, 1280)
    sae = build_sae(sae_config(d_in=1280, expansion_factor=1, k=4), seed=0)
    planted = {3: 285, 10: 967, 500: 0, 1279: 999}  # latent -> class
    with torch.no_grad():
        for latent, c in planted.items():
            sae.W_dec[latent] = w_fc[c] / w_fc[c].norm()
    names = latent_names(sae, ActivationSource("imagenet"))
    assert len(names) == 1280
    for latent, c in planted.items():
        assert names[latent].split(", ")[0] == class_names()[c]
    assert latent_names(sae, ActivationSource("imagenet", layer=12)) is None  # not the head
    assert latent_names(sae, ActivationSource("title")) is None


def test_sources_defaults_and_cfg_round_trip():
    from thumbview.sae.sources import ImagenetStage, source_cfg, source_from_cfg

    assert ActivationSource("imagenet") == ActivationSource("imagenet", layer=-1, tokens="pooled")
    assert ActivationSource().layer == -2 and ActivationSource().tokens == "cls"
    with pytest.raises(SaeError, match="takes --tokens pooled or all"):
        ActivationSource("imagenet", tokens="cls")
    with pytest.raises(SaeError, match="takes --tokens cls or all"):
        ActivationSource("clip", tokens="pooled")
    with pytest.raises(SaeError, match="needs --features clip or imagenet"):
        ActivationSource("title", tokens="all")
    for layer, tokens, hook in [(-1, "pooled", "_conv_head"), (16, "all", "_conv_head"),
                                (4, "all", "_blocks.4")]:  # fmt: skip
        source = ActivationSource("imagenet", layer=layer, tokens=tokens)
        stage = ImagenetStage(layer, positions=tokens == "all")
        cfg = source_cfg(source, stage)
        assert cfg["hook_name"] == hook and source_from_cfg(cfg) == source


def test_a_bad_layer_is_one_line(synth_dir, tmp_path):
    res = runner.invoke(
        app,
        [
            "sae",
            "train",
            str(synth_dir),
            "--out",
            str(tmp_path / "o"),
            "--features",
            "imagenet",
            "--layer",
            "20",
        ],  # fmt: skip
    )
    assert res.exit_code == 2 and "layer 20 is out of range" in res.output
    assert "Traceback" not in res.output


def test_report_title_follows_the_feature_source():
    from thumbview.sae.report import report_title

    assert report_title({"features": "title"}) == "Which title features go with more views?"
    assert "ImageNet" in report_title({"features": "imagenet"})
    assert "CLIP" in report_title({"features": "clip"})
    assert "descriptors" in report_title({"features": "visual"})
    assert report_title(None) == "Which SAE features go with more views?"


# ---------------------------------------------- `sae analyze --sae` reuses what training coded


@pytest.fixture(scope="module")
def positions_sae(synth_dir, tmp_path_factory) -> Path:
    """An SAE of every position of block 5 (the slow path: analyze would stream images)."""
    out = tmp_path_factory.mktemp("positions") / "SAE"
    ok("sae", "train", synth_dir, "--out", out, "--features", "imagenet", "--layer", "5",
       "--tokens", "all", "--expansion", "2", "--k", "8", "--batch-size", "256",
       "--epochs", "1")  # fmt: skip
    return out


def _no_streaming(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the images were run through the network again")

    monkeypatch.setattr("thumbview.sae.sources.image_codes", refuse)


def _latents(sae_dir, data, caplog):
    from thumbview.data.dataset import load_dataset
    from thumbview.sae.analyze import latents_for_dataset

    caplog.clear()
    with caplog.at_level("INFO", logger="thumbview"):
        return latents_for_dataset(load_dataset(data), sae_dir).toarray()


def test_analyze_reuses_the_training_codes_and_gets_the_streamed_tables(
    positions_sae, synth_dir, tmp_path, monkeypatch
):
    """The reused codes are the streamed ones: the same features.csv and all_features.csv."""
    import shutil

    key = json.loads((positions_sae / "codes.json").read_text())
    assert key["positions"] is True and key["rows"] == 40 and key["encoder"]["hook"] == "_blocks.5"
    streamed = tmp_path / "streamed"
    shutil.copytree(positions_sae, streamed)
    (streamed / "codes.json").unlink()  # no key: the codes cannot be vouched for
    ok("sae", "analyze", synth_dir, "--sae", streamed, *STUDY, "--out", tmp_path / "a")
    with monkeypatch.context() as m:
        _no_streaming(m)
        ok("sae", "analyze", synth_dir, "--sae", positions_sae, *STUDY, "--out", tmp_path / "b")
        ok("sae", "analyze", synth_dir, "--sae", positions_sae / "sae", *STUDY,
           "--control", "age", "--out", tmp_path / "c")  # fmt: skip
    for name in ("features.csv", "all_features.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "a" / name), pd.read_csv(tmp_path / "b" / name), check_exact=True
        )


def test_stale_codes_are_recomputed_and_the_log_says_why(
    positions_sae, synth_dir, tmp_path, caplog
):
    """Weights trained on since, or another dataset: the codes on disk are not used."""
    import shutil

    from safetensors.torch import load_file, save_file

    stored = sp.load_npz(positions_sae / "codes.npz").toarray()
    moved = tmp_path / "SAE"
    shutil.copytree(positions_sae, moved)
    weights = moved / "sae" / "sae_weights.safetensors"
    tensors = load_file(weights)
    tensors["b_enc"] = tensors["b_enc"] + 0.5  # as if `sae train --resume` had trained on
    save_file(tensors, weights)
    z = _latents(moved, synth_dir, caplog)
    assert "other SAE weights" in caplog.text and not np.allclose(z, stored)
    assert any(r.levelname == "WARNING" for r in caplog.records)

    from thumbview.data.synth import SynthConfig, make_synthetic

    other = make_synthetic(tmp_path / "other", SynthConfig(n=40, seed=5))  # not the CLI: it
    # resets logging's handlers, caplog's among them
    z = _latents(positions_sae, other, caplog)
    assert "other images or rows" in caplog.text and not np.allclose(z, stored)
    z = _latents(positions_sae, synth_dir, caplog)  # the training data: reused
    assert "reusing" in caplog.text and np.array_equal(z, stored)


def test_codes_of_another_layer_or_pooling_are_not_reused(positions_sae, synth_dir):
    from thumbview.data.dataset import load_dataset
    from thumbview.sae.codes import saved_codes
    from thumbview.sae.sources import ImagenetStage

    ds, folder = load_dataset(synth_dir), positions_sae / "sae"
    codes, why = saved_codes(folder, ImagenetStage(layer=5, positions=True), ds, 160)
    assert codes is not None, why  # the encoder training used: the codes are vouched for
    for encoder, said in (
        (ImagenetStage(layer=5, positions=False), "pooled vs every position"),
        (ImagenetStage(layer=6, positions=True), "network, layer or hook"),
    ):
        codes, why = saved_codes(folder, encoder, ds, 160)
        assert codes is None and said in why


UNPICKLED: list = []


def _record(what: str) -> None:
    UNPICKLED.append(what)


class _Planted:
    """Unpickling this calls `_record`: a damaged codes file must never be unpickled."""

    def __reduce__(self):
        return (_record, ("unpickled",))


def test_damaged_codes_fall_back_without_unpickling(positions_sae, synth_dir, tmp_path, caplog):
    import shutil

    stored = sp.load_npz(positions_sae / "codes.npz").toarray()
    moved = tmp_path / "SAE"
    shutil.copytree(positions_sae, moved)
    (moved / "codes.npz").write_bytes(b"not a zip file")
    z = _latents(moved, synth_dir, caplog)
    assert "is damaged" in caplog.text
    assert np.array_equal(z, stored)  # streamed instead: the same batches, the same numbers
    with open(moved / "codes.npz", "wb") as f:  # objects where scipy's arrays belong
        np.savez(f, format=np.array([_Planted()], dtype=object), shape=np.array([40, 160]))
    np.load(moved / "codes.npz", allow_pickle=True)["format"]  # the plant works when unpickled
    assert UNPICKLED == ["unpickled"]
    UNPICKLED.clear()
    z = _latents(moved, synth_dir, caplog)
    assert "is damaged" in caplog.text and UNPICKLED == []
    assert np.array_equal(z, stored)
    sp.save_npz(moved / "codes.npz", sp.csr_matrix(stored[:, :7]))  # wrong shape, same key
    z = _latents(moved, synth_dir, caplog)
    assert "expected (40, 160)" in caplog.text
