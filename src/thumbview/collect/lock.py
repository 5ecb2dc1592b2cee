"""One collection at a time per dataset folder: an exclusive lock file naming its holder.

Two runs on one OUT re-fetch each other's videos (both queues hold the same ids), spend the
quota twice and append duplicate history. `OUT/collect.lock` holds the holder's pid, host
and start time; the exclusion itself is an `flock` on that file, which the kernel releases
when the process dies (kill -9, a crash), so a lock left behind by a dead process on this
host is taken over (with a warning) and never blocks a resume. A lock naming another host
is respected: this host cannot tell whether that process is alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone decides
    fcntl = None  # type: ignore[assignment]

from thumbview.collect.types import CollectError
from thumbview.schema import parse_json, read_regular_file

logger = logging.getLogger(__name__)

LOCK_NAME = "collect.lock"


class LockHeld(CollectError):
    """Another process collects into this folder; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock: what the lock file says."""

    pid: int
    host: str
    since: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}" + (f" since {self.since}" if self.since else "")


def _read_holder(path: Path) -> Holder | None:
    try:
        data = parse_json(read_regular_file(path, 1 << 16))  # a FIFO or device: not ours
        return Holder(int(data["pid"]), str(data["host"]), str(data.get("since", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # empty (killed while writing) or not ours: nothing to respect


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _try_flock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_locked(path: Path) -> int | None:
    """An fd holding the flock on the file now at `path`, or None if another process holds it.

    Re-checks the inode after locking: a holder that finished may have unlinked the file
    between our open and our flock, leaving us the lock on a file nobody else will see.
    """
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)
    raise CollectError(f"cannot take the lock {path}: it keeps being replaced")


def _refuse(path: Path, holder: Holder | None) -> LockHeld:
    who = holder.describe() if holder else "another process"
    return LockHeld(
        f"{path.parent} is being collected into by {who} (lock file {path}); "
        "wait for it to finish, or delete the lock file if that process is gone"
    )


@contextlib.contextmanager
def dataset_lock(root: str | Path) -> Iterator[Holder]:
    """Hold the exclusive collection lock on `root` for the block; raise `LockHeld` if taken."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    me = Holder(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    fd = _open_locked(path)
    previous = _read_holder(path)
    if fd is None:
        raise _refuse(path, previous)
    try:
        _check_previous(path, previous, me)
    except BaseException:
        os.close(fd)  # the file stays: it names its holder
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        os.fsync(fd)
        yield me
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before releasing, so a waiter never locks a file left behind
        os.close(fd)


def lock_holder(root: str | Path) -> Holder | None:
    """Who collects into `root` right now (None if nobody), asked without writing there: a
    shared flock on the lock file, opened read-only, fails while a run holds it."""
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: no run
        return None
    try:
        if fcntl is None:
            holder = _read_holder(path)
            return holder if holder is not None and _pid_alive(holder.pid) else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path) or Holder(0, "another process")
        return None
    finally:
        os.close(fd)  # releases the shared lock at once


def _check_previous(path: Path, previous: Holder | None, me: Holder) -> None:
    """A lock file left by another process: take it over if it is provably stale, else refuse."""
    if previous is None or previous.pid == me.pid and previous.host == me.host:
        return
    if previous.host != me.host:
        raise _refuse(path, previous)
    if fcntl is None and _pid_alive(previous.pid):
        raise _refuse(path, previous)
    logger.warning(
        "taking over the stale collect lock of %s: that process is gone", previous.describe()
    )
