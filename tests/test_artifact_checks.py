"""The hostile artifact cases of issue 30, each reproduced as found and refused in one line.

`test_artifact_mutations.py` covers every field generically; these are the named cases of the
issue (a looping GBM tree, sizes that would allocate gigabytes, config/weights mismatches,
silent reorderings, a killed `train`), with the file and field each message must name.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from test_artifact_mutations import build_finetuned, build_predictor, build_sae
from thumbview.layout import RUN_UNFINISHED
from thumbview.predict.model import ViewPredictor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return {head: build_predictor(root, head) for head in ("ridge", "mlp", "gbm")}


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _edit_tensors(folder: Path, change) -> None:
    arrays = load_file(folder / "model.safetensors")
    change(arrays)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, folder / "model.safetensors")


def _edit_config(folder: Path, change, name: str = "config.json") -> None:
    meta = json.loads((folder / name).read_text())
    change(meta)
    (folder / name).write_text(json.dumps(meta))


def _refused(load, folder: Path, *fragments: str) -> str:
    """The one-line error of `load(folder)`, which must contain every fragment."""
    with pytest.raises(ValueError) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ----- GBM trees --------------------------------------------------------------------------------
def _set_node(field: str, value: float, index: int = 0):
    def change(arrays):
        arrays[f"head.node.{field}"][index] = value

    return change


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda a: [_set_node(f, 0)(a) for f in ("is_leaf", "left", "right")], "loop"),
        (_set_node("left", 1e6), "node.left"),
        (_set_node("right", 1e6), "node.right"),
        (_set_node("feature_idx", 999), "node.feature_idx holds 999"),
        (_set_node("is_leaf", 0.5), "node.is_leaf"),
    ],
    ids=["looping tree", "left 10^6", "right 10^6", "feature_idx 999", "is_leaf 0.5"],
)
def test_a_gbm_tree_that_is_not_a_tree_is_refused_at_load(folders, tmp_path, change, said):
    folder = _copy(folders["gbm"], tmp_path)
    _edit_tensors(folder, change)
    start = time.perf_counter()
    _refused(ViewPredictor.load, folder, "model.safetensors", said)
    assert time.perf_counter() - start < 5  # was: predict never ended (a loop)


def test_shifted_tree_sizes_are_refused_not_read_as_other_trees(folders, tmp_path):
    folder = _copy(folders["gbm"], tmp_path)
    sizes = load_file(folder / "model.safetensors")["head.tree_sizes"]
    assert len(sizes) >= 2
    for shift in (1, -1):

        def change(a, shift=shift):
            a["head.tree_sizes"][0] += shift
            a["head.tree_sizes"][1] -= shift

        _edit_tensors(folder, change)
        _refused(ViewPredictor.load, folder, "model.safetensors", "not trees")
        _edit_tensors(folder, lambda a, s=sizes: a.update({"head.tree_sizes": s.copy()}))
    ViewPredictor.load(folder)  # restored: loads


# ----- sizes from config.json, checked before anything is allocated -----------------------------
def _peak_growth(load, folder: Path) -> int:
    """Bytes the process's peak RSS grew by while `load(folder)` failed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError):
        load(folder)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


@pytest.mark.parametrize("hidden", [10**5, 10**9])
def test_mlp_hidden_from_config_is_checked_before_the_network_is_built(folders, tmp_path, hidden):
    folder = _copy(folders["mlp"], tmp_path)
    _edit_config(folder, lambda m: m["head"].update(hidden=hidden))
    _refused(ViewPredictor.load, folder, "config.json", f"hidden={hidden}")
    assert _peak_growth(ViewPredictor.load, folder) < 200 << 20  # was: 40-104 GB tried


def test_sae_sizes_are_checked_against_the_weights_before_build(tmp_path):
    from thumbview.sae.folder import load_sae

    thumbview = build_sae(tmp_path, "topk", saelens=False)
    _edit_config(thumbview, lambda c: c["thumbview"].update(expansion_factor=500_000), "cfg.json")
    _edit_config(thumbview, lambda c: c.pop("d_sae"), "cfg.json")
    _refused(load_sae, thumbview, "cfg.json", "d_sae=3000000 is larger than the weights file")
    assert _peak_growth(load_sae, thumbview) < 200 << 20  # was: 3.0 GB before the shape error
    saelens = build_sae(tmp_path, "relu-l1", saelens=True)
    _edit_config(saelens, lambda c: c.update(d_sae=10**9 - 10**9 % 6), "cfg.json")
    _refused(load_sae, saelens, "cfg.json", "larger than the weights file holds")


def test_finetuned_sizes_are_checked_before_the_network_is_built(tmp_path):
    from thumbview.finetune.model import FinetunedPredictor

    folder = build_finetuned(tmp_path)
    _edit_config(folder, lambda m: m["architecture"].update(hidden=10**9))
    _refused(FinetunedPredictor.load, folder, "config.json", "architecture.hidden=1000000000")
    assert _peak_growth(FinetunedPredictor.load, folder) < 200 << 20


# ----- config and weights that disagree ------------------------------------------------------------
@pytest.mark.parametrize(
    "change, said",
    [
        (lambda m: m.update(block_dims={"clip": 26}), "block_dims"),
        (lambda m: m.update(block_dims={}), "block_dims"),
        (lambda m: m.update(cv_metrics=[1, 2]), "cv_metrics"),
        (lambda m: m.update(cv_metrics="good"), "cv_metrics"),
        (lambda m: m["cv_metrics"].pop("r2"), "cv_metrics"),
        (lambda m: m["head"].update(kind="gbm"), "head.kind"),
    ],
    ids=[
        "block_dims other encoder",
        "block_dims empty",
        "cv_metrics list",
        "cv_metrics string",
        "cv_metrics without r2",
        "head kind",
    ],  # fmt: skip
)
def test_config_fields_that_disagree_are_one_line(folders, tmp_path, change, said):
    folder = _copy(folders["ridge"], tmp_path)
    _edit_config(folder, change)
    _refused(ViewPredictor.load, folder, "config.json", said)


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda a: a.pop("quantile_levels"), "quantile_levels is missing"),
        (lambda a: a.update(quantile_levels=a["quantile_levels"][::-1]), "increase"),
        (lambda a: a.update(residual_quantiles=a["residual_quantiles"][::-1]), "not decrease"),
        (
            lambda a: a.update({"head.coef": np.stack([a["head.coef"]] * 2, 1)}),
            "'coef' has shape (26, 2)",
        ),
        (lambda a: a.update({"block.visual.scale": 0 * a["block.visual.scale"]}), "> 0"),
        (
            lambda a: a.update({"block.visual.mean": a["block.visual.mean"].astype(np.int32)}),
            "dtype I32",
        ),
    ],
    ids=[
        "levels removed",
        "levels reversed",
        "quantiles reversed",
        "2-d coef",
        "zero scale",
        "int mean",
    ],  # fmt: skip
)
def test_weights_that_disagree_or_were_reordered_are_one_line(folders, tmp_path, change, said):
    folder = _copy(folders["ridge"], tmp_path)
    _edit_tensors(folder, change)
    _refused(ViewPredictor.load, folder, "model.safetensors", said)


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda c: c.update(clip_layer=[1]), "clip_layer"),
        (lambda c: c.update(thumbview=[1]), "thumbview"),
        (lambda c: c.update(activation_fn_kwargs=[1]), "activation_fn_kwargs"),
        (lambda c: c["thumbview"].update(k=True), "thumbview.k"),
        (lambda c: c.update(k=True), "k"),
        (lambda c: c["thumbview"].update(d_in=0), "d_in"),
        (lambda c: c.update(d_sae=c["d_sae"] * 2), "d_sae"),
    ],
    ids=[
        "clip_layer [1]",
        "thumbview [1]",
        "activation_fn_kwargs [1]",
        "k true",
        "top k true",
        "d_in 0",
        "d_sae disagrees",
    ],  # fmt: skip
)
def test_sae_cfg_fields_of_the_wrong_type_are_one_line(tmp_path, change, said):
    from thumbview.sae.folder import load_sae_encoder

    folder = build_sae(tmp_path, "topk", saelens=False)
    _edit_config(folder, change, "cfg.json")
    _refused(lambda f: load_sae_encoder(f, images_only=False), folder, "cfg.json", said)


@pytest.mark.parametrize(
    "change",
    [lambda c: c.update(d_in=0), lambda c: c.update(k=True)],
    ids=["d_in 0", "k true"],
)
def test_saelens_layout_sizes_are_typed(tmp_path, change):
    from thumbview.sae.folder import load_sae

    folder = build_sae(tmp_path, "topk", saelens=True)
    _edit_config(folder, change, "cfg.json")
    _refused(load_sae, folder, "cfg.json")  # was: ZeroDivisionError; k true accepted


def test_a_malformed_mlp_history_names_the_file(folders, tmp_path):
    folder = _copy(folders["mlp"], tmp_path)
    _edit_config(folder, lambda m: m["head"].update(history=[[1, 2]]))
    _refused(ViewPredictor.load, folder, "config.json", "history")  # was: "not enough values"


# ----- interrupted training --------------------------------------------------------------------
def test_a_killed_train_leaves_a_folder_no_command_loads(tmp_path):
    """SIGKILL in the middle of `train --head mlp` (after config.json, encoders.json and the
    weights, before pairwise/ and training_range.json): the folder is refused, in words."""
    from thumbview.data.synth import SynthConfig, make_synthetic
    from thumbview.inference.predictor import LoadedPredictor

    data = make_synthetic(tmp_path / "data", SynthConfig(n=60, seed=0, n_channels=6))
    out = tmp_path / "model"
    kill = (
        "import os, signal, sys; import thumbview.predict.workflow as w; "
        "w.fit_pairwise = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        "from thumbview.cli import main; sys.argv = ['thumbview'] + sys.argv[1:]; main()"
    )
    args = ["train", str(data), "--out", str(out), "--head", "mlp", "--encoders", "title"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", kill, *args], env=env, capture_output=True)
    assert done.returncode == -9, done.stderr[-2000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / RUN_UNFINISHED).is_file() and not (out / "training_range.json").exists()
    message = _refused(LoadedPredictor.load, out, "did not finish")
    assert RUN_UNFINISHED in message
    with pytest.raises(ValueError, match="did not finish"):
        LoadedPredictor.check(out)


def test_a_finished_run_removes_the_marker_and_older_folders_never_had_one(folders):
    from thumbview.fileio import while_running

    assert not (folders["ridge"] / RUN_UNFINISHED).exists()
    legacy = ROOT / "tests" / "data" / "legacy" / "d7022a0"
    assert not list(legacy.rglob(RUN_UNFINISHED))  # they load as before (test_legacy_folders)
    folder = folders["ridge"]
    with pytest.raises(RuntimeError), while_running(folder / RUN_UNFINISHED, "test"):
        assert (folder / RUN_UNFINISHED).is_file()
        _refused(ViewPredictor.load, folder, "did not finish")
        raise RuntimeError("the run fails")
    assert (folder / RUN_UNFINISHED).is_file()  # a failed run stays unfinished
    with while_running(folder / RUN_UNFINISHED, "test"):  # the run again (a resume), to the end
        pass
    assert not (folder / RUN_UNFINISHED).exists()
    ViewPredictor.load(folder)


def test_an_unfinished_sae_train_is_refused_and_a_rerun_finishes_it(tmp_path):
    from thumbview.sae.config import TrainConfig
    from thumbview.sae.folder import SaeFileError, load_sae
    from thumbview.sae.pipeline import train_sae_on_shards
    from thumbview.sae.shards import write_shards

    rng = np.random.default_rng(0)
    write_shards(iter([rng.normal(size=(64, 6)).astype(np.float32)]), tmp_path / "acts")
    shards = tmp_path / "acts"
    out = tmp_path / "sae"
    options, cfg = {"arch": "topk", "k": 2, "expansion_factor": 2}, TrainConfig(batch_size=16)
    train_sae_on_shards(shards, out, options, cfg)
    reference = load_sae(out).W_enc.detach().clone()
    (out / RUN_UNFINISHED).write_text("killed\n")  # what a kill during a rerun leaves
    with pytest.raises(SaeFileError, match="did not finish"):
        load_sae(out)
    train_sae_on_shards(shards, out, options, cfg)  # the same command: resumes, finishes
    assert not (out / RUN_UNFINISHED).exists()
    assert np.array_equal(load_sae(out).W_enc.detach().numpy(), reference.numpy())
