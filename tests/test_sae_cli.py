"""The SAE commands as a user runs them: the `--out` folder everywhere, offline features,
the codes file, and named missing files (issue 16 items 5, 6, 9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from thumbview.cli import app

runner = CliRunner()
STUDY = ("--top-k", "8", "--min-active", "7", "--n-extreme", "3", "--n-shuffles", "49")
STUDY += ("--n-boot", "20", "--n-perm", "500")


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args) -> object:
    result = run(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sae-cli") / "synth"
    ok("synth", root, "--n", "120", "--seed", "2")
    return root


def test_train_on_cached_features_writes_codes_that_analyze_reads(synth_dir, tmp_path):
    out = tmp_path / "SAE"
    train = ("--expansion", "4", "--k", "4", "--batch-size", "32", "--epochs", "3")
    res = ok("sae", "train", synth_dir, "--out", out, "--features", "title", *train,
             "--cache-dir", tmp_path / "cache")  # fmt: skip
    assert "held-out" in res.output and (out / "sae" / "cfg.json").is_file()
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert cfg["features"] == "title" and "clip_model" not in cfg
    codes = sp.load_npz(out / "codes.npz")
    assert codes.shape[0] == 120 and codes.shape[1] == cfg["d_sae"]
    assert np.allclose(codes.getnnz(axis=1), 4)  # TopK: exactly k per row
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_eval"]["n"] == 6  # 5% of 120 never trained on
    held = metrics["heldout_eval"]  # the printed count is the density plot's count
    said = " ".join(res.output.split())
    assert f"{held['never_fired']} of {held['d_sae']} latents" in said, said
    assert "never fired on the held-out activations (as in feature_density.png)" in said
    assert "dead " not in said
    by_file = ok("sae", "analyze", synth_dir, "--latents", out / "codes.npz", *STUDY,
                 "--out", tmp_path / "s1", "--json")  # fmt: skip
    key = (out / "codes.json").read_text()
    (out / "codes.json").unlink()  # no key: --sae recomputes the codes from the cache
    by_sae = ok("sae", "analyze", synth_dir, "--sae", out, *STUDY, "--json",
                "--cache-dir", tmp_path / "cache")  # fmt: skip
    (out / "codes.json").write_text(key)
    reused = ok("sae", "analyze", synth_dir, "--sae", out, *STUDY, "--json", "--out",
                tmp_path / "s2", "--cache-dir", tmp_path / "nothing-cached")  # fmt: skip
    assert not (tmp_path / "nothing-cached").exists()  # the codes on disk, no encoder run
    assert (out / "study" / "summary.json").is_file()  # default study: OUT/study
    for study in (out / "study", tmp_path / "s1"):  # a title SAE's report says "title"
        page = (study / "report.html").read_text(encoding="utf-8")
        assert (
            "Which title features go with more views?" in page and "thumbnail features" not in page
        )
    first, second = json.loads(by_file.stdout), json.loads(by_sae.stdout)
    assert first["table"] == second["table"]  # --sae OUT recomputes the same codes
    assert json.loads(reused.stdout)["table"] == first["table"]  # ... or reads them
    image = next((synth_dir / "images").glob("*.jpg"))
    res = run("explain", out, image)
    assert res.exit_code == 2 and "trained on 'title' features" in res.output


def test_train_from_activation_shards_equals_training_on_the_array(synth_dir, tmp_path):
    """`sae train --activations` streams shards from disk, yet trains the same SAE as the
    in-memory path on the same rows, and its codes feed `sae analyze --latents`."""
    from thumbview.sae.config import TrainConfig
    from thumbview.sae.pipeline import _fit_and_encode
    from thumbview.sae.shards import write_shards

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(120, 16)).astype(np.float32)  # one row per synth video
    write_shards((acts[s : s + 50] for s in range(0, 120, 50)), tmp_path / "acts", 40)
    train = ("--expansion", "4", "--k", "4", "--batch-size", "32", "--epochs", "2")
    res = ok("sae", "train", synth_dir, "--activations", tmp_path / "acts", "--out",
             tmp_path / "SAE", *train)  # fmt: skip
    assert "SAE on 120 activations" in res.output
    assert not (tmp_path / "SAE" / "codes.json").exists()  # rows of unknown images: no key
    codes = sp.load_npz(tmp_path / "SAE" / "codes.npz")
    options = {"arch": "topk", "expansion_factor": 4, "k": 4, "dead_after": None}
    cfg = TrainConfig(batch_size=32, epochs=2, seed=0)
    in_memory = _fit_and_encode(acts, acts, tmp_path / "mem", options, cfg, {})
    assert (sp.load_npz(in_memory.codes_file) != codes).nnz == 0  # same SAE, same codes
    ok("sae", "analyze", synth_dir, "--latents", tmp_path / "SAE" / "codes.npz", *STUDY,
       "--out", tmp_path / "study")  # fmt: skip
    res = run("sae", "analyze", synth_dir, "--sae", tmp_path / "SAE", *STUDY)
    assert res.exit_code == 2 and "--latents SAE/codes.npz" in res.output


def test_activation_shards_must_match_the_dataset_rows(synth_dir, tmp_path):
    from thumbview.sae.shards import write_shards

    write_shards([np.zeros((119, 8), np.float32)], tmp_path / "acts")
    res = run("sae", "train", synth_dir, "--activations", tmp_path / "acts", "--out", tmp_path)
    assert res.exit_code == 2 and "119 activation rows but the dataset has 120" in res.output
    res = run("sae", "train", "--activations", tmp_path / "none", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no activation shards" in res.output
    assert "Traceback" not in res.output


def test_out_folder_works_everywhere_and_missing_files_are_named(
    synth_dir, tiny_clip_dir, tmp_path
):
    out = tmp_path / "SAE"
    ok("sae", "train", synth_dir, "--out", out, "--clip-model", tiny_clip_dir, "--expansion", "2",
       "--k", "4", "--batch-size", "32", "--cache-dir", tmp_path / "cache")  # fmt: skip
    assert json.loads((out / "sae" / "cfg.json").read_text())["clip_model"] == str(tiny_clip_dir)
    ok("sae", "analyze", synth_dir, "--sae", out, *STUDY, "--cache-dir", tmp_path / "cache")
    image = next((synth_dir / "images").glob("*.jpg"))
    for folder in (out, out / "sae"):  # either folder, same study found
        features = json.loads(ok("explain", folder, image, "--json").stdout)
        assert features and all(f["activation"] > 0 for f in features)
    (out / "sae" / "sae_weights.safetensors").unlink()
    res = run("sae", "analyze", synth_dir, "--sae", out, "--out", tmp_path / "s")
    said = res.output.replace("\n", "")
    assert res.exit_code == 2 and "sae_weights.safetensors is missing" in said
    assert "Traceback" not in said and "Checking images" not in said  # checked first
    res = run("sae", "analyze", synth_dir, "--sae", tmp_path, "--out", tmp_path / "s")
    said = res.output.replace("\n", "")
    assert res.exit_code == 2 and "holds no SAE" in said and "--out" in said


def test_missing_clip_is_reported_before_the_images_are_checked(synth_dir, tmp_path):
    res = run("sae", "train", synth_dir, "--out", tmp_path / "o", "--clip-model", tmp_path / "no")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "does not exist" in said and "Checking images" not in said


@pytest.mark.parametrize("arch", ["topk", "relu-l1"])
def test_sae_lens_loads_what_sae_train_writes_and_gives_the_same_codes(tmp_path, arch):
    """The real SAELens (`SAE.load_from_disk`) on a folder written by `thumbview sae train`:
    the architecture it builds, and its codes and reconstructions equal thumbview's on raw
    activations (the ReLU-L1 trainer's input scaling must be folded into the weights)."""
    sae_lens = pytest.importorskip("sae_lens")
    import torch

    from thumbview.sae.folder import load_sae
    from thumbview.sae.shards import write_shards

    rng = np.random.default_rng(1)
    acts = (3 * rng.normal(size=(96, 16))).astype(np.float32)  # not unit scale: folding shows
    write_shards([acts], tmp_path / "acts")
    train = ("--expansion", "4", "--k", "4", "--batch-size", "32", "--epochs", "2")
    ok("sae", "train", "--activations", tmp_path / "acts", "--out", tmp_path / "SAE",
       "--arch", arch, *train)  # fmt: skip
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "SAE" / "sae"))
    assert type(theirs).__name__ == {"topk": "TopKSAE", "relu-l1": "StandardSAE"}[arch]
    x = torch.from_numpy(acts)
    ours = load_sae(tmp_path / "SAE")
    with torch.no_grad():
        z_theirs, z_ours = theirs.encode(x), ours.encode(x)  # (96, 64)
        recon_theirs, recon_ours = theirs.decode(z_theirs), ours.decode(z_ours)  # (96, 16)
    codes = torch.from_numpy(sp.load_npz(tmp_path / "SAE" / "codes.npz").toarray())
    assert torch.equal(z_theirs > 0, z_ours > 0) and torch.equal(z_ours > 0, codes > 0)
    assert (z_ours > 0).any() and (z_ours == 0).any()
    # equal up to float32 rounding: W_enc's two memory layouts may take different kernels
    torch.testing.assert_close(z_theirs, z_ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_theirs, codes.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(recon_theirs, recon_ours, rtol=1e-5, atol=1e-5)
    if arch == "topk":
        assert theirs.cfg.k == 4 and bool(((z_theirs > 0).sum(1) == 4).all())


def test_old_sae_folders_with_a_null_hook_name_still_load(tmp_path):
    """Folders written before the hook name was filled in (hook_name null) load in thumbview."""
    import torch

    from thumbview.sae.architectures import build_sae
    from thumbview.sae.config import sae_config
    from thumbview.sae.folder import load_sae, save_sae

    sae = build_sae(sae_config(d_in=8, expansion_factor=2, k=2), seed=0)
    save_sae(sae, tmp_path, {"features": "title"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["hook_name"] == "thumbview.title"
    cfg["hook_name"] = None
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert torch.equal(load_sae(tmp_path).W_enc, sae.W_enc)


class _Rows:
    """What `_all_token_activations` reads of a dataset: its paths and each row's image."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def image_source(self, row: int) -> Path:
        return self.paths[row]


class _Tokens:
    """An encoder of every position: (B, 3 tokens, 2) of one value; stops on call `dies_at`."""

    batch_size = 2

    def __init__(self, value: float, dies_at: int | None = None) -> None:
        self.value, self.dies_at, self.calls = value, dies_at, 0

    def spec(self) -> dict:
        return {"value": self.value}

    def residual_stream(self, images, layer, tokens):
        self.calls += 1
        if self.calls == self.dies_at:
            raise KeyboardInterrupt
        return np.full((len(images), 3, 2), self.value, np.float32)


def test_all_token_activations_killed_while_rewritten_are_not_reused(tmp_path):
    """Before: a rewrite for other settings, killed halfway, kept the earlier settings'
    sidecar beside a half-new file, so going back to those settings read the half-new file
    (2s and 0s) as their activations."""
    from types import SimpleNamespace

    from PIL import Image

    from thumbview.progress import SILENT
    from thumbview.sae.pipeline import _all_token_activations

    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for p in paths:
        Image.new("RGB", (8, 8)).save(p)
    dataset = _Rows(paths)
    source, acts = SimpleNamespace(layer=0, features="fake"), tmp_path / "activations-0.npy"
    first = _all_token_activations(dataset, source, _Tokens(1.0), acts, SILENT)
    assert first.shape == (12, 2) and (np.asarray(first) == 1).all()
    with pytest.raises(KeyboardInterrupt):  # batch 2 of 2 of a rewrite for value 2
        _all_token_activations(dataset, source, _Tokens(2.0, dies_at=3), acts, SILENT)
    again = _all_token_activations(dataset, source, _Tokens(1.0), acts, SILENT)
    assert (np.asarray(again) == 1).all()


def test_a_killed_analyze_into_the_sae_folder_leaves_the_sae_usable(synth_dir, tmp_path, monkeypatch):  # fmt: skip
    """`sae analyze --out SAE` writes its study beside the SAE (`find_study_dir` finds it
    there). Before: a killed run left `UNFINISHED` in the SAE folder, and the SAE was then
    refused everywhere as a killed `sae train` ("resume it (... sae train)"). Now the study
    has its own marker: the SAE still analyzes, the half-written study alone is refused (with
    the analyze hint), and the same command run to the end finishes it."""
    from thumbview.layout import RUN_UNFINISHED, STUDY_UNFINISHED
    from thumbview.sae import report
    from thumbview.sae.arrays import StudyError
    from thumbview.sae.explain import load_study

    out, cache = tmp_path / "SAE", tmp_path / "cache"
    ok("sae", "train", synth_dir, "--out", out, "--features", "title", "--expansion", "4", "--k",
       "4", "--batch-size", "32", "--epochs", "2", "--cache-dir", cache)  # fmt: skip
    into_sae = ("sae", "analyze", synth_dir, "--sae", out, *STUDY, "--cache-dir", cache)

    def ctrl_c(*args):
        raise KeyboardInterrupt  # the run stopped after its tables, before its plots

    for folder in (out / "sae", out):  # the SAE itself, and the `sae train --out` folder
        with monkeypatch.context() as patch:
            patch.setattr(report, "plot_histogram", ctrl_c)
            killed = run(*into_sae, "--out", folder)
        assert killed.exit_code != 0 and (folder / STUDY_UNFINISHED).is_file()
        assert not (folder / RUN_UNFINISHED).exists()
        elsewhere = run(*into_sae, "--out", tmp_path / "other")  # the SAE is not refused
        assert elsewhere.exit_code == 0, elsewhere.output + repr(elsewhere.exception)
        with pytest.raises(StudyError, match="did not finish") as info:
            load_study(folder)
        assert "sae analyze" in str(info.value) and "sae train" not in str(info.value)
        ok(*into_sae, "--out", folder)  # the same command, to the end
        assert not (folder / STUDY_UNFINISHED).exists() and load_study(folder).n_latents
