"""Parquet shards: pack/unpack are lossless, loading them gives the folder's rows and report,
`datasets` reads them, embedding them gives the folder's features."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import thumbview.data.shards as shards_module
from thumbview.data.dataset import DatasetError, load_dataset, verify_cache_path
from thumbview.data.shards import pack, shard_files, unpack
from thumbview.embed.cache import embed

HEADER = ["file_name", "views", "title", "video_id", "channel_id", "likes"]


def jpeg(color, size=(12, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def messy_folder(root: Path) -> Path:
    """7 good rows (one image shared by two rows) and one row for every skip reason."""
    rows = [[f"img/{i}.jpg", str(10 * i + 1), f"title {i} 🔥", f"v{i}", f"c{i % 3}", "5"]
            for i in range(6)]  # fmt: skip
    rows += [
        ["img/0.jpg", "7", "same image, other video", "w0", "c0", ""],
        ["../outside.jpg", "1", "", "u", "c1", "1"],
        ["img/none.jpg", "1", "", "m", "c1", "1"],
        ["img/bad.jpg", "1", 'quote " and, comma', "r", "c2", "x"],
        ["img/1.jpg", "1_000", "", "v7", "c2", "1"],
        ["img/2.jpg", "-1", "", "iv", "c2", "1"],
        ["img/3.jpg", "3", "dup", "v3", "c2", "1"],
        ["nested/deep/7.jpg", "1e3", "NA", "0007", "", "hidden"],
    ]
    for i in range(6):
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "img" / f"{i}.jpg").write_bytes(jpeg((40 * i, 100, 200 - 30 * i)))
    (root / "img" / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    (root / "nested" / "deep").mkdir(parents=True)
    (root / "nested" / "deep" / "7.jpg").write_bytes(jpeg((1, 2, 3)))
    with (root / "metadata.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([HEADER, *rows])
    return root


def brief(report):
    return [(s.row, s.file_name, s.reason) for s in report.skipped]


@pytest.fixture
def packed(tmp_path):
    src = messy_folder(tmp_path / "src")
    result = pack(src, tmp_path / "shards", shard_size=5)
    return src, tmp_path / "shards", result


def test_pack_writes_the_hugging_face_layout(packed):
    src, out, result = packed
    names = [p.name for p in shard_files(out)]
    assert names == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert (result.n_rows, result.n_images) == (14, 12)  # no bytes for ../outside, none.jpg
    schema = pq.read_schema(shard_files(out)[0])
    assert schema.names == ["image", "views", "title", "video_id", "channel_id", "likes"]
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(schema.field("views").type) == "string"  # "1,234" and "1e3" keep their text
    first = pq.read_table(shard_files(out)[0]).to_pylist()[0]
    assert first["image"] == {"bytes": (src / "img/0.jpg").read_bytes(), "path": "img/0.jpg"}


def test_shards_load_with_the_folders_rows_and_report(packed):
    src, out, _ = packed
    folder, sharded = load_dataset(src), load_dataset(out)
    assert folder.report.counts() == {
        "unsafe file_name": 1, "missing image": 1, "unreadable image": 1,
        "invalid views": 2, "duplicate video_id": 1,
    }  # fmt: skip
    assert brief(sharded.report) == brief(folder.report)
    assert sharded.report.summary() == folder.report.summary()
    pd.testing.assert_frame_equal(sharded.table, folder.table)
    assert sharded.shards is not None and folder.shards is None
    for i in range(len(folder)):
        assert sharded.image_source(i) == folder.paths[i].read_bytes()
    assert sharded.image_bytes([3, 0]) == [
        folder.paths[3].read_bytes(),
        folder.paths[0].read_bytes(),
    ]
    sub = sharded.subset([4, 1])
    assert sub.keys == [sharded.keys[4], sharded.keys[1]]
    assert sub.image_bytes([0, 1]) == sharded.image_bytes([4, 1])


def test_unpack_round_trip_is_lossless(packed, tmp_path):
    src, out, _ = packed
    result = unpack(out, tmp_path / "back")
    back = tmp_path / "back"
    assert (result.n_rows, result.n_images, result.n_unwritable) == (14, 12, 0)
    assert result.n_unreadable == 1  # img/bad.jpg: written as it is, and reported
    assert len([p for p in back.rglob("*.jpg")]) == 8  # 12 rows with bytes, 8 distinct files
    assert (back / "metadata.csv").read_bytes() == (src / "metadata.csv").read_bytes()
    for path in src.rglob("*.jpg"):
        if path.name != "outside.jpg" and path.name != "none.jpg":
            assert (back / path.relative_to(src)).read_bytes() == path.read_bytes()
    a, b = load_dataset(src), load_dataset(back)
    pd.testing.assert_frame_equal(a.table, b.table)
    as_text = lambda ds, root: [  # noqa: E731
        (s.row, s.file_name, s.reason, s.detail.replace(str(root.resolve()), "ROOT"))
        for s in ds.report.skipped
    ]
    assert as_text(a, src) == as_text(b, back)


def test_integer_columns_are_typed_and_still_lossless(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg((9, 9, 9)))
    (root / "metadata.csv").write_text("file_name,views,video_id\na.jpg,0,007\n")
    pack(root, tmp_path / "out")
    schema = pq.read_schema(shard_files(tmp_path / "out")[0])
    assert str(schema.field("views").type) == "int64"
    assert str(schema.field("video_id").type) == "string"  # "007" is not a plain integer
    unpack(tmp_path / "out", tmp_path / "back")
    assert (tmp_path / "back" / "metadata.csv").read_text() == (root / "metadata.csv").read_text()


def test_hugging_face_datasets_reads_the_shards(packed, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src, out, _ = packed
    hf = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert hf.num_rows == 14
    assert hf.features["image"].__class__.__name__ == "Image"
    assert hf[0]["title"] == "title 0 🔥" and hf[0]["views"] == "1"
    assert hf[0]["image"].size == (12, 8)


def test_hugging_face_imagefolder_reads_what_unpack_writes(tmp_path, monkeypatch):
    """`unpack` writes its own metadata.csv (not `write_metadata`): imagefolder reads it too."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    for i in range(3):
        (src / "img" / f"{i}.jpg").write_bytes(jpeg((80 * i, 0, 0)))
    with (src / "metadata.csv").open("w", encoding="utf-8", newline="") as f:
        rows = [[f"img/{i}.jpg", str(i + 1), f"title {i} 🔥", f"v{i}", "c", "1"] for i in range(3)]
        csv.writer(f, lineterminator="\n").writerows([HEADER, *rows])
    pack(src, tmp_path / "shards")
    unpack(tmp_path / "shards", tmp_path / "back")
    hf = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "back"), cache_dir=str(tmp_path / "hf")
    )["train"]
    assert hf.num_rows == 3
    assert dict(zip(hf["video_id"], hf["title"], strict=True)) == {
        f"v{i}": f"title {i} 🔥" for i in range(3)
    }
    by_id = {row["video_id"]: row["image"].getpixel((0, 0))[0] for row in hf}
    assert by_id["v0"] < 40 < by_id["v1"] < by_id["v2"]  # each row got its own image


def test_shards_written_by_hugging_face_datasets_load(tmp_path, monkeypatch):
    """Foreign shards: no file_name column, image paths that are absolute or basenames."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = [
        {"bytes": jpeg((i * 50, 0, 0)), "path": p}
        for i, p in enumerate(["/abs/a.jpg", "b.jpg", None])
    ]
    features = datasets.Features({"image": datasets.Image(), "views": datasets.Value("int64"),
                                  "video_id": datasets.Value("string")})  # fmt: skip
    hf = datasets.Dataset.from_dict(
        {"image": images, "views": [5, 6, 7], "video_id": ["a", "b", "c"]}, features=features
    )
    (tmp_path / "hf" / "data").mkdir(parents=True)
    hf.to_parquet(str(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet"))
    ds = load_dataset(tmp_path / "hf")
    assert ds.keys == ["a", "b", "c"] and ds.views.tolist() == [5, 6, 7]
    assert ds.report.skipped == ()  # the bytes are there: a path is only a label
    assert ds.image_bytes([1]) == [images[1]["bytes"]]


def test_verification_cache_and_a_rewritten_shard(packed, monkeypatch):
    _, out, _ = packed
    calls: list[str] = []
    real = shards_module.tbl.decode_error

    def counting(source, max_pixels, name=None, *limits):
        calls.append(name)
        return real(source, max_pixels, name, *limits)

    monkeypatch.setattr(shards_module.tbl, "decode_error", counting)
    first = load_dataset(out)
    assert len(calls) == 10 and verify_cache_path(out).is_file()
    calls.clear()
    assert brief(load_dataset(out).report) == brief(first.report) and calls == []
    shard = shard_files(out)[0]
    table = pq.read_table(shard)
    image = table.column("image").to_pylist()
    image[1]["bytes"] = image[1]["bytes"][:30]  # damage row 1 of shard 0
    pq.write_table(table.set_column(0, "image", [image]), shard)
    again = load_dataset(out)
    assert len(calls) == 5 and all(c.startswith("train-00000-of-00003.parquet") for c in calls)
    assert ("unreadable image", 1) in [(s.reason, s.row) for s in again.report.skipped]


def test_embed_from_shards_equals_the_folder_and_shares_the_cache(packed, tmp_path):
    from test_cache import CountingEncoder

    src, out, _ = packed
    folder_feats, _ = embed(load_dataset(src), CountingEncoder(), cache_dir=tmp_path / "c1")
    encoder = CountingEncoder()
    shard_feats, stats = embed(load_dataset(out), encoder, cache_dir=tmp_path / "c2", batch_size=2)
    np.testing.assert_array_equal(shard_feats, folder_feats)
    assert encoder.calls == 7  # 8 rows, 7 distinct images
    again = CountingEncoder()
    _, stats = embed(load_dataset(out), again, cache_dir=tmp_path / "c1")
    assert again.calls == 0 and stats.n_cached == 8  # same digests as the folder's


def test_pack_refuses_what_it_cannot_keep(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "metadata.csv").write_bytes(b"file_name,views\na.jpg,1\nb\xff.jpg,2\n")
    with pytest.raises(DatasetError, match="malformed row"):
        pack(root, tmp_path / "out")
    (root / "metadata.csv").write_text("file_name,views,image\na.jpg,1,x\n")
    with pytest.raises(DatasetError, match="column named 'image'"):
        pack(root, tmp_path / "out")
    (root / "metadata.csv").write_text("file_name,views\n")
    assert pack(root, tmp_path / "out").n_rows == 0
    assert len(load_dataset(tmp_path / "out")) == 0
    with pytest.raises(DatasetError, match="already holds shards"):
        pack(root, tmp_path / "out")


def test_a_pack_that_did_not_finish_is_refused_not_loaded_as_fewer_rows(tmp_path, monkeypatch):
    """Before: `pack` stopped after shard 1 of 3 left `train-00000-of-00003.parquet` alone,
    and `load_dataset`, `train`, `embed` and `unpack` read it as a dataset of 5 rows of 14."""
    from typer.testing import CliRunner

    from thumbview.cli import app

    src, out = messy_folder(tmp_path / "src"), tmp_path / "out"
    write, calls = shards_module._write_shard, []

    def stop_at_the_second(*args):
        calls.append(args[0].name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(*args)

    with monkeypatch.context() as patch:
        patch.setattr(shards_module, "_write_shard", stop_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            pack(src, out, shard_size=5)
    assert [p.name for p in shard_files(out)] == ["train-00000-of-00003.parquet"]
    for read in (load_dataset, lambda root: unpack(root, tmp_path / "back")):
        with pytest.raises(DatasetError, match="lacks 2 shard") as info:
            read(out)
        assert "train-00001-of-00003.parquet, train-00002-of-00003.parquet" in str(info.value)
    res = CliRunner().invoke(app, ["info", str(out)])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "did not finish" in res.output
    pack(src, tmp_path / "again", shard_size=5)  # into an empty OUT, to the end: every row
    assert len(load_dataset(tmp_path / "again")) == len(load_dataset(src))
    (out / "data" / "train-00000-of-00003.parquet").rename(out / "data" / "part.parquet")
    assert len(load_dataset(out)) > 0  # a name that promises no other shard: read as it is


def test_unpack_never_writes_outside_out(tmp_path):
    import pyarrow as pa

    (tmp_path / "in" / "data").mkdir(parents=True)
    rows = [
        {"bytes": jpeg((1, 1, 1)), "path": "../../escaped.jpg"},
        {"bytes": jpeg((2, 2, 2)), "path": "ok.jpg"},
    ]
    table = pa.table({"image": pa.array(rows, shards_module.IMAGE_TYPE), "views": ["1", "2"]})
    pq.write_table(table, tmp_path / "in" / "data" / "train-00000-of-00001.parquet")
    result = unpack(tmp_path / "in", tmp_path / "out")
    assert (result.n_images, result.n_unwritable) == (1, 1)
    assert not (tmp_path / "escaped.jpg").exists() and not list(tmp_path.glob("../escaped.jpg"))
    ds = load_dataset(tmp_path / "out")
    assert ds.report.counts() == {"unsafe file_name": 1} and ds.keys == ["ok"]


def test_cli_pack_info_unpack(packed, tmp_path):
    from typer.testing import CliRunner

    from thumbview.cli import app

    src, _, _ = packed
    runner = CliRunner()
    res = runner.invoke(app, ["pack", str(src), str(tmp_path / "s2"), "--shard-size", "4"])
    assert res.exit_code == 0, res.output
    assert "14 rows" in res.output and "4 shard" in res.output
    res = runner.invoke(app, ["info", str(tmp_path / "s2")])
    assert res.exit_code == 0 and load_dataset(src).report.summary() in " ".join(res.output.split())
    res = runner.invoke(app, ["unpack", str(tmp_path / "s2"), str(tmp_path / "b2")])
    assert res.exit_code == 0, res.output
    assert "1 image(s) written as they are but not readable" in " ".join(res.output.split())
    assert (tmp_path / "b2" / "metadata.csv").read_bytes() == (src / "metadata.csv").read_bytes()
    res = runner.invoke(app, ["pack", str(src), str(tmp_path / "s2")])
    assert res.exit_code == 2 and "already holds shards" in " ".join(res.output.split())


def test_loading_streams_image_bytes_one_row_group_at_a_time(tmp_path, monkeypatch):
    """Bounded memory: image bytes are read per row group (at most two kept), never whole."""
    monkeypatch.setattr(shards_module, "ROW_GROUP_ROWS", 2)
    src = messy_folder(tmp_path / "src")
    pack(src, tmp_path / "out", shard_size=6)
    assert pq.ParquetFile(shard_files(tmp_path / "out")[0]).num_row_groups == 3
    real_read = pq.ParquetFile.read

    def read(self, columns=None, **kwargs):
        assert columns is None or not any(c.startswith("image.bytes") for c in columns)
        assert columns is not None, "a whole-file read would load every image"
        return real_read(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", read)
    sizes: list[int] = []
    real_group = shards_module.ShardIndex._group

    def group(self, f, g):
        out = real_group(self, f, g)
        sizes.append(len(self._groups))
        return out

    monkeypatch.setattr(shards_module.ShardIndex, "_group", group)
    ds = load_dataset(tmp_path / "out", verify_cache=False)
    assert brief(ds.report) == brief(load_dataset(src).report)
    assert sizes and max(sizes) <= 2
    assert ds.image_bytes(list(range(len(ds)))) == load_dataset(src).image_bytes(range(len(ds)))


# --- issue 24.4: a hostile cell is capped like an image file, memory bounded by the cap ----

CAP = 64 * 1024  # the byte cap in these tests; a row group is read up to 8 x CAP


def hostile_shard(root: Path, blobs: list[bytes | None], group_rows: int, **options) -> Path:
    """A foreign shard: one row per blob (img/i.jpg, views i + 1), `group_rows` a row group."""
    import pyarrow as pa

    (root / "data").mkdir(parents=True)
    cells = [{"bytes": b, "path": f"img/{i}.jpg"} for i, b in enumerate(blobs)]
    table = pa.table(
        {
            "image": pa.array(cells, shards_module.IMAGE_TYPE),
            "views": [str(i + 1) for i in range(len(blobs))],
        }  # fmt: skip
    )
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet", row_group_size=group_rows, **options)  # fmt: skip
    return root


def padded(n: int) -> bytes:
    """A valid JPEG followed by junk: it decodes, so only its size can refuse it."""
    return jpeg((9, 9, 9)) + b"\0" * n


def skips(ds) -> dict[int, str]:
    return {s.row: s.detail for s in ds.report.skipped}


def test_a_cell_over_the_cap_is_skipped_by_info_unpack_and_embed(tmp_path):
    """Before, the cell was kept by the loader and written out by `unpack` unchecked."""
    from test_cache import CountingEncoder

    blobs = [jpeg((i, 0, 0)) for i in range(6)]
    blobs[2] = padded(CAP)
    root = hostile_shard(tmp_path / "in", blobs, group_rows=3)
    ds = load_dataset(root, max_bytes=CAP)
    assert list(skips(ds)) == [2] and ds.keys == ["0", "1", "3", "4", "5"]
    assert skips(ds)[2].endswith(f"{CAP + len(jpeg((9, 9, 9))):,} bytes, over the {CAP:,}-byte image cap")  # fmt: skip
    result = unpack(root, tmp_path / "out", max_bytes=CAP)
    assert (result.n_images, result.n_refused) == (5, 1) and not (tmp_path / "out/img/2.jpg").exists()  # fmt: skip
    unchecked = load_dataset(root, max_bytes=CAP, verify_images=False)  # embed still refuses it
    _, stats = embed(unchecked, CountingEncoder(), cache_dir=tmp_path / "c")
    assert [s.row for s in stats.skipped] == [2]


def test_a_row_group_too_large_to_read_is_never_read(tmp_path, monkeypatch):
    """The footer says how many bytes a group's images take: over 8 x the cap, the group is
    refused without being read (Parquet cannot read one of its cells alone)."""
    blobs = [jpeg((i, 0, 0)) for i in range(6)]
    blobs[4] = padded(9 * CAP)
    root = hostile_shard(tmp_path / "in", blobs, group_rows=2)
    read: list[int] = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: read.append(g) or real(self, g, **kw))  # fmt: skip
    ds = load_dataset(root, max_bytes=CAP, verify_cache=False)
    assert sorted(skips(ds)) == [4, 5] and "its row group stores" in skips(ds)[5]
    assert 2 not in read and ds.keys == ["0", "1", "2", "3"]


def test_a_repeated_dictionary_cell_cannot_expand_past_the_budget(tmp_path):
    """A dictionary-encoded cell costs its bytes once on disk but once per row decoded: 64
    rows of one 60 KB image are a 60 KB file that decodes to 3.8 MB (8 x CAP is 512 KB)."""
    blob = padded(60_000)
    root = hostile_shard(tmp_path / "in", [blob] * 64, group_rows=64, dictionary_pagesize_limit=2**24)  # fmt: skip
    assert (root / "data" / "train-00000-of-00001.parquet").stat().st_size < 2 * len(blob)
    ds = load_dataset(root, max_bytes=CAP)
    assert len(ds) == 0 and all("decodes to 3,8" in d for d in skips(ds).values())
    assert len(load_dataset(root, max_bytes=CAP * 64)) == 64  # within a larger budget: kept


def test_text_image_bytes_are_refused_not_read_as_paths(tmp_path):
    """Before, a string cell was handed to the image loader as a path: a shard could make
    thumbview read any image file on the machine."""
    import pyarrow as pa

    secret = tmp_path / "elsewhere.jpg"
    secret.write_bytes(jpeg((1, 2, 3)))
    kind = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    (tmp_path / "in" / "data").mkdir(parents=True)
    table = pa.table({"image": pa.array([{"bytes": str(secret), "path": "a.jpg"}], kind), "views": ["1"]})  # fmt: skip
    pq.write_table(table, tmp_path / "in" / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(DatasetError, match="'image.bytes' must be binary"):
        load_dataset(tmp_path / "in")


def test_image_files_and_packed_cells_share_the_cap(tmp_path, monkeypatch):
    """The folder refuses a file over the cap as the shards refuse its cell (same report),
    and `pack` cuts row groups so each can be read back whole under the budget."""
    src = messy_folder(tmp_path / "src")
    (src / "img" / "4.jpg").write_bytes(padded(9 * CAP))  # over the budget: its own group
    monkeypatch.setattr(shards_module, "DEFAULT_MAX_BYTES", CAP)  # what pack sizes groups by
    pack(src, tmp_path / "out")
    folder, sharded = load_dataset(src, max_bytes=CAP), load_dataset(tmp_path / "out", max_bytes=CAP)  # fmt: skip
    assert brief(sharded.report) == brief(folder.report)
    assert ("img/4.jpg", "unreadable image") in [(s.file_name, s.reason) for s in folder.report.skipped]  # fmt: skip
    meta = pq.ParquetFile(shard_files(tmp_path / "out")[0]).metadata
    sizes = [meta.row_group(g).column(0).total_uncompressed_size for g in range(meta.num_row_groups)]  # fmt: skip
    assert meta.num_row_groups >= 2 and sum(s > 8 * CAP for s in sizes) == 1  # the big one alone


def test_cli_info_and_unpack_refuse_a_cell_over_the_default_cap(tmp_path):
    """The default cap (32 MB) end to end: a 33 MB cell of zeros is 1.6 MB on disk."""
    from typer.testing import CliRunner

    from thumbview.cli import app
    from thumbview.data.images import DEFAULT_MAX_BYTES

    root = hostile_shard(tmp_path / "in", [jpeg((1, 1, 1)), padded(DEFAULT_MAX_BYTES)], group_rows=1)  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(root)])
    assert res.exit_code == 0 and "2 rows, 1 kept, 1 skipped (unreadable image: 1)" in res.output
    res = runner.invoke(app, ["unpack", str(root), str(tmp_path / "out")])
    assert res.exit_code == 0 and "1 image(s) not written: over the image byte cap" in res.output
    assert sorted(p.name for p in (tmp_path / "out" / "img").iterdir()) == ["0.jpg"]
