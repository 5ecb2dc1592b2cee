"""One collection per dataset folder (issue 10.8), and durable writes (issue 10.11)."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thumbview.collect import LockHeld, collect_ids, dataset_lock
from thumbview.collect.lock import LOCK_NAME

HOLD = """
import sys, time
from thumbview.collect import dataset_lock
with dataset_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


class NoNetwork:
    """A backend that must never be reached: the lock is refused before any request."""

    name, batch_size, quota = "none", 1, None

    def fetch(self, ids, *, subscribers=True):  # pragma: no cover - reached only on failure
        raise AssertionError("the second run fetched")


@pytest.fixture
def holder(tmp_path: Path):
    """A separate process holding the lock on tmp_path/out."""
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, env=env)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == b"locked"
        yield out, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_second_collect_on_the_same_folder_is_refused(holder, tmp_path: Path) -> None:
    out, pid = holder
    with pytest.raises(LockHeld, match=f"pid {pid} on {socket.gethostname()}"):
        collect_ids(out, ["abcdefghijk"], backend=NoNetwork())
    with pytest.raises(LockHeld):  # in one process too: a second lock is a second holder
        with dataset_lock(tmp_path / "own"), dataset_lock(tmp_path / "own"):
            pass
    from thumbview.cli.collect import app

    ids = tmp_path / "ids.txt"
    ids.write_text("abcdefghijk\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ids", str(out), str(ids)])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)  # fmt: skip
    assert f"pid {pid}" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == pid  # the holder's file is intact


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "since": "2024-01-01T00:00:00Z"}
    (out / LOCK_NAME).write_text(json.dumps(stale), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="thumbview.collect.lock"):
        summary = collect_ids(out, [], backend=NoNetwork())
    assert summary.total_rows == 0
    assert f"pid {dead.pid}" in caplog.text and "stale" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released at the end of the run


def test_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    other = {"pid": 1, "host": "other-machine.example", "since": "2024-01-01T00:00:00Z"}
    (out / LOCK_NAME).write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(LockHeld, match="other-machine.example"):
        collect_ids(out, [], backend=NoNetwork())
    assert json.loads((out / LOCK_NAME).read_text()) == other


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_image_and_metadata_writes_fsync_their_folder(tmp_path: Path, monkeypatch) -> None:
    import io

    import httpx
    import pandas as pd
    from PIL import Image

    from thumbview.collect import HttpClient, RetryPolicy
    from thumbview.collect.thumbs import fetch_thumbnail
    from thumbview.collect.types import Thumb, VideoInfo
    from thumbview.data.dataset import write_metadata

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync dir", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 18)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    http = HttpClient(RetryPolicy(attempts=1), transport=httpx.MockTransport(lambda r: httpx.Response(200, content=jpeg)))  # fmt: skip
    video = VideoInfo("abcdefghijk", "t", 5, thumbnails=(Thumb("https://i.ytimg.com/vi/x/hqdefault.jpg", 2),))  # fmt: skip
    out = tmp_path / "out"
    saved = fetch_thumbnail(http, video, out)
    image = out / saved.file_name
    # The rename, then its folder, then the folders it had to create (images/ab, images, out).
    assert events[0] == ("replace", str(image))
    assert [p for _, p in events[1:]] == [str(image.parent), str(image.parent.parent), str(out), str(tmp_path)]  # fmt: skip
    events.clear()
    write_metadata(out, pd.DataFrame({"file_name": [saved.file_name], "views": [5]}))
    assert events == [("replace", str(out / "metadata.csv")), ("fsync dir", str(out))]


def test_two_collect_runs_at_once_one_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    """Issue 24: two runs on one folder at the same moment (the second through a symlink to
    it, and a merge too): while the first is fetching, the others are refused with one line
    and write nothing; the first finishes with every row."""
    import threading

    from test_collect_merge import make_shard, row
    from thumbview.collect import CollectError, merge_shards

    fetching, release = threading.Event(), threading.Event()

    class Slow(NoNetwork):
        def fetch(self, ids, *, subscribers=True):
            fetching.set()
            release.wait(10)
            from thumbview.collect.types import Unavailable

            return [Unavailable(v, "private") for v in ids]

    out = tmp_path / "out"
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(s=collect_ids(out, ["abcdefghijk"], backend=Slow())))  # fmt: skip
    worker.start()
    assert fetching.wait(10)
    os.symlink(out, tmp_path / "link")
    shard = make_shard(tmp_path / "shard", [row(1)], shade=1)
    try:
        for attempt in (
            lambda: collect_ids(tmp_path / "link", ["bbbbbbbbbbb"], backend=NoNetwork()),
            lambda: merge_shards(out, [shard]),
        ):
            with pytest.raises(LockHeld, match=f"pid {os.getpid()}") as refused:
                attempt()
            assert "\n" not in str(refused.value)
        with pytest.raises(CollectError, match="being collected into"):  # out as a shard
            merge_shards(tmp_path / "merged", [out])
        assert not (tmp_path / "merged" / "metadata.csv").exists()
    finally:
        release.set()
        worker.join(10)
    assert first["s"].skipped == {"private": 1} and not (out / LOCK_NAME).exists()
    from thumbview.collect import Store

    with Store(out) as store:
        assert store.skipped()["video_id"].tolist() == ["abcdefghijk"]  # the first run's
        assert [v for v, _, _ in store.pending(9)] == []  # nothing queued by the refused one
