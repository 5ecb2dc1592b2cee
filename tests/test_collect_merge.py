"""`collect merge`: shard folders into one dataset, idempotent, nothing lost or duplicated."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from thumbview.collect import CollectError, Store, merge_shards
from thumbview.collect.collector import export_metadata
from thumbview.collect.store import COLUMNS, image_relpath
from thumbview.fileio import atomic_write

CRAFTED = "../../../../escaped_by_video_id"
T1, T2 = "2024-01-01T00:00:00.000000Z", "2024-02-01T00:00:00.000000Z"


def vid(i: int) -> str:
    return f"merge{i:06d}"


def jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 18), (shade, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def row(i: int, collected_at: str = T1, **fields: object) -> dict:
    base = {c: None for c in COLUMNS} | {
        "video_id": vid(i), "file_name": image_relpath(vid(i)), "views": 100 + i,
        "title": f"video {i}", "channel_id": "UC" + "0" * 22, "likes": 3,
        "width": 32, "height": 18, "collected_at": collected_at,
    }  # fmt: skip
    return base | fields


def make_shard(root: Path, rows: list[dict], shade: int) -> Path:
    """A collect folder as `collect ids --shard` leaves it (rows + images + metadata.csv)."""
    with Store(root) as store:
        for r in rows:
            atomic_write(root / r["file_name"], jpeg(shade))
            store.add_video(r)
        export_metadata(root, store)
    return root


def snapshot(root: Path) -> tuple:
    """Everything a merge may change in OUT: the export, the tables, the images' bytes."""
    with sqlite3.connect(root / "collect.sqlite") as db:
        tables = tuple(
            tuple(db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall())
            for t in ("videos", "views_history")
        )
    db.close()
    images = {p.relative_to(root).as_posix(): p.read_bytes() for p in (root / "images").rglob("*.jpg")}  # fmt: skip
    return (root / "metadata.csv").read_bytes(), tables, images


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    a = make_shard(tmp_path / "a", [row(i) for i in range(1, 6)], shade=10)
    b_rows = [row(i) for i in range(6, 9)]
    b_rows.append(row(4, T2, views=999, title="video 4, refreshed"))  # newer: wins
    b_rows.append(row(5, T1, likes=None))  # same time, one field fewer: loses
    b = make_shard(tmp_path / "b", b_rows, shade=200)
    return a, b


def test_merge_overlapping_shards_keeps_the_newest_row(shards, tmp_path: Path) -> None:
    a, b = shards
    out = tmp_path / "out"
    summary = merge_shards(out, [a, b])
    assert (summary.added, summary.updated, summary.unchanged) == (8, 1, 1)
    assert summary.total_rows == 8 and summary.refused == {}
    table = pd.read_csv(out / "metadata.csv").set_index("video_id")
    assert sorted(table.index) == [vid(i) for i in range(1, 9)]  # nothing lost, no duplicate
    assert table.loc[vid(4), "views"] == 999 and table.loc[vid(4), "collected_at"] == T2
    assert table.loc[vid(5), "likes"] == 3  # the more complete row
    assert (out / image_relpath(vid(4))).read_bytes() == jpeg(200)  # the winner's image
    assert (out / image_relpath(vid(5))).read_bytes() == jpeg(10)
    with Store(out) as store:
        assert store.history(vid(4)) == [(104, T1), (999, T2)]  # every snapshot kept
    dataset_mod = pytest.importorskip("thumbview.data.dataset")
    assert len(dataset_mod.load_dataset(out)) == 8

    before = snapshot(out)
    again = merge_shards(out, [a, b])
    assert (again.added, again.updated, again.history_added) == (0, 0, 0)
    assert again.unchanged == 10 and snapshot(out) == before  # idempotent
    reverse = merge_shards(tmp_path / "reverse", [b, a])
    assert snapshot(tmp_path / "reverse") == before  # the rule, not the order, decides
    assert reverse.total_rows == 8


def test_merge_refuses_crafted_rows(tmp_path: Path) -> None:
    shard = make_shard(tmp_path / "s" / "t" / "u" / "shard", [row(1), row(2), row(3)], shade=50)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg(1))
    link = shard / image_relpath(vid(3))
    link.unlink()
    os.symlink(outside, link)  # an image that leaves the shard
    with sqlite3.connect(shard / "collect.sqlite") as db:  # rows the collector never writes
        db.execute(
            "INSERT INTO videos (video_id, file_name, views, collected_at) VALUES (?, ?, 1, ?)",
            (CRAFTED, f"images/../{CRAFTED}.jpg", T1),
        )
        db.execute(
            "INSERT INTO videos (video_id, file_name, views, collected_at) VALUES (?, ?, 1, ?)",
            (vid(9), image_relpath(vid(1)), T1),
        )
        db.execute(
            "INSERT INTO skipped (video_id, reason, attempts, permanent, at) VALUES (?, 'x', 1, 1, ?)",
            (CRAFTED, T1),
        )
    db.close()
    out = tmp_path / "out"
    summary = merge_shards(out, [shard])
    assert summary.added == 2 and summary.total_rows == 2
    assert summary.refused == {"invalid video id": 1, "bad file name": 1, "bad image": 1}
    assert sorted(pd.read_csv(out / "metadata.csv")["video_id"]) == [vid(1), vid(2)]
    files = {p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()}
    assert not any("escaped" in p.name for p in files)
    with Store(out) as store:
        assert store.skipped().empty  # the crafted skip was not copied either


def test_merge_checks_its_arguments(shards, tmp_path: Path) -> None:
    a, _ = shards
    with pytest.raises(CollectError, match="not a collect folder"):
        merge_shards(tmp_path / "out", [tmp_path])
    with pytest.raises(CollectError, match="OUT itself"):
        merge_shards(a, [a])


def test_shards_from_collect_ids_merge_to_the_unsharded_dataset(tmp_path: Path) -> None:
    """`collect ids --shard i/3` on three 'machines', then `collect merge` (the CLI)."""
    from typer.testing import CliRunner

    from test_collect_api import backend, cfg, serve_fake
    from test_collect_api import vid as api_vid
    from thumbview.cli.collect import app
    from thumbview.collect import collect_ids

    ids = [api_vid(i) for i in range(15)]
    with serve_fake(15) as fake:
        whole = collect_ids(tmp_path / "whole", ids, backend=backend(fake), config=cfg())
        parts = [tmp_path / f"part{i}" for i in range(3)]
        for i, part in enumerate(parts):
            collect_ids(part, ids, backend=backend(fake), shard=(i, 3), config=cfg())
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "merged"), *map(str, parts)])
    assert result.exit_code == 0, result.output
    assert "refused none" in result.output
    merged = pd.read_csv(tmp_path / "merged" / "metadata.csv")
    alone = pd.read_csv(tmp_path / "whole" / "metadata.csv")
    assert len(merged) == whole.total_rows and merged["video_id"].is_unique
    keep = ["video_id", "file_name", "views", "title", "width", "height"]
    pd.testing.assert_frame_equal(merged[keep], alone[keep])
    for name in merged["file_name"]:
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
