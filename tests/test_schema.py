"""The one reader for untrusted JSON (`thumbview.schema.load_json`) and the places that use it.

Issue 30: a model's `config.json` linked to /dev/zero took 3.4 GB before MemoryError; an SAE
`cfg.json`, a `metadata.jsonl` title or a Parquet shard's `thumbview` metadata of 10^5
nested brackets raised RecursionError. Each is now one line naming the file, decided before
reading (not a regular file, over the size cap) or before parsing (nested too deeply).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from thumbview.schema import (
    MAX_JSON_DEPTH,
    JsonDepthError,
    SchemaError,
    load_json,
    nests_deeper,
    parse_json,
)

DEEP = "[" * 100_000 + "]" * 100_000
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
needs_dev_zero = pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")


def _within(seconds: float, fn):
    """fn()'s result or exception, failing the test if it takes longer (a blocked FIFO read)."""
    out: list = []

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out.append(("raised", e))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"still running after {seconds} s"
    return out[0]


def _refusal(path: Path, **kwargs) -> str:
    kind, value = _within(10, lambda: load_json(path, **kwargs))
    assert kind == "raised" and isinstance(value, SchemaError), value
    message = str(value)
    assert str(path) in message and "\n" not in message
    return message


@needs_fifo
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    assert "not a regular file" in _refusal(tmp_path / "config.json")


@needs_dev_zero
def test_a_link_to_dev_zero_is_refused_before_reading(tmp_path):
    (tmp_path / "config.json").symlink_to("/dev/zero")
    assert "not a regular file" in _refusal(tmp_path / "config.json")


def test_a_folder_and_a_missing_file_are_one_line(tmp_path):
    (tmp_path / "cfg.json").mkdir()
    assert "not a regular file" in _refusal(tmp_path / "cfg.json")
    assert "missing" in _refusal(tmp_path / "absent.json")


def test_a_file_over_the_cap_is_refused_unread(tmp_path):
    (tmp_path / "f.json").write_text('{"a": "' + "x" * 100 + '"}')
    assert "too large" in _refusal(tmp_path / "f.json", max_bytes=100)
    assert load_json(tmp_path / "f.json", max_bytes=200) == {"a": "x" * 100}


@pytest.mark.parametrize(
    ("text", "words"),
    [(DEEP, "nested too deeply (over 100 levels)"), ("{nope", "not valid JSON"),
     ('{"a": NaN}', "NaN is not JSON"), ("\udcff", "not UTF-8")],
)  # fmt: skip
def test_bad_contents_are_one_line_naming_the_file(tmp_path, text, words):
    (tmp_path / "f.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert words in _refusal(tmp_path / "f.json")


def test_depth_is_counted_outside_strings_only():
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(at_limit) is not None
    with pytest.raises(JsonDepthError):
        parse_json("[" + at_limit + "]")
    text = json.dumps({"title": "[{" * 100_000, "quote": '\\"[[[' * 1000, "v": [[1], [2]] * 500})
    assert parse_json(text)["title"] == "[{" * 100_000
    assert not nests_deeper(json.dumps([[i] for i in range(10_000)]).encode())
    assert nests_deeper(b'["\\\\"' + b"[" * 200 + b"]" * 200 + b"]")  # the \\ closes the string


def test_nan_is_kept_only_where_asked(tmp_path):
    (tmp_path / "f.json").write_text('{"a": NaN}')
    assert str(load_json(tmp_path / "f.json", allow_nan=True)["a"]) == "nan"


# ----- the places that read untrusted JSON use it -------------------------------------------


@needs_dev_zero
def test_a_model_folder_whose_config_is_dev_zero_is_one_line(tmp_path):
    from thumbview.inference import LoadedPredictor
    from thumbview.inference.kinds import model_format
    from thumbview.predict.model import ArtifactError

    (tmp_path / "config.json").symlink_to("/dev/zero")
    assert _within(10, lambda: model_format(tmp_path)) == ("ok", None)
    for load in (LoadedPredictor.load, LoadedPredictor.check):
        kind, err = _within(10, lambda load=load: load(tmp_path))
        assert kind == "raised" and isinstance(err, ArtifactError), err
        assert "config.json" in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("damage", ["deep", "fifo", "folder"])
def test_an_sae_cfg_that_is_deep_or_not_a_file_is_one_line(tmp_path, damage):
    from thumbview.sae.architectures import build_sae
    from thumbview.sae.arrays import StudyError
    from thumbview.sae.config import sae_config
    from thumbview.sae.folder import SaeFileError, load_sae, read_sae_cfg, save_sae

    save_sae(build_sae(sae_config(d_in=8, expansion_factor=2, k=2)), tmp_path)
    cfg = tmp_path / "cfg.json"
    cfg.unlink()
    if damage == "deep":
        cfg.write_text(DEEP)
    elif damage == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        os.mkfifo(cfg)
    else:
        cfg.mkdir()
    for load, error in ((load_sae, SaeFileError), (read_sae_cfg, StudyError)):
        kind, err = _within(10, lambda load=load: load(tmp_path))
        assert kind == "raised" and isinstance(err, error), err
        assert "cfg.json" in str(err) and "\n" not in str(err)


def test_deep_parquet_column_metadata_is_ignored_not_a_recursion_error(tmp_path):
    import pyarrow as pa

    from thumbview.data.shards import _column_order

    schema = pa.schema([("views", pa.int64())], metadata={"thumbview": DEEP})
    assert _column_order(schema) is None
    good = pa.schema([("views", pa.int64())], metadata={"thumbview": '{"columns": ["views"]}'})
    assert _column_order(good) == ["views"]
