"""Tests of the SAE study IO layer (thumbview.sae.analyze) and explain (thumbview.sae.explain)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from thumbview.data.dataset import load_dataset, write_metadata
from thumbview.explain import explain_sae_image
from thumbview.layout import STUDY_UNFINISHED
from thumbview.sae import analyze as A
from thumbview.sae.architectures import build_sae
from thumbview.sae.arrays import StudyError
from thumbview.sae.explain import explain_latents, load_study
from thumbview.sae.study import StudyConfig

SMALL = StudyConfig(
    top_k=6, min_active=5, n_shuffles=99, heldout_group=3, n_extreme=3, n_boot=50, n_perm=2000
)
FAST_CHANNEL = {
    "n_perm": 2000,
    "n_shuffles": 99,
    "n_boot": 50,
    "n_extreme": 3,
    "heldout_group": 3,
}
N = 90
CHANNELS = ["A"] * 40 + ["B"] * 40 + ["C"] * 5 + ["D"] * 5
TRICKY_TITLE = '<script>alert("x")</script> & <b>bold</b>'


def _write_images(root: Path, n: int, seed: int, prefix: str = "img") -> list[str]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        pixels[:, :, i % 3] = 40 * (i % 7)  # some structure so CLIP activations differ
        name = f"{prefix}{i:03d}.png"
        Image.fromarray(pixels).save(root / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """90 thumbnails; log views grow with upload age; one metadata row has no image."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ds")
    names = _write_images(root, N, seed=1)
    age = rng.uniform(0, 5, N)  # years before the newest video
    noise = rng.normal(0, 0.3, N)
    views = np.round(10 ** (3 + 0.4 * age + noise)).astype(np.int64)
    published = pd.Timestamp("2025-01-01", tz="UTC") - pd.to_timedelta(age * 365.25, unit="D")
    table = pd.DataFrame(
        {
            "file_name": names,
            "views": views,
            "title": [TRICKY_TITLE if i == int(np.argmax(age)) else f"video {i}" for i in range(N)],
            "video_id": [f"v{i}" for i in range(N)],
            "channel_id": CHANNELS,
            "published_at": published.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    missing = table.iloc[[0]].assign(file_name="gone.png", video_id="gone")
    table = pd.concat([table.iloc[:10], missing, table.iloc[10:]], ignore_index=True)
    write_metadata(root, table)
    ds = load_dataset(root)
    assert len(ds) == N and ds.report.n_rows == N + 1
    return {"ds": ds, "age": age, "noise": noise}


@pytest.fixture(scope="module")
def latents(data):
    """(N, 30): latent 0 follows upload age, latent 1 the age-free part of views, rest random."""
    rng = np.random.default_rng(2)
    x = rng.exponential(1.0, (N, 30)) * (rng.random((N, 30)) < 0.6)
    x[:, 0] = data["age"] + 0.1
    x[:, 1] = data["noise"] - data["noise"].min() + 0.1
    return x.astype(np.float32)


def _run(data, latents, tmp_path, **config):
    cfg = A.AnalyzeConfig(**{"study": SMALL, **config})
    return A.run_analysis(data["ds"], latents, cfg, tmp_path / "out")


def _ratio(features: pd.DataFrame, latent: int) -> float:
    return float(features.loc[features["latent_feature_index"] == latent, "ratio"].item())


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]


# --------------------------------------------------------------------------- the study


def test_run_analysis_writes_every_artifact(data, latents, tmp_path):
    out = _run(data, latents, tmp_path)
    table = pd.read_csv(out.features_csv)
    assert list(table.columns) == [
        "top_or_bottom", "rank", "latent_feature_index", "group_median_views",
        "ratio", "n", "p", "q", "estimate_views", "estimate_ratio", "ci_low", "ci_high",
        "cluster",
    ]  # fmt: skip
    assert len(table) == 6 and (table["n"] == 5).all()
    top1 = table.iloc[0]
    assert top1["latent_feature_index"] == 0 and top1["ratio"] > 4  # planted: age -> views
    summary = json.loads(out.summary_json.read_text())
    assert summary["n_rows"] == N and summary["controls"] == [] and summary["views"] == "raw"
    assert summary["dataset"]["n_rows"] == N + 1 and "timings" in summary
    assert summary["n_qualifying"] == len(pd.read_csv(out.all_features_csv))
    for p in (out.histogram_png, out.magnitude_png, *out.grids):
        assert p.is_file() and Image.open(p).size[0] > 100
    assert len(out.grids) == 6
    examples = json.loads(out.examples_json.read_text())
    assert Path(examples["dataset_root"]) == data["ds"].root
    oldest = data["ds"].table["file_name"][np.argsort(-data["age"], kind="stable")[:11]].tolist()
    assert examples["examples"]["0"] == oldest  # grid_size=11 strongest activations of latent 0


def test_report_html_parses_and_links_existing_files(data, latents, tmp_path):
    out = _run(data, latents, tmp_path)
    doc = out.report_html.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(doc)
    assert "script" not in parser.tags and "b" not in parser.tags  # the title stayed text
    assert "&lt;script&gt;" in doc and TRICKY_TITLE not in doc
    assert set(parser.refs) >= {"magnitude.png", "histogram.png"}
    for ref in parser.refs:
        assert (out.out_dir / ref).is_file(), ref


def test_latents_files_npy_and_npz_give_the_same_study(data, latents, tmp_path):
    np.save(tmp_path / "x.npy", latents)
    sp.save_npz(tmp_path / "x.npz", sp.csr_matrix(latents))
    dense = A.load_latents_file(tmp_path / "x.npy", n_rows=N)
    sparse = A.load_latents_file(tmp_path / "x.npz", n_rows=N)
    assert isinstance(dense, np.ndarray) and sp.issparse(sparse)
    a = _run(data, dense, tmp_path / "a")
    b = _run(data, sparse, tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_csv(a.features_csv), pd.read_csv(b.features_csv))


def test_latents_file_errors(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((5, 3), np.float32))
    with pytest.raises(StudyError, match="5 rows but the dataset has 7"):
        A.load_latents_file(tmp_path / "x.npy", n_rows=7)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(StudyError, match="Python objects"):
        A.load_latents_file(tmp_path / "obj.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(StudyError, match="scipy.sparse .npz"):
        A.load_latents_file(tmp_path / "junk.npz")
    np.savez(tmp_path / "dense.npz", x=np.ones((2, 2)))
    with pytest.raises(StudyError, match="save_npz"):
        A.load_latents_file(tmp_path / "dense.npz")
    with pytest.raises(StudyError, match="not found"):
        A.load_latents_file(tmp_path / "nope.npy")
    np.save(tmp_path / "v.npy", np.ones(5))
    with pytest.raises(StudyError, match="2-D"):
        A.load_latents_file(tmp_path / "v.npy")


def test_latents_rows_follow_metadata_or_kept_rows(data, latents, tmp_path):
    with_missing = np.insert(latents, 10, 99.0, axis=0)  # a row for the skipped metadata row
    aligned = A.align_latents(with_missing, data["ds"])
    np.testing.assert_array_equal(aligned, latents)
    with pytest.raises(StudyError, match="89 rows but the dataset has 90 usable rows"):
        _run(data, latents[:-1], tmp_path)


def test_control_age_removes_the_age_effect(data, latents, tmp_path):
    raw = _run(data, latents, tmp_path / "raw").result
    ctrl = _run(data, latents, tmp_path / "ctrl", control=("age", "channel")).result
    assert _ratio(raw.features, 0) > 4
    assert _ratio(ctrl.features, 0) < 2  # age explained the views of latent 0's videos
    assert ctrl.features["latent_feature_index"].iloc[0] == 1  # the age-free effect remains
    views = A.grouping_views(data["ds"], ("age", "channel"))
    assert not np.allclose(views, data["ds"].views) and (views > 0).all()
    summary = json.loads((tmp_path / "ctrl" / "out" / "summary.json").read_text())
    assert summary["controls"] == ["age", "channel"]
    assert summary["raw_dataset_median"] == pytest.approx(np.median(data["ds"].views))
    assert summary["channel_shrinkage_lambda"] > 0  # partial pooling, not fixed effects
    ident = summary["channel_identifiability"]
    assert ident["share_multi_video"] == 1.0 and ident["effective_n"] == N - 4
    assert not ident["weak"] and "WEAK" not in ident["message"]
    raw_summary = json.loads((tmp_path / "raw" / "out" / "summary.json").read_text())
    assert raw_summary["channel_shrinkage_lambda"] is None
    assert raw_summary["channel_identifiability"] is None


def test_weak_channel_control_is_reported(data, latents, tmp_path):
    """Singleton-heavy channels: summary.json and report.html say the control is weak."""
    ds = data["ds"]
    mostly_alone = ["A"] * 10 + ["B"] * 10 + [f"solo{i}" for i in range(N - 20)]
    alone = type(ds)(ds.root, ds.table.assign(channel_id=mostly_alone), ds.report)
    out = A.run_analysis(
        alone, latents, A.AnalyzeConfig(study=SMALL, control=("channel",)), tmp_path / "o"
    )
    ident = json.loads(out.summary_json.read_text())["channel_identifiability"]
    assert ident["weak"] and ident["share_multi_video"] == pytest.approx(20 / N)
    assert ident["n_multi_video_channels"] == 2 and ident["effective_n"] == 18
    doc = out.report_html.read_text(encoding="utf-8")
    assert "Channel control is weak" in doc and "does not rule out a channel confound" in doc


def test_channel_control_warns_only_when_channel_variance_is_not_estimable(data, caplog):
    ds = data["ds"]
    with caplog.at_level("INFO", logger="thumbview.sae"):
        pooled = A.grouping_views(ds, ("age", "channel"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "partial pooling" in caplog.text and "lambda=" in caplog.text
    assert len(np.unique(np.round(pooled, 6))) == N  # no video's views collapse to the mean
    lone = type(ds)(ds.root, ds.table.assign(channel_id=[f"c{i}" for i in range(N)]), ds.report)
    caplog.clear()
    with caplog.at_level("WARNING", logger="thumbview.sae"):
        views = A.grouping_views(lone, ("age", "channel"))
    assert "channel effects cannot be estimated" in caplog.text
    np.testing.assert_allclose(views, A.grouping_views(ds, ("age",)))  # channel left alone


def test_control_without_published_at_is_a_clear_error(data, latents, tmp_path):
    ds = data["ds"]
    no_dates = type(ds)(ds.root, ds.table.drop(columns="published_at"), ds.report)
    with pytest.raises(StudyError, match="control age needs a 'published_at' column"):
        A.run_analysis(no_dates, latents, A.AnalyzeConfig(SMALL, control=("age",)), tmp_path)
    assert A.parse_controls("age, channel") == ("age", "channel")
    with pytest.raises(StudyError, match="unknown control"):
        A.parse_controls("age,colour")


def test_channel_mode_and_too_small_channels(data, latents, tmp_path):
    cfg = A.AnalyzeConfig(A.make_study_config(True, **FAST_CHANNEL), channel="A")
    out = A.run_analysis(data["ds"], latents, cfg, tmp_path / "a")
    summary = json.loads(out.summary_json.read_text())
    assert summary["n_rows"] == 40 and summary["channel"] == "A"
    assert summary["config"]["statistic"] == "mean" and summary["config"]["top_k"] == 11
    assert "group_mean_views" in pd.read_csv(out.features_csv).columns
    a_rows = np.flatnonzero(np.array(CHANNELS) == "A")
    examples = json.loads(out.examples_json.read_text())["examples"]
    assert set(examples["0"]) <= set(data["ds"].table["file_name"][a_rows])
    assert A.AnalyzeConfig(channel="A").resolved_study().statistic == "mean"
    with pytest.raises(StudyError, match="'C' has 5 videos.*at least 11"):
        A.run_analysis(data["ds"], latents, A.AnalyzeConfig(channel="C"), tmp_path / "c")
    with pytest.raises(StudyError, match="not in the dataset"):
        A.run_analysis(data["ds"], latents, A.AnalyzeConfig(channel="Z"), tmp_path / "z")


# ----------------------------------------------------------------- SAE, reference, explain


@pytest.fixture(scope="module")
def sae_dir(tiny_clip_dir, tmp_path_factory):
    """A random ReLU SAE (64 latents) over the tiny CLIP's layer -2 CLS residual stream."""
    pytest.importorskip("thumbview.sae.train")
    from thumbview.sae.folder import save_sae
    from thumbview.sae.model import SaeConfig

    sae = build_sae(SaeConfig(d_in=32, expansion_factor=2, arch="relu-l1"), seed=3)
    extra = {"clip_model": str(tiny_clip_dir), "clip_layer": -2, "clip_tokens": "cls"}
    return save_sae(sae, tmp_path_factory.mktemp("sae"), extra)


def test_latents_for_dataset_match_a_plain_forward_pass(data, sae_dir, tmp_path):
    import torch

    from thumbview.data.images import load_image
    from thumbview.embed.clip import ClipEncoder
    from thumbview.sae.folder import load_sae

    ds = data["ds"]
    x = A.latents_for_dataset(ds, sae_dir, cache_dir=tmp_path / "cache", batch_size=16)
    assert sp.isspmatrix_csr(x) and x.shape == (N, 64) and (x.data > 0).all()
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    enc = ClipEncoder(cfg["clip_model"], layer=-2, tokens="cls")
    acts = enc.encode([load_image(p) for p in ds.paths[:8]])  # (8, 32)
    with torch.no_grad():
        ref = load_sae(sae_dir).encode(torch.from_numpy(acts)).numpy()  # (8, 64)
    np.testing.assert_allclose(x[:8].toarray(), ref, rtol=1e-5, atol=1e-6)
    again = A.latents_for_dataset(ds, sae_dir, cache_dir=tmp_path / "cache")  # served by cache
    np.testing.assert_allclose(again.toarray(), x.toarray(), rtol=1e-5, atol=1e-6)


def test_sae_without_clip_settings_is_a_clear_error(tmp_path):
    from thumbview.sae.folder import save_sae
    from thumbview.sae.model import sae_config

    save_sae(build_sae(sae_config(d_in=8, expansion_factor=2, k=2)), tmp_path / "sae")
    with pytest.raises(StudyError, match="clip_layer"):
        A.load_sae_encoder(tmp_path)  # the `sae train --out` folder is accepted too
    with pytest.raises(StudyError, match=r"sae_weights.safetensors is missing"):
        (tmp_path / "sae" / "sae_weights.safetensors").unlink()
        A.load_sae_encoder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match=r"holds no SAE: neither .*cfg.json nor .*sae/cfg.json"):
        A.load_sae_encoder(tmp_path / "empty")


def test_reference_grids_and_explain(data, sae_dir, tmp_path):
    ds = data["ds"]
    ref_dir = tmp_path / "ref"
    _write_images(ref_dir / "sub", 12, seed=5, prefix="ref")
    x = A.latents_for_dataset(ds, sae_dir, cache_dir=tmp_path / "cache")
    cfg = A.AnalyzeConfig(SMALL, reference=ref_dir)
    out = A.run_analysis(
        ds, x, cfg, tmp_path / "out", sae_dir=sae_dir, cache_dir=tmp_path / "cache"
    )
    one_row = A.run_analysis(ds, x, A.AnalyzeConfig(SMALL), tmp_path / "plain")
    assert Image.open(out.grids[0]).height > 1.8 * Image.open(one_row.grids[0]).height

    found = explain_sae_image(ds.paths[4], sae_dir, out.out_dir, top=10)
    z = x[4].toarray()[0]
    assert len(found) == min(10, int((z > 0).sum()))
    acts = [f.activation for f in found]
    assert acts == sorted(acts, reverse=True)
    np.testing.assert_allclose(acts, np.sort(z)[::-1][: len(found)], rtol=1e-5)
    table = pd.read_csv(out.all_features_csv).set_index("latent_feature_index")
    for f in found:
        if f.latent in table.index:
            assert f.ratio == pytest.approx(table.loc[f.latent, "ratio"])
            assert f.q == pytest.approx(table.loc[f.latent, "q"])
            assert 1 <= len(f.examples) <= 3 and all(p.is_file() for p in f.examples)
        else:
            assert f.ratio is None and f.q is None
    assert any(f.ratio is not None for f in found)


def test_explain_latents_lookup_and_size_check(data, latents, tmp_path):
    out = _run(data, latents, tmp_path)
    study = load_study(out.out_dir)
    z = np.zeros(30)
    z[[0, 5, 7]] = [0.5, 2.0, 0.5]
    found = explain_latents(z, study, top=10)
    assert [f.latent for f in found] == [5, 0, 7]  # by activation, ties by index
    assert found[1].ratio == pytest.approx(_ratio(out.result.features, 0))
    assert (
        found[1].examples[0].name == json.loads(out.examples_json.read_text())["examples"]["0"][0]
    )
    from_csv = load_study(out.features_csv)  # the top/bottom table only
    assert set(from_csv.stats) == set(pd.read_csv(out.features_csv)["latent_feature_index"])
    with pytest.raises(StudyError, match="SAE has 31 latents but the study was run with 30"):
        explain_latents(np.zeros(31), study)


def test_a_study_rerun_that_dies_is_refused_until_a_run_finishes(data, latents, tmp_path, monkeypatch):  # fmt: skip
    """Before: a rerun into the same --out killed after its tables left the new tables beside
    the earlier run's summary.json (30 latents for a 20-latent study) and `explain`, `compare`
    and `serve` read that mix as a study. Now it is one line until a run writes it all."""
    out = _run(data, latents, tmp_path).out_dir
    assert not (out / STUDY_UNFINISHED).exists() and load_study(out).n_latents == 30

    def dies(*args, **kwargs):
        raise RuntimeError("killed while plotting")

    with monkeypatch.context() as patch:
        patch.setattr(A.report, "plot_histogram", dies)
        with pytest.raises(RuntimeError, match="killed"):
            _run(data, latents[:, :20], tmp_path)
    assert (out / STUDY_UNFINISHED).is_file() and (out / "all_features.csv").is_file()
    for given in (out, out / "features.csv"):
        with pytest.raises(StudyError, match="did not finish") as info:
            load_study(given)
        assert "\n" not in str(info.value) and "sae analyze" in str(info.value)
    _run(data, latents[:, :20], tmp_path)  # the same command again, to the end
    assert not (out / STUDY_UNFINISHED).exists() and load_study(out).n_latents == 20


def test_a_table_write_that_dies_leaves_the_earlier_table_whole(data, latents, tmp_path, monkeypatch):  # fmt: skip
    """Before: the tables were written in place (`to_csv(path)`), so a rerun killed while
    writing all_features.csv left the earlier run's table cut to its first rows. Now every
    file of a study is written to a temp file and renamed: the earlier table stays whole."""
    out = _run(data, latents, tmp_path).out_dir
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    to_csv = pd.DataFrame.to_csv

    def dies_halfway(frame, path=None, *args, **kwargs):
        if "top_file_name" not in frame.columns:  # features.csv: written as usual
            return to_csv(frame, path, *args, **kwargs)
        to_csv(frame.head(1), path, *args, **kwargs)  # one row reached the disk, then:
        raise RuntimeError("killed while writing all_features.csv")

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_csv", dies_halfway)
        with pytest.raises(RuntimeError, match="killed while writing"):
            _run(data, latents[:, :20], tmp_path)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after["all_features.csv"] == before["all_features.csv"]  # the earlier run's, whole
    assert after["summary.json"] == before["summary.json"]
    assert set(after) == set(before) | {STUDY_UNFINISHED}  # no temp file left behind


def test_precomputed_reference_latents(data, latents, tmp_path):
    ref_dir = tmp_path / "ref"
    _write_images(ref_dir, 12, seed=6, prefix="ref")
    (ref_dir / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(ref_dir / ".hidden" / "skip.png")  # hidden: not a reference
    assert len(A.list_images(ref_dir)) == 12
    ref = np.zeros((12, 30), np.float32)
    ref[[3, 7], 0] = [1.0, 2.0]  # latent 0's best reference images: ref007, then ref003
    assert A.top_examples(ref, np.array([0]), 11)[0].tolist() == [7, 3]  # positives only
    cfg = A.AnalyzeConfig(SMALL, reference=ref_dir)
    out = A.run_analysis(data["ds"], latents, cfg, tmp_path / "out", reference_latents=ref)
    plain = _run(data, latents, tmp_path / "plain")
    assert Image.open(out.grids[0]).height > 1.8 * Image.open(plain.grids[0]).height
    with pytest.raises(StudyError, match=r"expected \(12 images, 30\)"):
        A.run_analysis(data["ds"], latents, cfg, tmp_path / "x", reference_latents=ref[:5])
    with pytest.raises(StudyError, match="--reference needs --sae"):
        A.run_analysis(data["ds"], latents, cfg, tmp_path / "y")
