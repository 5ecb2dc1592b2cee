"""Feature cache: reuse, incremental computation, invalidation by spec and by content."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from thumbview.data.dataset import load_dataset, write_metadata
from thumbview.embed.base import Encoder
from thumbview.embed.cache import embed, finite_rows


class CountingEncoder(Encoder):
    """Mean colour per image; counts how many images it was asked to encode."""

    name = "counting"
    version = "1"
    modality = "image"

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.calls = 0

    @property
    def dim(self) -> int:
        return 3

    def spec(self):
        return {**super().spec(), "scale": self.scale}

    def encode(self, inputs):
        self.calls += len(inputs)
        return np.stack(
            [np.asarray(im, np.float32).mean(axis=(0, 1)) * self.scale for im in inputs]
        )


class TitleLength(Encoder):
    name = "title-length"
    version = "1"
    modality = "text"
    dim = 1

    def encode(self, inputs):
        return np.array([[len(t)] for t in inputs], np.float32)


def make_dataset(root: Path, colours: list[tuple[int, int, int]], titles=None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (16, 9), colour).save(root / "images" / f"v{i}.png")
        title = titles[i] if titles else f"title {i}"
        rows.append(
            {
                "file_name": f"images/v{i}.png",
                "views": 100 * (i + 1),
                "title": title,
                "video_id": f"v{i}",
            }
        )
    write_metadata(root, pd.DataFrame(rows))
    return root


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]


def test_embed_matches_direct_encoding(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    features, stats = embed(ds, CountingEncoder(), cache_dir=tmp_path / "c", batch_size=3)
    assert features.shape == (4, 3) and features.dtype == np.float32
    np.testing.assert_allclose(features, np.array(COLOURS, np.float32))
    assert (stats.n_cached, stats.n_computed) == (0, 4)


def test_second_run_reuses_cache(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    first, _ = embed(ds, CountingEncoder(), cache_dir=tmp_path / "c")
    encoder = CountingEncoder()
    second, stats = embed(ds, encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 0 and stats.n_cached == 4
    np.testing.assert_array_equal(first, second)


def test_added_images_are_the_only_ones_computed(tmp_path):
    root = make_dataset(tmp_path / "d", COLOURS[:2])
    embed(load_dataset(root), CountingEncoder(), cache_dir=tmp_path / "c")
    make_dataset(root, COLOURS)  # two more rows
    encoder = CountingEncoder()
    features, stats = embed(load_dataset(root), encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 2 and stats.n_computed == 2
    np.testing.assert_allclose(features, np.array(COLOURS, np.float32))


def test_changed_image_is_recomputed(tmp_path):
    root = make_dataset(tmp_path / "d", COLOURS)
    embed(load_dataset(root), CountingEncoder(), cache_dir=tmp_path / "c")
    Image.new("RGB", (16, 9), (1, 2, 3)).save(root / "images" / "v0.png")
    encoder = CountingEncoder()
    features, _ = embed(load_dataset(root), encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 1
    np.testing.assert_allclose(features[0], [1, 2, 3])


def test_changed_spec_recomputes_and_records_it(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    embed(ds, CountingEncoder(scale=1.0), cache_dir=tmp_path / "c")
    encoder = CountingEncoder(scale=2.0)
    features, stats = embed(ds, encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 4
    np.testing.assert_allclose(features, 2 * np.array(COLOURS, np.float32))
    spec = json.loads((stats.cache_path / "spec.json").read_text())["spec"]
    assert spec["scale"] == 2.0 and spec["encoder"] == "counting"


def test_tampered_spec_file_is_not_trusted(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    _, stats = embed(ds, CountingEncoder(), cache_dir=tmp_path / "c")
    spec_file = stats.cache_path / "spec.json"
    payload = json.loads(spec_file.read_text())
    payload["spec"]["version"] = "0"
    spec_file.write_text(json.dumps(payload))
    encoder = CountingEncoder()
    embed(ds, encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 4


def test_corrupt_shard_is_recomputed(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    _, stats = embed(ds, CountingEncoder(), cache_dir=tmp_path / "c")
    shard = next(stats.cache_path.glob("shard-*.safetensors"))
    shard.write_bytes(b"not a safetensors file")
    encoder = CountingEncoder()
    features, _ = embed(ds, encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 4
    np.testing.assert_allclose(features, np.array(COLOURS, np.float32))


def test_text_encoder_keys_on_title_content(tmp_path):
    titles = ["a", "same 🔥", "same 🔥", "longer title"]
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS, titles))
    features, stats = embed(ds, TitleLength(), cache_dir=tmp_path / "c")
    assert features[:, 0].tolist() == [len(t) for t in titles]
    assert stats.n_computed == 3  # the duplicated title is encoded once


def test_default_cache_dir_is_outside_the_dataset(tmp_path, monkeypatch):
    from thumbview.embed.cache import default_cache_dir

    monkeypatch.delenv("THUMBVIEW_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = default_cache_dir(tmp_path / "data")
    assert path.is_relative_to(tmp_path / "cache") and not path.is_relative_to(tmp_path / "data")
    assert default_cache_dir(tmp_path / "other") != path  # one folder per dataset
    monkeypatch.setenv("THUMBVIEW_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir(tmp_path / "data") == tmp_path / "mine"


def test_unreadable_image_without_verification_is_a_skip_not_a_stop(tmp_path):
    root = make_dataset(tmp_path / "d", COLOURS)
    (root / "images" / "v1.png").write_bytes(b"garbage")
    ds = load_dataset(root, verify_images=False)
    features, stats = embed(ds, CountingEncoder(), cache_dir=tmp_path / "c")
    assert [(s.row, s.file_name, s.reason) for s in stats.skipped] == [
        (1, "images/v1.png", "unreadable image")
    ]
    assert "v1.png" in stats.skipped[0].detail
    assert np.isnan(features[1]).all() and finite_rows({"x": features}).tolist() == [1, 0, 1, 1]
    np.testing.assert_allclose(features[[0, 2, 3]], np.array(COLOURS, np.float32)[[0, 2, 3]])
    assert (stats.n_cached, stats.n_computed) == (0, 3)
    Image.new("RGB", (16, 9), (7, 8, 9)).save(root / "images" / "v1.png")  # fixed: tried again
    encoder = CountingEncoder()
    features, stats = embed(load_dataset(root), encoder, cache_dir=tmp_path / "c")
    assert encoder.calls == 1 and stats.skipped == () and np.isfinite(features).all()


def test_corrupted_in_place_with_size_and_mtime_kept_is_reported_unreadable(tmp_path):
    """Issue 10.9: the verification cache must not vouch for a file damaged in place."""
    root = make_dataset(tmp_path / "d", COLOURS)
    assert len(load_dataset(root)) == 4  # verdicts cached
    path = root / "images" / "v2.png"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[30:] = bytes(len(data) - 30)  # same size, broken
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ds = load_dataset(root)
    assert ds.report.counts() == {"unreadable image": 1}
    assert ds.report.skipped[0].file_name == "images/v2.png"
    features, stats = embed(ds, CountingEncoder(), cache_dir=tmp_path / "c")
    assert features.shape == (3, 3) and stats.skipped == ()


class PickyEncoder(CountingEncoder):
    """Raises on pure-green images (an encoder bug one input triggers), fine on the rest."""

    def encode(self, inputs):
        if any(np.asarray(im)[..., 1].mean() > 250 for im in inputs):
            raise RuntimeError("boom")
        return super().encode(inputs)


def test_encoder_failure_on_one_input_skips_only_that_row(tmp_path):
    colours = [(10, 20, 30), (0, 255, 0), (40, 50, 60)]
    ds = load_dataset(make_dataset(tmp_path / "d", colours))
    features, stats = embed(ds, PickyEncoder(), cache_dir=tmp_path / "c", batch_size=8)
    assert [(s.row, s.reason) for s in stats.skipped] == [(1, "unreadable image")]
    assert "RuntimeError: boom" in stats.skipped[0].detail
    assert finite_rows({"a": features}).tolist() == [True, False, True]


class BrokenEncoder(CountingEncoder):
    def encode(self, inputs):
        raise RuntimeError("weights missing")


def test_an_encoder_that_fails_on_everything_still_stops(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    with pytest.raises(RuntimeError, match="weights missing"):
        embed(ds, BrokenEncoder(), cache_dir=tmp_path / "c")


class InterruptedEncoder(CountingEncoder):
    """Stops (as Ctrl-C would) once it has encoded `limit` images."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def encode(self, inputs):
        if self.calls + len(inputs) > self.limit:
            raise KeyboardInterrupt
        return super().encode(inputs)


def test_interrupted_embed_resumes_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr("thumbview.embed.cache.SHARD_ROWS", 2)  # a shard every two rows
    ds = load_dataset(make_dataset(tmp_path / "d", COLOURS))
    with pytest.raises(KeyboardInterrupt):
        embed(ds, InterruptedEncoder(limit=3), cache_dir=tmp_path / "c", batch_size=1)
    encoder = CountingEncoder()
    features, stats = embed(ds, encoder, cache_dir=tmp_path / "c", batch_size=1)
    assert stats.n_cached == 2 and encoder.calls == 2  # the first shard survived
    np.testing.assert_allclose(features, np.array(COLOURS, np.float32))


TWO_RUNS = """
import json, sys, time
from pathlib import Path
import numpy as np
from thumbview.data.dataset import load_dataset
from thumbview.embed.base import Encoder
from thumbview.embed.cache import embed

class Slow(Encoder):
    name, version, modality = "slow", "1", "image"
    dim = 3
    def encode(self, inputs):
        time.sleep(0.3)  # a few seconds in all: the other run starts meanwhile
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im in inputs])

root, cache, go = map(Path, sys.argv[1:4])
ds = load_dataset(root)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
_, stats = embed(ds, Slow(), cache_dir=cache, batch_size=1, workers=1)
print(json.dumps({"computed": stats.n_computed, "cached": stats.n_cached}), flush=True)
"""


def test_two_embed_runs_at_once_compute_and_write_each_row_once(tmp_path):
    """Issue 30: two runs both computed everything and wrote duplicate shards. Now the
    second waits for the first (the store's lock) and reuses its rows."""
    import subprocess
    import sys

    from safetensors.numpy import load_file

    root = make_dataset(tmp_path / "d", COLOURS)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    args = [str(root), str(tmp_path / "c"), str(tmp_path / "go")]
    runs = [
        subprocess.Popen([sys.executable, "-c", TWO_RUNS, *args], env=env, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        assert all(r.stdout.readline().strip() == b"ready" for r in runs)
        (tmp_path / "go").touch()  # both start embedding together
        results = [json.loads(r.communicate(timeout=120)[0]) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
    assert sorted(r["computed"] for r in results) == [0, len(COLOURS)], results
    assert sorted(r["cached"] for r in results) == [0, len(COLOURS)], results
    shards = sorted((tmp_path / "c").glob("slow-*/shard-*.safetensors"))
    assert sum(len(load_file(s)["digests"]) for s in shards) == len(COLOURS)
