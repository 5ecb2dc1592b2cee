"""Pure parts of thumbview.collect: filters, ids, shards, quota arithmetic, retries, the store."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path

import httpx
import pytest

from thumbview.collect import CollectError, FilterConfig, QuotaExhausted, QuotaTracker, Store
from thumbview.collect.filters import (
    FILTER_REASONS,
    filter_key,
    parse_iso_duration,
    parse_shard,
    parse_video_id,
    read_id_file,
    rejection_reason,
    shard_ids,
)
from thumbview.collect.http import (  # fmt: skip
    FetchError,
    HttpClient,
    NotFoundError,
    RetryPolicy,
    backoff_delay,
    parse_retry_after,
)
from thumbview.collect.quota import units_for_ids, units_for_search
from thumbview.collect.store import decode_video, encode_video
from thumbview.collect.types import Thumb, VideoInfo


def video(**kw) -> VideoInfo:
    base = {"video_id": "abcdefghijk", "title": "t", "views": 1000, "duration_s": 300.0, "published_at": "2024-03-01T00:00:00Z"}  # fmt: skip
    return VideoInfo(**(base | kw))


def test_filters() -> None:
    cfg = FilterConfig(min_views=500, since=date(2024, 1, 1), until=date(2024, 12, 31), max_duration_s=600)  # fmt: skip
    assert rejection_reason(video(), cfg) is None
    assert rejection_reason(video(views=10), cfg) == "below min views"
    assert rejection_reason(video(duration_s=60.0), cfg) == "short"
    assert rejection_reason(video(short_url=True), cfg) == "short"
    assert rejection_reason(video(duration_s=60.0), FilterConfig(include_shorts=True)) is None
    assert rejection_reason(video(duration_s=601.0), cfg) == "too long"
    assert (
        rejection_reason(video(published_at="2023-12-31T23:00:00Z"), cfg)
        == "published before --since"
    )
    assert rejection_reason(video(published_at="2025-01-01"), cfg) == "published after --until"
    assert rejection_reason(video(live=True), cfg) == "live or upcoming"
    with pytest.raises(CollectError, match="after --until"):
        FilterConfig(since=date(2024, 2, 1), until=date(2024, 1, 1))


def test_filter_reasons_and_key() -> None:
    """Every reason a looser config can lift is tagged; the key ignores nothing that counts."""
    strict = FilterConfig(min_views=500, since=date(2024, 1, 1), until=date(2024, 2, 1), max_duration_s=600)  # fmt: skip
    lifted = [video(views=10), video(duration_s=60.0), video(duration_s=601.0),
              video(published_at=""), video(published_at="2023-01-01"), video(published_at="2025-01-01")]  # fmt: skip
    reasons = {rejection_reason(v, strict) for v in lifted}
    assert reasons == FILTER_REASONS
    assert all(rejection_reason(v, FilterConfig(include_shorts=True)) is None for v in lifted)
    assert rejection_reason(video(live=True), FilterConfig()) not in FILTER_REASONS
    assert rejection_reason(video(views=None), FilterConfig()) not in FILTER_REASONS
    assert filter_key(strict) == filter_key(FilterConfig(**vars(strict)))
    assert json.loads(filter_key(strict))["since"] == "2024-01-01"
    assert len({filter_key(FilterConfig(min_views=n)) for n in (0, 1, 2)}) == 3


def test_video_round_trips_through_json() -> None:
    v = video(title="Café 日本 😀", thumbnails=(Thumb("https://x/a.jpg", 0, 1280, 720), Thumb("https://x/b.jpg", 4)), short_url=True)  # fmt: skip
    assert decode_video(encode_video(v, "2024-05-01T00:00:00Z")) == (v, "2024-05-01T00:00:00Z")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1H2M3S", 3723.0),
        ("PT45S", 45.0),
        ("P1DT1S", 86401.0),
        ("PT0S", 0.0),
        ("", None),
        ("bogus", None),
    ],
)
def test_parse_iso_duration(text: str, seconds: float | None) -> None:
    assert parse_iso_duration(text) == seconds


def test_parse_video_id_and_id_file(tmp_path: Path) -> None:
    for text in ["dQw4w9WgXcQ", "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1", "https://youtu.be/dQw4w9WgXcQ", "https://youtube.com/shorts/dQw4w9WgXcQ"]:  # fmt: skip
        assert parse_video_id(text) == "dQw4w9WgXcQ"
    assert parse_video_id("not an id") is None
    path = tmp_path / "ids.txt"
    path.write_text(
        "\ufeff# header\ndQw4w9WgXcQ\n\nhttps://youtu.be/dQw4w9WgXcQ\nKs-_Mh1QhMc,extra\nbad\n"
    )
    assert read_id_file(path) == (["dQw4w9WgXcQ", "Ks-_Mh1QhMc"], 1)
    with pytest.raises(CollectError, match="cannot read"):
        read_id_file(tmp_path / "missing.txt")


def test_shards_cover_every_id_exactly_once() -> None:
    rng = random.Random(0)
    ids = ["".join(rng.choices("abcdefghijkLMNOP0123456789-_", k=11)) for _ in range(3000)]
    shards = [list(shard_ids(ids, i, 7)) for i in range(7)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert all(300 < len(s) < 560 for s in shards)  # roughly even
    # Independent of order: a shuffled list gives the same split.
    assert set(shard_ids(list(reversed(ids)), 3, 7)) == set(shards[3])
    assert parse_shard("2/7") == (2, 7)
    for bad in ("7/7", "1", "-1/3", "0/0"):
        with pytest.raises(CollectError, match="--shard"):
            parse_shard(bad)


def test_quota_arithmetic_and_tracker() -> None:
    assert units_for_ids(1_000_000) == 40_000  # 20k videos.list + 20k channels.list
    assert units_for_search(1_000) == 2_000 + 40
    tracker = QuotaTracker(limit=150, used=0)
    spent: list[int] = []
    tracker.attach(40, spent.append)
    tracker.charge("search.list")
    with pytest.raises(QuotaExhausted, match="10 of 150"):
        tracker.charge("search.list")
    tracker.charge("videos.list", 10)
    assert (tracker.used, tracker.used_this_run, spent) == (150, 110, [100, 10])


def test_backoff_and_retry_after() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(0)
    delays = [backoff_delay(k, policy, rng) for k in range(10) for _ in range(50)]
    assert 0 <= min(delays) and max(delays) <= 8.0
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_http_client_retries_and_honours_retry_after() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(503), httpx.Response(200, content=b"ok")])  # fmt: skip
    slept: list[float] = []
    client = HttpClient(RetryPolicy(base_delay=0.01), sleep=slept.append, transport=httpx.MockTransport(lambda r: next(answers)))  # fmt: skip
    assert client.get("http://x/a").content == b"ok"
    assert slept[0] == 3.0 and slept[1] <= 0.02 and client.retries == 2
    gone = HttpClient(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    with pytest.raises(NotFoundError):
        gone.get("http://x/b")
    always = HttpClient(RetryPolicy(attempts=3, base_delay=0), transport=httpx.MockTransport(lambda r: httpx.Response(500)))  # fmt: skip
    with pytest.raises(FetchError, match="gave up after 3 attempts"):
        always.get("http://x/c")


def test_store_sweeps_orphans_and_refuses_rows_without_images(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        orphan = tmp_path / "images" / "ab" / "abcdefghijk.jpg"
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"x")
        (orphan.parent / ".x.jpg.1.2.tmp").write_bytes(b"half")
        assert store.sweep() == 2 and not list((tmp_path / "images").rglob("*.*"))
        with pytest.raises(RuntimeError, match="without its image"):
            store.add_video({"file_name": "images/ab/abcdefghijk.jpg", "video_id": "abcdefghijk", "views": 1})  # fmt: skip
        assert store.add_pending([("abcdefghijk", "q", False)] * 2) == 1


def test_cli_flags_are_derived_from_collect_options() -> None:
    """The four commands' shared flags, defaults and help come from CollectOptions alone."""
    import typer.main

    from thumbview.cli.collect import app
    from thumbview.collect.options import FILTERS, CollectOptions, option_fields
    from thumbview.collect.quota import DEFAULT_DAILY_QUOTA

    commands = typer.main.get_command(app).commands
    for name in ("search", "channel", "ids", "refresh"):
        params = {p.name: p for p in commands[name].params}
        groups = frozenset({"source"}) if name == "refresh" else None
        for f in option_fields(groups):
            param = params.pop(f.name)
            assert param.opts == ["--" + f.name.replace("_", "-")]
            assert param.help == f.metadata["help"]
            assert param.default == f.default or str(param.default) == str(f.default)
        leftover = set(params) - {"out", "queries", "per_query", "channel", "limit", "ids_file", "shard", "older_than"}  # fmt: skip
        assert leftover == set(), (name, leftover)
        if name == "refresh":
            assert not any(f.name in params for f in option_fields(frozenset({FILTERS})))
    assert CollectOptions().daily_quota == DEFAULT_DAILY_QUOTA == QuotaTracker().limit
    options = CollectOptions(min_views=5, since=date(2024, 1, 1), thumb_hosts=" a.example, B.example ")  # fmt: skip
    config = options.config()
    assert config.filters.min_views == 5 and config.filters.since == date(2024, 1, 1)
    assert config.thumb_hosts == {"a.example", "b.example"} and config.workers == 4


def test_cli_options_reach_the_run(tmp_path: Path, monkeypatch) -> None:
    """A flag set on the command line arrives in the library call, converted."""
    from typer.testing import CliRunner

    import thumbview.cli.collect as cli

    seen = {}

    def fake_collect_ids(out, ids, *, backend, shard, config, progress):
        seen.update(backend=backend, shard=shard, config=config)
        raise CollectError("stop here")

    monkeypatch.setattr(cli, "collect_ids", fake_collect_ids)
    ids = tmp_path / "ids.txt"
    ids.write_text("abcdefghijk\n", encoding="utf-8")
    args = ["ids", str(tmp_path / "o"), str(ids), "--backend", "api", "--api-key", "k", "--daily-quota", "77", "--since", "2024-02-03", "--include-shorts", "--thumb-max-bytes", "1000", "--shard", "1/3"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["backend"].quota.limit == 77 and seen["shard"] == (1, 3)
    filters = seen["config"].filters
    assert filters.since == date(2024, 2, 3) and filters.include_shorts
    assert seen["config"].thumb_max_bytes == 1000


def test_cli_summary_shows_a_path_with_brackets_verbatim(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from thumbview.cli.collect import app

    ids = tmp_path / "ids.txt"
    ids.write_text("# nothing to fetch\n", encoding="utf-8")
    out = tmp_path / "x[/]y[bold]z"
    result = CliRunner().invoke(app, ["ids", str(out), str(ids)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "x[/]y[bold]z" in result.output
