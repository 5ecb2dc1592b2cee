"""Embedding on a local Ray instance equals the local path, shares its cache and resumes."""

from __future__ import annotations

import builtins
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from thumbview.data.dataset import load_dataset, write_metadata
from thumbview.data.shards import pack
from thumbview.embed.base import Encoder
from thumbview.embed.cache import embed
from thumbview.embed.distributed import RayMissingError, RayOptions, embed_ray, import_ray

N = 40


def make_folder(root: Path) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    names = []
    for i in range(N):
        name = f"img/{i:03d}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    (root / names[7]).write_bytes(b"\x89PNG broken")  # fails at encode time (not verified)
    table = pd.DataFrame(
        {"file_name": names, "views": range(N), "title": [f"t{i % 13}" for i in range(N)]}
    )
    write_metadata(root, table)
    return root


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # Workers (started by ray.init, inheriting this environment) import the encoders defined
    # in these test modules, and this checkout's thumbview.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


class MeanColour(Encoder):
    """A cheap deterministic image encoder (mean and std of each channel)."""

    name, version, modality = "meancolour", "1", "image"

    def __init__(self):
        self.calls = 0

    @property
    def dim(self) -> int:
        return 6

    def encode(self, inputs):
        self.calls += len(inputs)
        arr = [np.asarray(im, np.float32) for im in inputs]
        return np.stack([np.concatenate([a.mean((0, 1)), a.std((0, 1))]) for a in arr])


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True])
def test_ray_embed_equals_local_and_resumes(ray_local, tmp_path, sharded):
    root = make_folder(tmp_path / "src")
    if sharded:
        pack(root, tmp_path / "shards", shard_size=15)
        root = tmp_path / "shards"
    ds = load_dataset(root, verify_images=False)
    local, local_stats = embed(ds, MeanColour(), cache_dir=tmp_path / "local")
    options = RayOptions(address="auto", batch_size=8, concurrency=2)
    remote, stats = embed_ray(ds, MeanColour, cache_dir=tmp_path / "ray", options=options)
    np.testing.assert_array_equal(remote, local)  # NaN row 7 in both
    assert [s.row for s in stats.skipped] == [s.row for s in local_stats.skipped] == [7]
    assert (stats.n_cached, stats.n_computed) == (0, N - 1)
    a = sorted((tmp_path / "local").rglob("spec.json"))[0].parent.name
    b = sorted((tmp_path / "ray").rglob("spec.json"))[0].parent.name
    assert a == b  # same spec, same cache folder name
    again, stats = embed_ray(ds, MeanColour, cache_dir=tmp_path / "ray", options=options)
    assert (stats.n_cached, stats.n_computed) == (N - 1, 0)  # resumed: only the bad row retried
    np.testing.assert_array_equal(again, local)
    enc = MeanColour()
    via_local, st = embed(ds, enc, cache_dir=tmp_path / "ray")  # train/cv read it unchanged
    assert enc.calls == 0 and st.n_cached == N - 1  # row 7 fails to decode, before the encoder
    assert [s.row for s in st.skipped] == [7]
    np.testing.assert_array_equal(via_local, local)


@pytest.mark.slow
def test_ray_embed_of_titles_and_partial_cache(ray_local, tmp_path):
    from test_cache import TitleLength

    ds = load_dataset(make_folder(tmp_path / "src"), verify_images=False)
    embed(ds.subset(np.arange(10)), TitleLength(), cache_dir=tmp_path / "c")  # t0..t9 cached
    feats, stats = embed_ray(
        ds, TitleLength, cache_dir=tmp_path / "c", options=RayOptions(batch_size=4)
    )
    assert (stats.n_computed, stats.n_cached) == (3, N - 3)  # t10..t12 encoded on the actors
    assert feats[:, 0].tolist() == [len(t) for t in ds.titles]


def test_without_ray_the_message_says_how_to_install(monkeypatch):
    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    for mod in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(RayMissingError, match=r"pip install 'thumbview\[ray\]'"):
        import_ray()


def test_cli_ray_without_ray_is_one_line_exit_2(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import thumbview.embed.distributed as distributed
    from thumbview.cli import app

    def missing(*_a, **_k):
        raise RayMissingError(distributed.INSTALL_HINT)

    monkeypatch.setattr(distributed, "import_ray", missing)
    root = make_folder(tmp_path / "src")
    res = CliRunner().invoke(app, ["embed", str(root), "--encoders", "title", "--ray", "auto"])
    assert res.exit_code == 2
    assert "thumbview[ray]" in " ".join(res.output.split()) and "Traceback" not in res.output


def test_thumbview_help_does_not_import_ray():
    import subprocess

    code = "import sys, thumbview.cli; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
