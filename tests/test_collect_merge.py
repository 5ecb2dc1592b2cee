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


# --- issue 24: shard folders that link outside, and counts that contradict each other -------


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file (and link) below `folder` with its bytes: what a merge must not change."""
    return {
        str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def test_merge_writes_nothing_into_its_shards(shards, tmp_path: Path) -> None:
    """Before, the read-only connection left collect.sqlite-wal and -shm in every shard."""
    a, b = shards
    before = {a: files_of(a), b: files_of(b)}
    merge_shards(tmp_path / "out", [a, b])
    assert {a: files_of(a), b: files_of(b)} == before


def test_a_shard_killed_mid_write_merges_its_logged_rows(tmp_path: Path) -> None:
    """A run killed with kill -9 leaves committed rows in collect.sqlite-wal only: they are
    merged (from a copy inside OUT, removed after), and the shard is left as it was."""
    import shutil

    live = tmp_path / "live"
    store = Store(live)  # never closed: its rows stay in the write-ahead log
    for r in (row(1), row(2)):
        atomic_write(live / r["file_name"], jpeg(5))
        store.add_video(r)
    killed = tmp_path / "killed"
    shutil.copytree(live, killed, ignore=shutil.ignore_patterns("*-shm"))
    assert (killed / "collect.sqlite-wal").stat().st_size > 0
    before = files_of(killed)
    summary = merge_shards(tmp_path / "out", [killed])
    store.close()
    assert summary.added == 2 and files_of(killed) == before
    assert not list((tmp_path / "out").glob(".merge-*"))


def test_shard_links_leading_outside_are_refused(shards, tmp_path: Path) -> None:
    """A shard's images/ linked elsewhere: its rows are refused one by one (reported); its
    database linked elsewhere (OUT's own included): the merge is refused before it starts.
    A shard folder that is itself a link (the user named it) merges from where it leads."""
    a, b = shards
    elsewhere = tmp_path / "elsewhere"
    (a / "images").rename(elsewhere)
    os.symlink(elsewhere, a / "images")
    summary = merge_shards(tmp_path / "out", [a])
    assert summary.added == 0 and summary.refused == {"bad image": 5}
    out = tmp_path / "out2"
    merge_shards(out, [b])
    (b / "collect.sqlite").rename(tmp_path / "b.sqlite")
    os.symlink(out / "collect.sqlite", b / "collect.sqlite")
    before = snapshot(out)
    with pytest.raises(CollectError, match="link to a database outside its shard"):
        merge_shards(out, [b])
    assert snapshot(out) == before
    (b / "collect.sqlite").unlink()
    (tmp_path / "b.sqlite").rename(b / "collect.sqlite")
    os.symlink(b, tmp_path / "b-link")
    assert merge_shards(tmp_path / "out3", [tmp_path / "b-link"]).added == 5


def test_out_whose_images_lead_outside_is_refused(shards, tmp_path: Path) -> None:
    """Before, an OUT/images/<bucket> link made merge (and collect) write images where it
    led, and the sweep delete what it found there."""
    a, _ = shards
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.jpg").write_bytes(b"mine")
    (out / "images").mkdir(parents=True)
    os.symlink(victim, out / "images" / vid(1)[:2])
    with pytest.raises(CollectError, match="link leading outside"):
        merge_shards(out, [a])
    assert files_of(victim) == {"keep.jpg": b"mine"}


def test_conflicting_views_at_one_instant_are_reported_not_dropped(tmp_path: Path) -> None:
    """Two shards with video 1 read at the same instant with different counts (one shard
    edited, or a clock collision). Before, the second count was dropped silently and the
    row depended on the order of the shards. Now OUT keeps the first and the second is
    refused as "conflicting views", both counts in the log; every other snapshot merges."""
    a = make_shard(tmp_path / "a", [row(1, T1, views=100), row(2)], shade=10)
    b = make_shard(tmp_path / "b", [row(1, T1, views=555, likes=9, comments=4), row(3)], shade=20)  # fmt: skip
    t0 = "2023-12-01T00:00:00.000000Z"
    with Store(b) as store:
        store.put_videos([], [(vid(1), 50, t0)])  # an earlier snapshot: no conflict, merged
    summary = merge_shards(tmp_path / "out", [a, b])
    assert summary.refused == {"conflicting views": 1} and summary.total_rows == 3
    with Store(tmp_path / "out") as store:
        assert store.history(vid(1)) == [(50, t0), (100, T1)]
        assert store.video_rows([vid(1)])[vid(1)]["views"] == 100  # b's fuller row does not win
    again = merge_shards(tmp_path / "out", [a, b])
    assert again.refused == {"conflicting views": 1} and again.added == again.updated == 0


def test_merge_refuses_a_count_the_loader_refuses(tmp_path: Path) -> None:
    shard = make_shard(tmp_path / "s", [row(1), row(2)], shade=30)
    with sqlite3.connect(shard / "collect.sqlite") as db:
        db.execute("UPDATE videos SET views = ? WHERE video_id = ?", (10**13, vid(2)))
    db.close()
    summary = merge_shards(tmp_path / "out", [shard])
    assert summary.added == 1 and summary.refused == {"bad views": 1}
