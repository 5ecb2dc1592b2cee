"""`thumbview finetune`: tiny backbones on synthetic thumbnails, end to end, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from _resume import assert_resume_equals_straight  # noqa: E402
from thumbview.cli import app  # noqa: E402
from thumbview.data.dataset import load_dataset  # noqa: E402
from thumbview.data.images import load_image  # noqa: E402
from thumbview.data.synth import SynthConfig, make_synthetic  # noqa: E402
from thumbview.finetune.config import FinetuneConfig, FinetuneError  # noqa: E402
from thumbview.finetune.train import finetune  # noqa: E402
from thumbview.inference import LoadedPredictor  # noqa: E402

runner = CliRunner()
FAST = {"backbone": "test-vit", "batch_size": 32, "workers": 0, "patience": 50}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft-data") / "ds"
    return make_synthetic(root, SynthConfig(n=160, seed=0, n_channels=16))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ft-model") / "model"
    result = finetune(load_dataset(data), FinetuneConfig(**FAST, epochs=3), out)
    return result, out


def test_loss_decreases_and_folder_follows_train_conventions(trained):
    result, out = trained
    history = json.loads((out / "config.json").read_text())["history"]
    assert len(history) == 3 and history[-1][1] < history[0][1]  # train MSE falls
    for name in ("model.safetensors", "encoders.json", "training.json", "eval.json",
                 "learning_curve.png", "pred_vs_actual.png", "baselines/title/config.json"):  # fmt: skip
        assert (out / name).is_file(), name
    ev = json.loads((out / "eval.json").read_text())
    assert ev["split"] == "holdout" and "title-only" in ev["baselines"]
    seen = json.loads((out / "training.json").read_text())["video_ids"]
    assert len(seen) == result.n_train + result.n_val
    from thumbview.predict.card import ModelCard  # what the model says of itself (issue 28)

    card = ModelCard.load(out)
    assert card.context.n == len(seen) and card.context.horizon_days > 0
    assert card.skill.n_rows == ev["n"] and card.skill.mae_median == pytest.approx(
        ev["baselines"]["global-median"]["mae_log10"]
    )


def test_save_load_gives_identical_predictions_and_evaluate_agrees(trained, data):
    from thumbview.evaluate import evaluate

    _, out = trained
    ds = load_dataset(data)
    images = [load_image(p) for p in ds.paths[:4]]
    a = LoadedPredictor.load(out).predict_images(images, list("abcd"), ["one", "two"])
    b = LoadedPredictor.load(out).predict_images(images, list("abcd"), ["one", "two"])
    assert [p.log10 for p in a] == [p.log10 for p in b]
    assert len({round(p.log10, 6) for p in a}) > 1 and all(p.low < p.views < p.high for p in a)
    # `thumbview evaluate` scores exactly the held-out rows, through the saved folder
    saved = json.loads((out / "eval.json").read_text())
    ev = evaluate(out, ds)
    assert ev.result.model.n == saved["n"]
    assert ev.result.model.spearman == pytest.approx(saved["spearman"], abs=1e-6)


@pytest.mark.slow
def test_learns_a_planted_visual_effect(tmp_path):
    """Warm-coloured thumbnails (x2.5 views planted) are predicted above cold ones, image only."""
    root = make_synthetic(tmp_path / "ds", SynthConfig(n=360, seed=1, n_channels=30,
                                                         noise_sigma=0.1))  # fmt: skip
    ds = load_dataset(root)
    cfg = FinetuneConfig(**{**FAST, "backbone": "test-cnn"}, title="none", epochs=8, lr=3e-3,
                         augment=False)  # fmt: skip
    finetune(ds, cfg, tmp_path / "m")
    seen = set(json.loads((tmp_path / "m" / "training.json").read_text())["video_ids"])
    truth = pd.read_csv(root / "truth.csv").set_index("video_id")
    rows = [i for i, k in enumerate(ds.keys) if k not in seen]
    loaded = LoadedPredictor.load(tmp_path / "m")
    pred = loaded.predict(loaded.blocks([load_image(ds.paths[i]) for i in rows], [""] * len(rows)))
    warm = truth.loc[[ds.keys[i] for i in rows], "warm_colours"].to_numpy() == 1
    # AUC: chance a warm thumbnail is predicted above a cold one (0.5 = chance)
    auc = (pred[warm][:, None] > pred[~warm][None, :]).mean()
    assert auc > 0.7, auc


def test_resume_after_interruption_equals_an_uninterrupted_run(data, tmp_path):
    assert_resume_equals_straight(
        load_dataset(data), FinetuneConfig(**FAST, epochs=3, holdout=0.0), tmp_path
    )


def test_resume_refuses_changed_settings(data, tmp_path):
    ds = load_dataset(data)
    finetune(ds, FinetuneConfig(**FAST, epochs=1, holdout=0.0), tmp_path / "m")
    with pytest.raises(FinetuneError, match="lr"):
        finetune(ds, FinetuneConfig(**FAST, epochs=2, holdout=0.0, lr=0.1), tmp_path / "m",
                 resume=True)  # fmt: skip


def _one_line_error(args) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "error" in res.output
    return " ".join(res.output.split())


def test_bad_init_is_one_clear_line(data, tmp_path):
    base = ["finetune", str(data), "--out", str(tmp_path / "m"), "--backbone", "test-vit"]
    assert "no such file" in _one_line_error([*base, "--init", str(tmp_path / "nope.safetensors")])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    assert "not a readable safetensors" in _one_line_error([*base, "--init", str(junk)])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(3)}, wrong)
    assert "do not fit" in _one_line_error([*base, "--init", str(wrong)])
    assert "Hugging Face model folder" in _one_line_error([*base, "--init", str(tmp_path)])
    assert "needs --init" in _one_line_error([*base[:-1], "clip"])


def test_timm_backbone_without_timm_says_how_to_install(trained, data, tmp_path, monkeypatch):
    import shutil
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as in an install without thumbview[timm]
    args = ["finetune", str(data), "--out", str(tmp_path / "m"), "--json", "--workers", "0",
            "--backbone", "timm:convnext_atto"]  # fmt: skip
    line = _one_line_error(args)
    assert "thumbview[timm]" in line and "torchvision" in line
    # a saved timm model says the same when loaded, not "incomplete"
    _, out = trained
    shutil.copytree(out, tmp_path / "timm-model")
    meta = json.loads((tmp_path / "timm-model" / "config.json").read_text())
    meta["architecture"]["kind"] = "timm"
    (tmp_path / "timm-model" / "config.json").write_text(json.dumps(meta))
    image = str(load_dataset(data).paths[0])
    line = _one_line_error(["predict", str(tmp_path / "timm-model"), image, "--json"])
    assert "thumbview[timm]" in line and "incomplete" not in line


def test_clip_vision_tower_from_local_weights(data, tmp_path, tiny_clip_dir):
    ds = load_dataset(data)
    cfg = FinetuneConfig(**{**FAST, "backbone": "clip"}, init=str(tiny_clip_dir), epochs=1)
    result = finetune(ds, cfg, tmp_path / "m")
    arch = json.loads((tmp_path / "m" / "config.json").read_text())["architecture"]
    assert arch["kind"] == "clip" and arch["image_size"] == 30
    assert np.isfinite(result.validation.spearman)
    # the pretrained weights were used, not a fresh init
    start = load_file(tiny_clip_dir / "model.safetensors")
    from thumbview.finetune.network import build_network

    net, _ = build_network(cfg)
    mine = net.image.model.state_dict()
    key = next(k for k in mine if k.endswith("embeddings.patch_embedding.weight"))
    assert torch.equal(mine[key], start["vision_model.embeddings.patch_embedding.weight"])


@pytest.mark.slow
def test_title_finetune_trains_the_sentence_model(data, tmp_path):
    ds = load_dataset(data).subset(np.arange(60))
    cfg = FinetuneConfig(**FAST, title="finetune", epochs=1, holdout=0.0, title_lr=1e-3)
    finetune(ds, cfg, tmp_path / "m")
    loaded = LoadedPredictor.load(tmp_path / "m")
    img = load_image(ds.paths[0])
    a, b = loaded.predict(loaded.blocks([img, img], ["How I got rich", "boring update"]))
    assert a != b  # the title tower reads the text


def test_every_command_accepts_the_model(trained, data, tmp_path, monkeypatch):
    _, out = trained
    ds = load_dataset(data)
    a, b = (str(p) for p in ds.paths[:2])
    res = runner.invoke(app, ["predict", str(out), a, "--title", "x", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["low"] < json.loads(res.stdout)[0]["high"]
    res = runner.invoke(app, ["evaluate", str(out), str(data), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", a, b, "-t", "one", "-t", "two", "--model", str(out)])
    assert res.exit_code == 0, res.output
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["explain", str(out), a, "--json"])
    assert res.exit_code == 0, res.output
    heat = json.loads(res.stdout)
    assert np.asarray(heat["grid"]).shape == (8, 8) and Path(heat["heatmap"]).is_file()


def test_occlusion_finds_the_cell_that_matters():
    from thumbview.finetune.explain import occlusion_grid

    pixels = np.zeros((3, 32, 32), np.float32)
    pixels[:, :4, :4] = 255  # a bright top-left cell; the "model" reads only its brightness

    def predict(batch):
        return batch[:, :, :4, :4].mean(axis=(1, 2, 3)) / 255

    point, grid = occlusion_grid(predict, pixels, grid=8)
    assert point == pytest.approx(1.0)
    assert np.unravel_index(grid.argmax(), grid.shape) == (0, 0)
    assert np.count_nonzero(grid) == 1


def test_serve_and_frames_accept_the_model(trained, data, tmp_path):
    import av
    from fastapi.testclient import TestClient

    from thumbview.frames import FramesConfig, rank_frames
    from thumbview.serve import app as serve_app

    _, out = trained
    paths = load_dataset(data).paths
    with TestClient(serve_app.create_app(out), base_url="http://127.0.0.1") as c:
        resp = c.post("/predict", files={"image": ("t.jpg", paths[0].read_bytes(), "image/jpeg")})
        assert resp.status_code == 200, resp.text
        assert resp.json()["prediction"]["low"] <= resp.json()["prediction"]["views"]
    video = tmp_path / "v.mp4"
    with av.open(str(video), "w") as f:  # three 1-second shots, each a synthetic thumbnail
        stream = f.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for p in paths[:3]:
            rgb = np.asarray(load_image(p).resize((320, 180)))
            for _ in range(10):
                f.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        f.mux(stream.encode())
    from thumbview.inference import LoadedPredictor

    predictor = LoadedPredictor.load(out)
    result = rank_frames(video, predictor, title="x", top=2, config=FramesConfig(sample_fps=4))
    views = [c.predicted_views for c in result.choices]
    assert 1 <= len(views) <= 2 and views == sorted(views, reverse=True)


def test_cli_trains_and_prints_json(data, tmp_path):
    out = tmp_path / "m"
    args = ["finetune", str(data), "--out", str(out), "--backbone", "test-cnn", "--title", "none",
            "--epochs", "1", "--workers", "0", "--batch-size", "64", "--json"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["epochs_run"] == 1 and got["holdout"]["n"] == got["n_holdout"] > 0
    assert LoadedPredictor.load(out).model.config.encoders == ("pixels",)
    from thumbview.predict.card import ModelCard

    skill = ModelCard.load(out).skill  # the verdict in card.json, as `evaluate --json` gives it
    assert got["verdict"]["summary"] == skill.summary() and got["verdict"]["n_rows"] == skill.n_rows


def test_cli_ends_with_the_held_out_verdict_as_train_does(data, tmp_path):
    """The sentence of card.json's verdict, by `train`'s renderer, is the last thing said
    (followed only by what to try when the model does not beat the median)."""
    from thumbview.cli.finetune import NO_SKILL_NEXT
    from thumbview.predict.card import ModelCard

    out = tmp_path / "m"
    args = ["finetune", str(data), "--out", str(out), "--backbone", "test-cnn", "--title", "none",
            "--epochs", "1", "--workers", "0", "--batch-size", "64"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    skill = ModelCard.load(out).skill
    assert skill.n_rows > 0 and skill.mae_model is not None  # a real held-out verdict
    tail = f"verdict: this model {skill.summary()}"
    tail += f" {NO_SKILL_NEXT}" if skill.beats_median is False else ""
    assert " ".join(res.stdout.split()).endswith(tail)  # last, whatever the line wrapping


# --- a fine-tuned model carries the pairwise calibration a frozen-feature one does ----------
@pytest.fixture(scope="module")
def skill_runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny image-only runs on the same 240 thumbnails (12 channels, small pictures): one
    on the planted views (warm colours, faces... within each channel), one on views drawn
    independently of the pictures (log-normal around 10K: pure noise). About 5 s together."""
    import shutil

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ft-skill")
    config = SynthConfig(n=240, seed=1, n_channels=12, noise_sigma=0.1, width=96, height=54)
    planted = make_synthetic(root / "planted-data", config)
    noise = Path(shutil.copytree(planted, root / "noise-data"))
    table = pd.read_csv(noise / "metadata.csv", dtype=str, keep_default_na=False)
    views = 10 ** (4 + np.random.default_rng(0).normal(0, 0.4, len(table)))
    table["views"] = np.round(views).astype(int).astype(str)
    table.to_csv(noise / "metadata.csv", index=False)
    cfg = FinetuneConfig(**{**FAST, "backbone": "test-cnn"}, title="none", epochs=6, lr=3e-3,
                         augment=False, holdout=0.3, val_frac=0.3)  # fmt: skip
    out = {}
    for name, folder in (("planted", planted), ("noise", noise)):
        finetune(load_dataset(folder), cfg, root / name)
        out[name], out[f"{name}-data"] = root / name, folder
    return out


def test_finetune_writes_a_pairwise_calibration_that_loads(skill_runs):
    from thumbview.predict.card import ModelCard
    from thumbview.predict.pairwise import PAIRWISE_DIR, PAIRWISE_FILE, PairwiseModel

    for name in ("planted", "noise"):
        out = skill_runs[name]
        saved = json.loads((out / PAIRWISE_DIR / PAIRWISE_FILE).read_text())
        loaded = PairwiseModel.load(out)  # the checked loader compare and predict use
        cal = loaded.calibration_
        assert cal.n_pairs == saved["n_pairs"] > 100 and cal.heldout_brier is not None
        assert loaded.fold_models_ == [] and loaded.fold_predictions({}) is None
        assert not list((out / PAIRWISE_DIR).glob("fold-*"))  # one network: no fold models
        assert LoadedPredictor.load(out).pairwise.calibration_ == cal
        assert ModelCard.load(out).skill.within_channel is cal.skilful  # card.json agrees


def test_a_skilful_finetuned_model_is_not_flagged_and_a_noise_one_is(skill_runs):
    from thumbview.compare import compare
    from thumbview.predict.card import WITHIN_CHANNEL
    from thumbview.predict.pairwise import METHOD

    said = {}
    for name in ("planted", "noise"):
        loaded = LoadedPredictor.load(skill_runs[name])
        paths = load_dataset(skill_runs[f"{name}-data"]).paths[:3]
        images = [load_image(p) for p in paths]
        result = compare(loaded, images, [p.name for p in paths])
        assert result.assumption == METHOD and result.note == ""  # calibrated, not the fallback
        said[name] = (loaded.pairwise.calibration_.skilful, loaded.notes(WITHIN_CHANNEL), result)
    skilful, notes, result = said["planted"]
    assert skilful is True and notes.no_skill == "" and result.no_skill_note == ""
    assert "no demonstrated skill" not in result.verdict
    skilful, notes, result = said["noise"]
    assert skilful is False and notes.no_skill.startswith("no demonstrated skill at choosing")
    assert result.no_skill_note == notes.no_skill and result.tie
    assert result.winner is None and result.rank_labels() == ["=1", "=1", "=1"]


def test_a_rerun_without_held_out_pairs_leaves_no_older_calibration(skill_runs, tmp_path):
    import shutil
    from types import SimpleNamespace

    from thumbview.finetune.report import fit_pairwise
    from thumbview.predict.pairwise import PairwiseModel

    out = Path(shutil.copytree(skill_runs["planted"], tmp_path / "m"))
    no_channels = SimpleNamespace(channels=None)
    assert fit_pairwise(out, no_channels, np.arange(5), np.zeros(5), np.zeros(5)) is None
    assert PairwiseModel.load(out) is None and LoadedPredictor.load(out).pairwise is None


# --- issue 24: a damaged or edited checkpoint is one clear error, and nothing is lost -------


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory) -> Path:
    """A run of 1 epoch (of 2 asked for later with --resume) and its checkpoint."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ft-ckpt") / "m"
    finetune(load_dataset(data), FinetuneConfig(**FAST, epochs=1, holdout=0.0), out)
    return out


def _edit_json(change):
    def tamper(folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        change(state)
        (folder / "state.json").write_text(json.dumps(state))

    return tamper


def _edit_tensors(change):
    def tamper(folder: Path) -> None:
        tensors = load_file(folder / "state.safetensors")
        change(tensors)
        save_file(tensors, folder / "state.safetensors", metadata={"epoch": "1"})

    return tamper


def _first(tensors: dict, prefix: str) -> str:
    return next(k for k in sorted(tensors) if k.startswith(prefix))


TAMPERED = {
    "json cut short": (lambda f: (f / "state.json").write_text('{"epoch": 1, '), "state.json"),
    "json nested deep": (lambda f: (f / "state.json").write_text("[" * 100_000), "state.json"),
    "no sched": (_edit_json(lambda s: s.pop("sched")), "state.json"),
    "extra sched key": (_edit_json(lambda s: s["sched"].update(step=1)), "state.json"),
    "lr is text": (_edit_json(lambda s: s["param_groups"][0].update(lr="x")), "state.json"),
    "epoch is text": (_edit_json(lambda s: s.update(epoch="1")), "state.json"),
    "history is a number": (_edit_json(lambda s: s.update(history=5)), "state.json"),
    "config is text": (_edit_json(lambda s: s.update(config="x")), "state.json"),
    "tensors cut short": (
        lambda f: (f / "state.safetensors").write_bytes(b"\x08" + b"\0" * 20),
        "state.safetensors",
    ),  # fmt: skip
    "weight of another shape": (
        _edit_tensors(lambda t: t.update({_first(t, "net."): torch.zeros(3, 5)})),
        "state.safetensors",
    ),  # fmt: skip
    "NaN weights": (
        _edit_tensors(lambda t: t[_first(t, "best.")].fill_(float("nan"))),
        "state.safetensors",
    ),  # fmt: skip
    "slot of no parameter": (
        _edit_tensors(lambda t: t.update({"opt.999.exp_avg": torch.zeros(1)})),
        "state.safetensors",
    ),  # fmt: skip
    "missing weight": (_edit_tensors(lambda t: t.pop(_first(t, "net."))), "state.safetensors"),
    "rng of floats": (
        _edit_tensors(lambda t: t.update({"rng.torch": torch.zeros(3)})),
        "state.safetensors",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_resume_from_a_tampered_checkpoint_is_one_clear_error(case, one_epoch, data, tmp_path):
    """Before, each of these was a traceback (KeyError, RuntimeError, SafetensorError, ...),
    some only after an epoch of training on the bad state."""
    import shutil

    tamper, name = TAMPERED[case]
    out = tmp_path / "m"
    shutil.copytree(one_epoch, out)
    tamper(out / "checkpoint")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    config = FinetuneConfig(**FAST, epochs=2, holdout=0.0)
    with pytest.raises(FinetuneError, match=rf"checkpoint/{name} is damaged \(.+\); run without --resume"):  # fmt: skip
        finetune(load_dataset(data), config, out, resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing lost


def test_cli_resume_from_a_tampered_checkpoint_is_one_line(one_epoch, data, tmp_path):
    import shutil

    shutil.copytree(one_epoch, tmp_path / "m")
    TAMPERED["weight of another shape"][0](tmp_path / "m" / "checkpoint")
    args = ["finetune", str(data), "--out", str(tmp_path / "m"), "--backbone", "test-vit",
            "--batch-size", "32", "--workers", "0", "--patience", "50", "--holdout", "0",
            "--epochs", "2", "--resume"]  # fmt: skip
    line = _one_line_error(args)
    assert "state.safetensors is damaged" in line and "run without --resume" in line
