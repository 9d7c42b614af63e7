"""`capi-sync backfill`: daily chunks of a date range, resumable, refused past Meta's limit, and
never moving the incremental cursor."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, write_pipelines
from tests.fake_graph import FakeGraph, error_reply

ROWS_PER_DAY = 1200


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Orders on each of the last five days (UTC), created_at spread over the day."""
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("""
            create table orders as
            select d * 10000 + i as order_id, 'u' || i || '@example.com' as email, null as phone,
                   'US' as country, '203.0.113.7' as ip, 'UA' as user_agent,
                   'https://shop.example.com/o/' || (d * 10000 + i) as page_url,
                   9.99::decimal(10, 2) as amount, 'usd' as currency, 'gold' as tier,
                   ($today::date - d::int)::timestamp + to_seconds(i * 60) as created_at,
                   ($today::date - d::int)::timestamp + to_seconds(i * 60 + 30) as updated_at
            from range(1, 6) as days(d), range(0, $per_day) as r(i)
        """, {"today": today(), "per_day": ROWS_PER_DAY})  # fmt: skip
    path = write_pipelines(tmp_path, graph.url)
    settings = "settings: {action_source: website, default_phone_region: US"
    path.write_text(path.read_text().replace(settings, settings + ", max_in_flight: 1"))
    return path


def sent_ids(graph: FakeGraph) -> Counter[int]:
    return Counter(int(e["event_source_url"].rsplit("/", 1)[1]) for e in graph.accepted_events)


def ids_of_days(*days_ago: int) -> set[int]:
    return {d * 10000 + i for d in days_ago for i in range(ROWS_PER_DAY)}


def state(project: Path) -> StateStore:
    return StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}")


def test_interrupted_backfill_resumes_and_sends_each_row_once(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("state", "set", "purchases", "2026-01-01T00:00") == 0
    start, end = today() - dt.timedelta(days=4), today() - dt.timedelta(days=1)  # days 4, 3 and 2 ago

    def expire_token_on_the_fourth_request(number: int, _body: dict) -> object:
        return error_reply(400, 190, "Error validating access token") if number == 4 else None

    graph.script = expire_token_on_the_fourth_request
    assert cli("backfill", "purchases", "--start", str(start), "--end", str(end)) == 1
    first_pass = sent_ids(graph)
    assert 0 < len(first_pass) < len(ids_of_days(4, 3, 2))

    graph.script = None
    capsys.readouterr()
    assert cli("backfill", "purchases", "--start", str(start), "--end", str(end)) == 0
    out = capsys.readouterr().out
    assert "day 3/3" in out
    assert sent_ids(graph) == dict.fromkeys(ids_of_days(4, 3, 2), 1), "every row of the range, once"

    assert cli("backfill", "purchases", "--start", str(start), "--end", str(end)) == 0
    assert sent_ids(graph) == dict.fromkeys(ids_of_days(4, 3, 2), 1), "a finished range sends nothing"
    with state(project) as store:
        assert store.load_cursor("purchases").value == dt.datetime(2026, 1, 1), "incremental cursor untouched"
        kinds = [run.kind for run in store.list_runs("purchases")]
    assert kinds == ["backfill", "backfill", "backfill"]


def test_backfill_and_incremental_share_event_ids(project: Path, graph: FakeGraph) -> None:
    start = today() - dt.timedelta(days=2)
    assert cli("backfill", "purchases", "--start", str(start), "--end", str(today())) == 0
    backfilled = {e["event_source_url"]: e["event_id"] for e in graph.accepted_events}
    graph.requests.clear()
    assert cli("run", "purchases") == 0
    incremental = {e["event_source_url"]: e["event_id"] for e in graph.accepted_events}
    assert backfilled
    assert all(incremental[url] == event_id for url, event_id in backfilled.items())


def test_a_range_past_metas_limit_is_refused_or_clipped(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    start, end = today() - dt.timedelta(days=9), today() - dt.timedelta(days=3)
    assert cli("backfill", "purchases", "--start", str(start), "--end", str(end)) == 2
    message = capsys.readouterr().err
    assert "Meta rejects events older than 7 days" in message
    assert "--clip" in message
    assert graph.requests == []

    assert cli("backfill", "purchases", "--start", str(start), "--end", str(end), "--clip") == 0
    assert "clipped to Meta's 7 days limit" in capsys.readouterr().out
    assert set(sent_ids(graph)) == ids_of_days(5, 4), "days 9-6 ago are empty; 5 and 4 are sent"

    far = today() - dt.timedelta(days=30)
    assert cli("backfill", "purchases", "--start", str(far), "--end", str(far + dt.timedelta(days=3))) == 2
    assert "lies entirely before" in capsys.readouterr().err


def test_dry_run_backfill_saves_no_progress(project: Path, graph: FakeGraph) -> None:
    start = today() - dt.timedelta(days=2)
    assert cli("backfill", "purchases", "--start", str(start), "--end", str(today()), "--dry-run") == 0
    assert graph.requests == []
    with state(project) as store:
        assert store.list_cursors("purchases#") == []
