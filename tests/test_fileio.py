"""atomic_write: the old file or the new one, never half, and no temp files left behind."""

from __future__ import annotations

import pytest

from thumbview.fileio import atomic_write, publish_dir


def test_bytes_text_and_writer(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "emoji 🔥 kept")
    atomic_write(tmp_path / "c.txt", lambda p: p.write_text("from a writer"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "emoji 🔥 kept"
    assert (tmp_path / "c.txt").read_text() == "from a writer"
    assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "model.json"
    atomic_write(target, "old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_json_safe_makes_strict_json():
    import json

    import numpy as np

    from thumbview.fileio import json_safe

    value = {1: [np.float32(0.5), float("nan"), (np.int64(3), float("inf"))], "n": np.float64(2.0)}
    safe = json_safe(value)
    assert safe == {"1": [0.5, None, [3, None]], "n": 2.0}
    json.dumps(safe, allow_nan=False)  # raises if anything non-finite survived


def test_publish_dir_renames_a_staged_folder_whole_and_never_over_another(tmp_path):
    """The folder appears with every file at once, and an existing one is never replaced
    (`bot train` publishes each epoch under a new name, so a kill keeps the last whole one)."""
    staging = tmp_path / ".ckpt-1.tmp"
    (staging / "sub").mkdir(parents=True)
    (staging / "a.bin").write_bytes(b"a")
    (staging / "sub" / "b.json").write_text("{}")
    target = publish_dir(staging, tmp_path / "ckpt-1")
    assert not staging.exists() and (target / "a.bin").read_bytes() == b"a"
    assert (target / "sub" / "b.json").read_text() == "{}"
    again = tmp_path / ".again.tmp"
    again.mkdir()
    (again / "a.bin").write_bytes(b"new")
    with pytest.raises(FileExistsError):
        publish_dir(again, target)
    assert (target / "a.bin").read_bytes() == b"a" and again.is_dir()
