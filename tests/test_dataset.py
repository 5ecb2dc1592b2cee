"""`load_dataset` / `write_metadata`: bad rows are skipped with the promised reason, text survives exactly."""

from __future__ import annotations

import csv
import json
import logging
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import thumbview.data.dataset as dataset_module
import thumbview.data.table as table_module
from thumbview.data.dataset import (
    DatasetError,
    ThumbnailDataset,
    load_dataset,
    parse_count,
    verify_cache_path,
    write_metadata,
)

HEADER = ["file_name", "views", "title", "video_id"]


def put_image(root: Path, name: str, size=(8, 6), color=(200, 30, 30)) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")


def put_csv(root: Path, rows: list[list[str]], header=HEADER) -> None:
    """Write metadata.csv with the csv module, so every cell is exactly the text given."""
    with (root / "metadata.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def folder(tmp_path: Path, bad_rows: list[list[str]], n_good: int = 2) -> Path:
    """A dataset folder with `n_good` valid rows first, then `bad_rows` (images not created)."""
    root = tmp_path / "ds"
    good = [[f"images/g{i}.jpg", str(100 * (i + 1)), f"good {i}", f"g{i}"] for i in range(n_good)]
    for row in good:
        put_image(root, row[0])
    put_csv(root, good + bad_rows)
    return root


def assert_one_skip(ds: ThumbnailDataset, reason: str, n_good: int = 2) -> None:
    assert ds.report.counts() == {reason: 1}, ds.report.skipped
    assert len(ds) == n_good == ds.report.n_kept
    assert ds.keys == [f"g{i}" for i in range(n_good)]


# --- a clean folder -----------------------------------------------------------------------


def test_clean_folder_gives_aligned_table(tmp_path):
    root = tmp_path / "ds"
    rows = [
        ["images/a.jpg", "10", "first", "A", "ch1"],
        ["nested/deeper/b.jpg", "2000", "second", "B", "ch2"],
        ["c.jpg", "0", "third", "C", "ch1"],
    ]
    for row in rows:
        put_image(root, row[0])
    put_csv(root, rows, header=[*HEADER, "channel_id"])
    ds = load_dataset(root)
    assert len(ds) == 3 and ds.report.skipped == ()
    assert ds.report.summary() == "3 rows, 3 kept, 0 skipped"
    assert isinstance(ds.table.index, pd.RangeIndex)
    assert ds.table["views"].dtype == np.int64
    assert ds.views.dtype == np.float64 and ds.views.tolist() == [10.0, 2000.0, 0.0]
    assert ds.paths == [root.resolve() / r[0] for r in rows]
    assert all(p.is_file() for p in ds.paths)
    assert ds.titles == ["first", "second", "third"] and ds.keys == ["A", "B", "C"]
    assert ds.channels.dtype == object and ds.channels.tolist() == ["ch1", "ch2", "ch1"]


def test_channels_is_none_without_channel_id(tmp_path):
    assert load_dataset(folder(tmp_path, [])).channels is None


# --- one test per skip reason -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "C:\\images\\x.jpg",
        "C:x.jpg",
        "\\\\server\\share\\x.jpg",
        "../outside.jpg",
        "images/../../outside.jpg",
        "..\\outside.jpg",
        "bad\x00name.jpg",
    ],
)
def test_unsafe_file_name(tmp_path, name):
    put_image(tmp_path, "outside.jpg")  # exists, so only the safety check can stop it
    ds = load_dataset(folder(tmp_path, [[name, "5", "evil", "x"]]))
    assert_one_skip(ds, "unsafe file_name")


def test_symlink_escaping_the_folder_is_unsafe(tmp_path):
    put_image(tmp_path, "outside.jpg")
    root = folder(tmp_path, [["images/link.jpg", "5", "", "x"], ["images/ok.jpg", "6", "", "y"]])
    (root / "images" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "images" / "ok.jpg").symlink_to(root / "images" / "g0.jpg")  # stays inside: fine
    ds = load_dataset(root)
    assert ds.report.counts() == {"unsafe file_name": 1}
    assert ds.keys == ["g0", "g1", "y"]


def test_symlinked_folder_escaping_the_dataset_is_unsafe(tmp_path):
    put_image(tmp_path / "elsewhere", "secret.jpg")
    rows = [["images/ext/secret.jpg", "5", "", "x"], ["images/ext/secret.jpg", "6", "", "y"]]
    root = folder(tmp_path, rows)
    (root / "images" / "ext").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    ds = load_dataset(root)
    assert ds.report.counts() == {"unsafe file_name": 2}  # the folder verdict is cached
    assert ds.keys == ["g0", "g1"]


def test_dot_dot_that_stays_inside_is_allowed(tmp_path):
    root = folder(tmp_path, [["images/../images/g0.jpg", "5", "", "again"]])
    assert load_dataset(root).keys == ["g0", "g1", "again"]


@pytest.mark.parametrize("name", ["images/nope.jpg", "", "   "])
def test_missing_image(tmp_path, name):
    assert_one_skip(load_dataset(folder(tmp_path, [[name, "5", "", "x"]])), "missing image")


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_named_as_an_image_is_not_a_regular_file(tmp_path, kind):
    """Issue 30: these read as "missing image"; a FIFO opened for decoding would block."""
    root = folder(tmp_path, [["images/odd.jpg", "5", "", "x"]])
    if kind == "folder":
        (root / "images" / "odd.jpg").mkdir()
    elif hasattr(os, "mkfifo"):
        os.mkfifo(root / "images" / "odd.jpg")
    else:
        pytest.skip("no FIFOs here")
    ds = load_dataset(root)
    assert_one_skip(ds, "unreadable image")
    assert (
        ds.report.skipped[0].detail
        == "images/odd.jpg is not a regular file (a folder, FIFO or device)"
    )


@pytest.mark.parametrize("content", ["truncated", "random", "text", "big"])
def test_unreadable_image(tmp_path, content):
    root = folder(tmp_path, [["images/bad.jpg", "5", "", "x"]])
    bad = root / "images" / "bad.jpg"
    if content == "truncated":
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(bad, "JPEG", quality=95)
        bad.write_bytes(bad.read_bytes()[:1500])
    elif content == "random":
        bad.write_bytes(np.random.default_rng(1).bytes(3000))
    elif content == "text":
        bad.write_text("<html>404 not found</html>")
    else:
        put_image(root, "images/bad.jpg", size=(100, 100))
    ds = load_dataset(root, max_pixels=1000, workers=2)  # good images are 8x6 = 48 pixels
    assert_one_skip(ds, "unreadable image")
    assert "bad.jpg" in ds.report.skipped[0].detail


@pytest.mark.parametrize(
    "views", ["abc", "-5", "", "  ", "nan", "NaN", "inf", "-inf", "1.5", "1,2,3", "12,34", "1e30"]
)
def test_invalid_views(tmp_path, views):
    root = folder(tmp_path, [["images/g0.jpg", views, "", "x"]])
    assert_one_skip(load_dataset(root), "invalid views")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1234", 1234), ("1234.0", 1234), (" 1,234 ", 1234), ("1,234,567", 1234567),
     ("0", 0), ("1e3", 1000), ("+7", 7)],
)  # fmt: skip
def test_parse_count_accepts_common_spellings(text, value):
    assert parse_count(text) == value


def test_valid_view_spellings_reach_the_table(tmp_path):
    root = folder(
        tmp_path, [["images/g0.jpg", " 1,234 ", "", "x"], ["images/g1.jpg", "7.0", "", "y"]]
    )
    ds = load_dataset(root)
    assert ds.table["views"].tolist() == [100, 200, 1234, 7]


def test_duplicate_video_id_keeps_the_first(tmp_path):
    root = folder(tmp_path, [["images/g1.jpg", "999", "copy", "g0"]])
    ds = load_dataset(root)
    assert_one_skip(ds, "duplicate video_id")
    assert ds.table["views"].tolist() == [100, 200]
    assert "row 0" in ds.report.skipped[0].detail


def test_duplicate_of_a_skipped_row_is_kept(tmp_path):
    """The first *usable* occurrence wins: a broken first copy does not shadow a good second."""
    root = folder(tmp_path, [["images/missing.jpg", "1", "", "v"], ["images/g0.jpg", "2", "", "v"]])
    ds = load_dataset(root)
    assert ds.report.counts() == {"missing image": 1}
    assert ds.keys == ["g0", "g1", "v"]


def test_every_reason_at_once(tmp_path, caplog):
    root = folder(
        tmp_path,
        [
            ["../x.jpg", "1", "", "u"],
            ["images/none.jpg", "1", "", "m"],
            ["images/bad.jpg", "1", "", "r"],
            ["images/g0.jpg", "-1", "", "v"],
            ["images/g1.jpg", "", "", "v2"],
            ["images/g1.jpg", "3", "", "g0"],
        ],
        n_good=3,
    )
    (root / "images" / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with caplog.at_level(logging.DEBUG, logger="thumbview.data.table"):
        ds = load_dataset(root)
    report = ds.report
    assert report.counts() == {
        "unsafe file_name": 1,
        "missing image": 1,
        "unreadable image": 1,
        "invalid views": 2,
        "duplicate video_id": 1,
    }
    assert (report.n_rows, report.n_kept, len(ds)) == (9, 3, 3)
    assert [s.row for s in report.skipped] == [3, 4, 5, 6, 7, 8]
    assert report.skipped[0].file_name == "../x.jpg"
    assert report.summary().startswith("9 rows, 3 kept, 6 skipped (")
    assert "invalid views: 2" in report.summary()
    assert isinstance(ds.table.index, pd.RangeIndex)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(report.summary() in m for m in info)
    assert sum("skipped row" in m for m in debug) == 6


# --- the folder as a whole ----------------------------------------------------------------


def test_folder_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "file.txt")
    with pytest.raises(DatasetError, match="no metadata file"):
        load_dataset(tmp_path)
    put_csv(tmp_path, [])
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="several metadata files"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("header", "missing", "found"),
    [
        (["file_name", "title"], "views", "file_name, title"),
        (["path", "views"], "file_name", "path, views"),
    ],
)
def test_missing_required_column_names_it(tmp_path, header, missing, found):
    put_csv(tmp_path, [["a.jpg", "x"]], header=header)
    message = f"metadata.csv has no '{missing}' column; columns found: {found}"
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("metadata.csv", b"", "cannot read metadata.csv"),
        ("metadata.csv", b"file_name,vi\xffews\na.jpg,1\n", "header is not valid UTF-8"),
        ("metadata.csv", b'file_name,views\n"a.jpg,1\n', "cannot read metadata.csv"),
        (
            "metadata.jsonl",
            b'{"file_name": "a.jpg", "views": 1}\n{oops\n',
            "line 2 is not valid JSON",
        ),
        ("metadata.jsonl", b"[1, 2]\n", "line 1 is not a JSON object"),
        ("metadata.parquet", b"PAR1 garbage", "cannot read metadata.parquet"),
    ],
)
def test_unparseable_metadata(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path)


def test_extra_trailing_fields_do_not_shift_columns(tmp_path):
    """Empty trailing fields ("a.jpg,5,") are common and harmless: kept, nothing shifts."""
    put_image(tmp_path, "a.jpg")
    (tmp_path / "metadata.csv").write_text("file_name,views\na.jpg,5,\n")
    ds = load_dataset(tmp_path)
    assert ds.table["file_name"].tolist() == ["a.jpg"] and ds.table["views"].tolist() == [5]
    assert ds.report.skipped == ()


# --- the loader matrix: hostile cells and rows are skipped one by one, never the dataset ------

HUGE = [
    "9223372036854775807",  # int64 max: rounds up to 2**63 as a float
    "9223372036854775808",
    "99999999999999999999999999",
    "9.22e18",
    "1e19",
    "1000000000001",  # just above MAX_COUNT
    "1e999999999",
]
NOT_PLAIN = [
    "1_000",
    "\u0663\u0664",
    "\uff11\uff12",
    "1\u00a0000",
    "0x10",
    "1e3.5",
    "--1",
    "\u00a012",
    "12\u3000",
]  # only ASCII spaces are trimmed (issue 24)


@pytest.mark.parametrize("views", HUGE + NOT_PLAIN)
def test_views_out_of_range_or_not_plain_ascii_are_invalid(tmp_path, views):
    root = folder(tmp_path, [["images/g0.jpg", views, "", "x"]])
    ds = load_dataset(root)
    assert_one_skip(ds, "invalid views")
    assert ds.table["views"].dtype == np.int64
    with pytest.raises(ValueError):
        parse_count(views)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(12, 12), (0, 0), (10**12, 10**12), (7.0, 7), (10**12 + 1, None), (-1, None), (10**40, None),
     (10**5000, None), (float("nan"), None), (float("inf"), None), (1.5, None), (True, None),
     (None, None), ([1], None)],
    ids=lambda v: "huge" if isinstance(v, int) and v.bit_length() > 200 else None,
)  # fmt: skip
def test_parse_count_takes_what_collect_sources_send(value, expected):
    """Issue 24: collect parses the Data API's strings and yt-dlp's numbers with this rule too."""
    if expected is None:
        with pytest.raises(ValueError):
            parse_count(value)
    else:
        assert parse_count(value) == expected


def test_largest_count_is_kept_exactly(tmp_path):
    root = folder(
        tmp_path, [["images/g0.jpg", "1000000000000", "", "x"], ["images/g1.jpg", "1e12", "", "y"]]
    )
    assert load_dataset(root).table["views"].tolist() == [100, 200, 10**12, 10**12]


CSV_HEAD = b"file_name,views,title,video_id\n"
GOOD = b"images/g0.jpg,100,good 0,g0\nimages/g1.jpg,200,good 1,g1\n"
LAST = b"images/g2.jpg,300,good 2,g2\n"


@pytest.mark.parametrize(
    ("middle", "detail"),
    [
        (b"images/g0.jpg,5,t,x,EXTRA\n", "5 fields, the header 4"),
        (b'images/g0.jpg,5,"a, b",x,"y"\n', "5 fields, the header 4"),
        (b"images/g\xff0.jpg,5,t,x\n", "not UTF-8"),
        (b"images/g0.jpg,5,caf\xe9,x\n", "not UTF-8"),  # Latin-1 in a UTF-8 file
        (b"images/g0.jpg,5,\xc3,x\n", "not UTF-8"),  # a cut multi-byte character
    ],
)
def test_malformed_middle_row_is_skipped_and_reported(tmp_path, middle, detail):
    root = tmp_path / "ds"
    for i in range(3):
        put_image(root, f"images/g{i}.jpg")
    (root / "metadata.csv").write_bytes(CSV_HEAD + GOOD + middle + LAST)
    ds = load_dataset(root)
    assert ds.keys == ["g0", "g1", "g2"] and ds.table["views"].tolist() == [100, 200, 300]
    assert ds.report.counts() == {"malformed row": 1}
    skipped = ds.report.skipped[0]
    assert skipped.row == 2 and detail in skipped.detail and "line 4" in skipped.detail
    assert ds.titles == ["good 0", "good 1", "good 2"]


def test_row_reader_agrees_with_the_fast_reader(tmp_path):
    """The careful reader (taken when one row is bad) reads good rows exactly like pandas."""
    root = tmp_path / "ds"
    rows = [["a.jpg", "1", 'quote " and, comma', "A"], ["b.jpg", "2", "multi\nline 🔥", "B"],
            ["c.jpg", "3", "", ""], ["d.jpg", "4", "NA", "0007"]]  # fmt: skip
    for r in rows:
        put_image(root, r[0])
    put_csv(root, rows)
    fast = load_dataset(root)
    with (root / "metadata.csv").open("ab") as f:
        f.write(b"e.jpg,5,x,E,extra\n")
    careful = load_dataset(root)
    pd.testing.assert_frame_equal(careful.table, fast.table)
    assert careful.report.counts() == {"malformed row": 1}


def _peak_bytes(fn) -> tuple[object, int]:
    """(fn(), peak bytes Python and numpy allocated while it ran)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("where", ["first", "middle"])
def test_a_row_of_many_trailing_commas_is_malformed_and_costs_no_memory(tmp_path, where):
    """Issue 30: one row of 10^5 trailing commas took `info` to 3.2 GB (pandas made a column
    per field); now it is a malformed row, read in about the memory of the clean file."""
    root = tmp_path / "ds"
    for i in range(3):
        put_image(root, f"images/g{i}.jpg")
    wide = b"images/g1.jpg,200,good 1,g1" + b"," * 200_000 + b"\n"
    lines = [b"images/g0.jpg,100,good 0,g0\n", wide, LAST] if where == "middle" else [wide, LAST]
    (root / "metadata.csv").write_bytes(CSV_HEAD + b"".join(lines))
    ds, peak = _peak_bytes(lambda: load_dataset(root, workers=1))
    assert ds.report.counts() == {"malformed row": 1}
    assert "200,004 fields (at most 1024)" in ds.report.skipped[0].detail
    assert "g2" in ds.keys and "g1" not in ds.keys
    (root / "metadata.csv").write_bytes(CSV_HEAD + b"".join(lines).replace(b"," * 200_000, b""))
    clean, clean_peak = _peak_bytes(lambda: load_dataset(root, workers=1))
    assert "g1" in clean.keys and clean.report.skipped == ()
    assert peak < clean_peak + 8e6, (peak, clean_peak)


def test_a_few_trailing_empty_fields_are_still_tolerated(tmp_path):
    """Spreadsheets pad rows to their widest column: up to MAX_FIELDS fields a row is fine."""
    put_image(tmp_path, "a.jpg")
    put_image(tmp_path, "b.jpg")
    (tmp_path / "metadata.csv").write_text("file_name,views\na.jpg,5" + "," * 1000 + "\nb.jpg,6\n")
    ds = load_dataset(tmp_path)
    assert ds.keys == ["a", "b"] and ds.report.skipped == ()


def test_a_header_wider_than_the_field_cap_is_one_line(tmp_path):
    put_image(tmp_path, "a.jpg")
    (tmp_path / "metadata.csv").write_text("file_name,views" + "," * 100_000 + "\na.jpg,5\n")
    with pytest.raises(
        DatasetError, match=r"^cannot read metadata\.csv: its header has 100,002 fields"
    ):
        load_dataset(tmp_path)


def test_a_deeply_nested_jsonl_title_skips_only_that_row(tmp_path):
    """Issue 30: a title of 10^5 nested brackets raised RecursionError; now that row is
    malformed. Brackets inside a string are text, and kept."""
    for name in ("a", "b", "c", "d"):
        put_image(tmp_path, f"{name}.jpg")
    deep = '{"file_name": "b.jpg", "views": 2, "title": ' + "[" * 100_000 + "]" * 100_000 + "}"
    wide = json.dumps({"file_name": "d.jpg", "views": 4, **{f"k{i}": i for i in range(2000)}})
    lines = [
        json.dumps({"file_name": "a.jpg", "views": 1, "title": "[" * 100_000}),
        deep,
        json.dumps({"file_name": "c.jpg", "views": 3}),
        wide,
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = load_dataset(tmp_path)
    assert ds.keys == ["a", "c"] and ds.titles[0] == "[" * 100_000
    assert [s.reason for s in ds.report.skipped] == ["malformed row"] * 2
    details = [s.detail for s in ds.report.skipped]
    assert "line 2 is nested too deeply (over 100 levels)" in details[0]
    assert "line 4 has 2,002 fields (at most 1024)" in details[1]


def test_header_only_metadata_gives_an_empty_dataset(tmp_path):
    put_csv(tmp_path, [])
    ds = load_dataset(tmp_path)
    assert (
        len(ds) == 0
        and ds.views.shape == (0,)
        and ds.report.summary() == "0 rows, 0 kept, 0 skipped"
    )


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        load_dataset(folder(tmp_path, []), workers=0)


# --- text fidelity, defaults, other formats -----------------------------------------------

TITLES = ["😀🔥 مرحبا بالعالم 你好世界 ", "NA", "", "null", 'a, "quoted"\nnew line', "  spaces  "]


def test_titles_and_ids_round_trip_exactly(tmp_path):
    root = tmp_path / "ds"
    ids = ["000123", "NA", "nan", "-1cOhrVx0oQ", "1e5", "x"]
    names = [f"images/{i}.jpg" for i in range(len(TITLES))]
    for name in names:
        put_image(root, name)
    extra = ["0042", "", "None", "#N/A", "1.0", "ünï"]
    table = pd.DataFrame(
        {"file_name": names, "views": range(6), "title": TITLES, "video_id": ids, "note": extra}
    )
    write_metadata(root, table)
    ds = load_dataset(root)
    assert ds.titles == TITLES and ds.keys == ids
    assert ds.table["note"].tolist() == extra
    assert list(ds.table.columns) == ["file_name", "views", "title", "video_id", "note"]


def test_defaults_for_absent_title_and_video_id(tmp_path):
    for name in ["images/abc.jpg", "images/def.jpg"]:
        put_image(tmp_path, name)
    put_csv(
        tmp_path, [["images/abc.jpg", "1"], ["images/def.jpg", "2"]], header=["file_name", "views"]
    )
    ds = load_dataset(tmp_path)
    assert ds.keys == ["abc", "def"] and ds.titles == ["", ""]
    put_csv(tmp_path, [["images/abc.jpg", "1", "t", ""], ["images/def.jpg", "2", "u", "ID"]])
    assert load_dataset(tmp_path).keys == ["abc", "ID"]


def test_optional_counts_become_nullable_numbers(tmp_path):
    header = [*HEADER, "subscribers", "likes", "comments", "published_at"]
    rows = [
        ["images/g0.jpg", "1", "", "a", "1,000", "12", "", "2024-01-02T03:04:05Z"],
        ["images/g1.jpg", "2", "", "b", "hidden", "", "-3", "2023-12-31T00:00:00.000Z"],
    ]
    put_image(tmp_path, "images/g0.jpg")
    put_image(tmp_path, "images/g1.jpg")
    put_csv(tmp_path, rows, header=header)
    table = load_dataset(tmp_path).table
    assert len(table) == 2
    for column in ["subscribers", "likes", "comments"]:
        assert table[column].dtype == "Int64"
    assert table["subscribers"].tolist()[0] == 1000 and table["subscribers"].isna().tolist() == [
        False,
        True,
    ]
    assert table["likes"].tolist()[0] == 12 and table["likes"].isna().tolist() == [False, True]
    assert table["comments"].isna().all()
    assert table["published_at"].tolist() == [rows[0][-1], rows[1][-1]]  # kept verbatim


def test_jsonl_metadata(tmp_path):
    put_image(tmp_path, "images/a.jpg")
    put_image(tmp_path, "images/b.jpg")
    lines = [
        {
            "file_name": "images/a.jpg",
            "views": 1234,
            "title": TITLES[0],
            "published_at": "2024-01-02T00:00:00Z",
        },
        {"file_name": "images/b.jpg", "views": "1,000", "video_id": "007", "likes": 5},
    ]
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n"
    (tmp_path / "metadata.jsonl").write_text(text, encoding="utf-8")
    ds = load_dataset(tmp_path)
    assert ds.table["views"].tolist() == [1234, 1000]
    assert ds.titles == [TITLES[0], ""] and ds.keys == ["a", "007"]
    assert ds.table["published_at"].tolist() == ["2024-01-02T00:00:00Z", ""]
    assert ds.table["likes"].isna().tolist() == [True, False]


def test_parquet_metadata(tmp_path):
    put_image(tmp_path, "images/a.jpg")
    put_image(tmp_path, "images/b.jpg")
    df = pd.DataFrame(
        {
            "file_name": ["images/a.jpg", "images/b.jpg"],
            "views": [5.0, np.nan],
            "title": [TITLES[0], None],
        }
    )
    df.to_parquet(tmp_path / "metadata.parquet")
    ds = load_dataset(tmp_path)
    assert ds.report.counts() == {"invalid views": 1}
    assert ds.titles == [TITLES[0]] and ds.table["views"].tolist() == [5]


def test_verify_images_false_skips_decoding(tmp_path):
    root = folder(tmp_path, [["images/bad.jpg", "1", "", "x"], ["images/none.jpg", "1", "", "y"]])
    (root / "images" / "bad.jpg").write_bytes(b"not an image")
    ds = load_dataset(root, verify_images=False)
    assert ds.report.counts() == {"missing image": 1}  # existence is still checked
    assert ds.keys == ["g0", "g1", "x"]


def test_progress_counts_every_decoded_image(tmp_path):
    from thumbview.progress import Fractions

    seen: list[tuple[float, str]] = []
    progress = Fractions(lambda f, stage: seen.append((f, stage)))
    assert len(load_dataset(folder(tmp_path, []), progress=progress, verify_cache=False)) == 2
    assert [f for f, _ in seen] == [0.0, 0.5, 1.0, 1.0]  # opened, two images, closed
    assert {stage for _, stage in seen} == {"checking images"}


def test_subset_keeps_report_and_realigns(tmp_path):
    root = folder(tmp_path, [["images/none.jpg", "1", "", "y"]], n_good=4)
    ds = load_dataset(root)
    sub = ds.subset([3, 1])
    assert sub.keys == ["g3", "g1"] and sub.views.tolist() == [400.0, 200.0]
    assert sub.paths == [ds.paths[3], ds.paths[1]]
    assert isinstance(sub.table.index, pd.RangeIndex)
    assert sub.report is ds.report and sub.root == ds.root
    assert ds.subset(np.array([True, False, False, True])).keys == ["g0", "g3"]


# --- writing ------------------------------------------------------------------------------


def test_write_metadata_is_atomic_and_overwrites(tmp_path, monkeypatch):
    root = tmp_path / "new" / "ds"
    first = pd.DataFrame({"file_name": ["a.jpg"], "views": [1]})
    path = write_metadata(root, first)
    assert path == root / "metadata.csv" and path.read_text() == "file_name,views\na.jpg,1\n"
    write_metadata(root, first.assign(views=[2]))
    assert path.read_text() == "file_name,views\na.jpg,2\n"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError, match="disk full"):
        write_metadata(root, first)
    assert path.read_text() == "file_name,views\na.jpg,2\n"  # old file intact
    assert sorted(os.listdir(root)) == ["metadata.csv"]  # temp file cleaned up


def test_write_metadata_refuses_bad_input(tmp_path):
    with pytest.raises(DatasetError, match="views"):
        write_metadata(tmp_path, pd.DataFrame({"file_name": ["a.jpg"]}))
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="metadata.jsonl"):
        write_metadata(tmp_path, pd.DataFrame({"file_name": ["a.jpg"], "views": [1]}))


def test_hugging_face_imagefolder_reads_what_we_write(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = tmp_path / "ds"
    titles = [TITLES[0], 'a, "quoted"\nnew line', "plain"]
    names = [f"images/v{i}.jpg" for i in range(3)]
    for name in names:
        put_image(root, name)
    write_metadata(root, pd.DataFrame({"file_name": names, "views": [1, 2, 3], "title": titles}))
    hf = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "hf"))
    train = hf["train"]
    assert train.num_rows == len(load_dataset(root)) == 3
    by_views = dict(zip(train["views"], train["title"], strict=True))
    assert [by_views[v] for v in (1, 2, 3)] == titles
    assert train[0]["image"].size == (8, 6)


# --- the real dataset ---------------------------------------------------------------------


def test_real_dataset_loads(shared_data):
    ds = load_dataset(shared_data)
    assert len(ds) > 4800
    assert ds.report.summary().startswith(f"{ds.report.n_rows} rows, {len(ds)} kept")
    assert ds.channels is not None and len(set(ds.keys)) == len(ds)
    assert np.all(ds.views >= 0) and ds.table["likes"].dtype == "Int64"


# --- the verification cache ---------------------------------------------------------------


@pytest.fixture
def decoded(monkeypatch, tmp_path) -> list[str]:
    """Names of the files `load_dataset` fully decodes, with caches in a fresh folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("THUMBVIEW_CACHE_DIR", raising=False)
    calls: list[str] = []
    real = table_module.load_image

    def counting(path, **kwargs):
        calls.append(Path(path).name)  # list.append is thread-safe
        return real(path, **kwargs)

    monkeypatch.setattr(table_module, "load_image", counting)
    return calls


def messy(tmp_path: Path) -> Path:
    """Three good images, one undecodable, one missing: both verdicts are cached."""
    root = folder(
        tmp_path, [["images/bad.jpg", "1", "", "x"], ["images/none.jpg", "1", "", "y"]], n_good=3
    )
    (root / "images" / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def touch_later(path: Path) -> None:
    """Move the mtime on by a second, as a rewrite some time later would."""
    mtime = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(mtime, mtime))


def assert_same(a: ThumbnailDataset, b: ThumbnailDataset) -> None:
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.report == b.report


def test_second_load_decodes_nothing_and_agrees(tmp_path, decoded):
    root = messy(tmp_path)
    first = load_dataset(root, workers=2)
    assert sorted(decoded) == ["bad.jpg", "g0.jpg", "g1.jpg", "g2.jpg"]
    assert verify_cache_path(root).is_file()
    decoded.clear()
    second = load_dataset(root, workers=2)
    assert decoded == []
    assert_same(first, second)
    assert second.report.counts() == {"unreadable image": 1, "missing image": 1}
    uncached = load_dataset(root, verify_cache=False)
    assert len(decoded) == 4  # the switch turns the cache off
    assert_same(first, uncached)


def test_changed_files_are_decoded_again(tmp_path, decoded):
    root = messy(tmp_path)
    load_dataset(root)
    put_image(root, "images/g0.jpg", color=(0, 0, 255))  # new bytes, same size possibly
    touch_later(root / "images" / "g0.jpg")
    good = root / "images" / "g1.jpg"
    good.write_bytes(good.read_bytes()[:40])  # corrupted after the first load
    touch_later(good)
    decoded.clear()
    ds = load_dataset(root)
    assert sorted(decoded) == ["g0.jpg", "g1.jpg"]
    assert ds.report.counts() == {"unreadable image": 2, "missing image": 1}
    assert [s.file_name for s in ds.report.skipped if s.reason == "unreadable image"] == [
        "images/g1.jpg",
        "images/bad.jpg",
    ]
    decoded.clear()
    put_image(root, "images/bad.jpg")  # fixed: a cached failure is not sticky either
    ds = load_dataset(root)
    assert decoded == ["bad.jpg"] and ds.keys == ["g0", "g2", "x"]


def test_same_size_rewrite_is_caught_by_mtime(tmp_path, decoded):
    root = folder(tmp_path, [])
    load_dataset(root)
    path = root / "images" / "g0.jpg"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\x00" * (len(data) - len(data) // 2)  # same length, broken
    path.write_bytes(bytes(data))
    touch_later(path)
    decoded.clear()
    ds = load_dataset(root)
    assert decoded == ["g0.jpg"] and ds.keys == ["g1"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong arrays"])
def test_corrupt_cache_is_ignored(tmp_path, decoded, damage, caplog):
    root = messy(tmp_path)
    first = load_dataset(root)
    cache = verify_cache_path(root)
    if damage == "garbage":
        cache.write_bytes(np.random.default_rng(0).bytes(500))
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:-20])
    elif damage == "empty":
        cache.write_bytes(b"")
    else:  # a well-formed file whose content does not fit: never half-trusted
        from safetensors.numpy import load_file, save_file

        arrays = load_file(cache)
        arrays["sizes"] = arrays["sizes"][:2]
        setting = table_module._verify_setting(
            root.resolve(), 2**26, table_module.DEFAULT_MAX_BYTES
        )
        save_file(arrays, cache, metadata=setting)
    decoded.clear()
    with caplog.at_level(logging.WARNING, logger="thumbview.data.table"):
        second = load_dataset(root, max_pixels=2**26)
    assert len(decoded) == 4
    assert_same(first, second)
    assert any("ignoring unreadable verification cache" in r.getMessage() for r in caplog.records)
    decoded.clear()
    load_dataset(root, max_pixels=2**26)
    assert decoded == []  # rewritten, valid again


def test_changing_max_pixels_verifies_again(tmp_path, decoded):
    root = folder(tmp_path, [["images/big.jpg", "5", "", "x"]])
    put_image(root, "images/big.jpg", size=(100, 100))
    assert len(load_dataset(root)) == 3
    decoded.clear()
    ds = load_dataset(root, max_pixels=1000)  # good images are 8x6 = 48 pixels
    assert len(decoded) == 3
    assert ds.report.counts() == {"unreadable image": 1} and ds.keys == ["g0", "g1"]
    decoded.clear()
    assert len(load_dataset(root)) == 3 and len(decoded) == 3  # one setting is remembered


def test_cache_lives_outside_the_dataset(tmp_path, decoded, monkeypatch):
    root = messy(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    load_dataset(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    cache = verify_cache_path(root)
    assert cache.is_file() and cache.is_relative_to(tmp_path / "xdg" / "thumbview" / "verified")
    assert verify_cache_path(tmp_path / "other" / "ds") != cache  # one file per dataset
    monkeypatch.setenv("THUMBVIEW_CACHE_DIR", str(tmp_path / "mine"))
    assert verify_cache_path(root).parent == tmp_path / "mine" / "verified"


def test_read_only_dataset_folder(tmp_path, decoded):
    root = messy(tmp_path)
    dirs = [root, root / "images"]
    for d in dirs:
        d.chmod(0o555)
    try:
        first = load_dataset(root)
        decoded.clear()
        assert_same(first, load_dataset(root))
        assert decoded == []
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_unwritable_cache_only_warns(tmp_path, decoded, monkeypatch, caplog):
    root = messy(tmp_path)
    (tmp_path / "blocker").write_text("a file where the cache folder should go")
    monkeypatch.setenv("THUMBVIEW_CACHE_DIR", str(tmp_path / "blocker"))
    with caplog.at_level(logging.WARNING, logger="thumbview.data.table"):
        ds = load_dataset(root)
    assert ds.report.counts() == {"unreadable image": 1, "missing image": 1}
    assert any("cannot write verification cache" in r.getMessage() for r in caplog.records)


def test_in_place_corruption_keeping_size_and_mtime_is_caught(tmp_path, decoded):
    """`touch -r`-style damage: same size, same mtime, new bytes. ctime (and, for a replaced
    file, the inode) still change, so the file is decoded again and reported."""
    root = folder(tmp_path, [])
    load_dataset(root)
    path = root / "images" / "g0.jpg"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\x00" * (len(data) - len(data) // 2)  # same length, broken
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    decoded.clear()
    ds = load_dataset(root)
    assert decoded == ["g0.jpg"]
    assert_one_skip_named(ds, "images/g0.jpg")


def test_replaced_file_with_same_stamps_is_caught_by_inode(tmp_path, decoded, monkeypatch):
    """A file swapped in by rename (new inode) is decoded again even if ctime were equal."""
    root = folder(tmp_path, [])
    load_dataset(root)
    path = root / "images" / "g0.jpg"
    st = path.stat()
    other = path.with_name("new.tmp")
    other.write_bytes(b"\xff\xd8" + b"\x00" * (st.st_size - 2))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    real_stat = os.stat
    fake_ctime = st.st_ctime_ns

    class Same:  # the original ctime, only the inode tells the two apart
        def __init__(self, s):
            self.s = s

        def __getattr__(self, name):
            return fake_ctime if name == "st_ctime_ns" else getattr(self.s, name)

    def stat(p, *args, **kwargs):
        st = real_stat(p, *args, **kwargs)
        return Same(st) if str(p).endswith("g0.jpg") else st

    monkeypatch.setattr(dataset_module.os, "stat", stat)
    decoded.clear()
    ds = load_dataset(root)
    assert decoded == ["g0.jpg"]
    assert_one_skip_named(ds, "images/g0.jpg")


def assert_one_skip_named(ds: ThumbnailDataset, name: str) -> None:
    assert ds.report.counts() == {"unreadable image": 1}
    assert ds.report.skipped[0].file_name == name


def test_lookup_matches_a_plain_dict(tmp_path):
    """The vectorised join against the obvious per-file dictionary lookup."""
    rng = np.random.default_rng(0)
    m, n = 500, 800
    keys = rng.integers(0, 2**63, m, dtype=np.uint64)
    stats = [rng.integers(0, 3, m).astype(np.int64) for _ in range(4)]  # size, mtime, ctime, ino
    cached = table_module._Verdicts(keys, *stats, [None] * m)
    pick = rng.integers(0, m, n)
    cur_keys = np.where(rng.random(n) < 0.2, rng.integers(0, 2**63, n, dtype=np.uint64), keys[pick])
    cur = [s[pick] + (rng.random(n) < 0.1) for s in stats]
    cur[0] = np.where(rng.random(n) < 0.2, -1, cur[0])
    current = table_module._Verdicts(cur_keys, *cur, [None] * n)
    table = {(k, *s): i for i, (k, *s) in enumerate(zip(keys, *stats, strict=True))}
    expected = [
        table.get((k, *s), -1) if s[0] >= 0 else -1 for k, *s in zip(cur_keys, *cur, strict=True)
    ]
    assert table_module._lookup(cached, current).tolist() == expected
    assert table_module._lookup(None, current).tolist() == [-1] * n
