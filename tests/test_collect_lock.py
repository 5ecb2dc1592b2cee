"""One collection per dataset folder (issue 10.8), and durable writes (issue 10.11)."""

from __future__ import annotations

import json
import logging
import os
import socket
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
