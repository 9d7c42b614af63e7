"""Rows Meta could not take are kept as pending and retried by key by every run, until delivered
or too old for Meta (then reported lost); `capi-sync retry` re-sends rejected rows on demand."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph, error_reply


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 2500)
    path = write_pipelines(tmp_path, graph.url)
    path.write_text(
        path.read_text().replace(
            "retry_base_seconds: 0.01", "retry_base_seconds: 0.01\n    retry_max_seconds: 0.05"
        )
    )
    return path


def store_of(project: Path) -> StateStore:
    return StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}")


def in_second_batch(event: dict) -> bool:
    return 1001 <= int(event["event_source_url"].rsplit("/", 1)[1]) <= 2000


def unavailable_for_second_batch(_number: int, body: dict) -> object:
    """Meta cannot take rows 1001-2000, however they are batched."""
    if any(in_second_batch(event) for event in body["data"]):
        return error_reply(503, 2, "Service temporarily unavailable", transient=True)
    return None


def second_batch_requests(graph: FakeGraph) -> int:
    """Requests that carried any of rows 1001-2000."""
    return sum(1 for r in graph.requests if any(in_second_batch(e) for e in r.body["data"]))


def test_a_batch_meta_cannot_take_is_kept_and_sent_next_run(project: Path, graph: FakeGraph) -> None:
    graph.script = unavailable_for_second_batch
    assert cli("run", "purchases") == 1
    with store_of(project) as store:
        kept = store.list_rejected("purchases")
        assert store.load_cursor("purchases").value is not None
    assert len(kept) == 1000
    assert {row["transient"] for row in kept} == {True}
    assert {row["reasons"][0]["rule"] for row in kept} == {"meta_unavailable"}
    assert sorted(int(row["row_key"]) for row in kept) == list(range(1001, 2001))

    graph.script = None
    assert cli("run", "purchases") == 0
    with store_of(project) as store:
        assert store.list_rejected("purchases") == []
    assert len({event["event_id"] for event in graph.accepted_events}) == 2500


def test_pending_rows_are_retried_by_every_run_until_delivered(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    graph.script = unavailable_for_second_batch
    assert cli("run", "purchases") == 1  # rows 1001-2000 become pending
    for _ in range(6):  # a six-hour outage on an hourly schedule: no cap strands them
        before = second_batch_requests(graph)
        assert cli("run", "purchases") == 1
        assert second_batch_requests(graph) > before, "every run tries the pending rows again"
    printed = capsys.readouterr()
    assert "1,000 row(s) pending" in printed.err
    with store_of(project) as store:
        assert len(store.list_rejected("purchases", transient=True)) == 1000
        latest = store.list_runs("purchases")[0]
    assert latest.rows_pending > 0
    assert (
        latest.rows_read
        == latest.events_sent + latest.rows_rejected + latest.rows_pending + latest.rows_skipped
    )

    graph.script = None
    assert cli("run", "purchases") == 0
    with store_of(project) as store:
        assert store.list_rejected("purchases") == []
    assert len({event["event_id"] for event in graph.accepted_events}) == 2500


def test_pending_rows_that_age_out_are_reported_lost_with_a_failure(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    graph.script = unavailable_for_second_batch
    assert cli("run", "purchases") == 1
    database = project.parent / "shop.duckdb"
    with duckdb.connect(str(database)) as con:  # a week passes: rows 1001-1500 are now too old
        con.execute("update orders set created_at = created_at - interval 8 days where order_id <= 1500")
    with store_of(project) as store, store.engine.begin() as conn:  # rows 1501-2000 vanished too
        conn.execute(
            __import__("sqlalchemy").text(
                "update capi_rejected set first_seen = :old where cast(row_key as integer) > 1500"
            ),
            {"old": __import__("datetime").datetime(2020, 1, 1)},
        )
    with duckdb.connect(str(database)) as con:
        con.execute("delete from orders where order_id > 1500 and order_id <= 2000")
    graph.script = None
    capsys.readouterr()
    assert cli("run", "purchases") == 1, "lost rows fail the run loudly"
    printed = capsys.readouterr()
    assert "1,000 row(s) Meta could not take aged out" in printed.err
    with store_of(project) as store:
        kept = store.list_rejected("purchases")
        assert store.count_pending("purchases") == 0
        assert store.list_runs("purchases")[0].rows_lost == 1000
    assert len(kept) == 1000
    assert {row["reasons"][0]["rule"] for row in kept} == {"aged_out"}
    assert cli("run", "purchases") == 0, "reported once: the next run goes on"


def test_retry_all_resends_fixed_data_rejections(project: Path, graph: FakeGraph) -> None:
    database = project.parent / "shop.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("update orders set currency = 'XYZ' where order_id in (5, 6)")
    assert cli("run", "purchases") == 0
    with duckdb.connect(str(database)) as con:  # fixed in place: the cursor column did not move
        con.execute("update orders set currency = 'usd' where order_id in (5, 6)")

    assert cli("retry", "purchases") == 0
    with store_of(project) as store:
        assert len(store.list_rejected("purchases")) == 2, "plain retry is for transient rejections"
    assert cli("retry", "purchases", "--all") == 0
    with store_of(project) as store:
        assert store.list_rejected("purchases") == []
    assert len({event["event_id"] for event in graph.accepted_events}) == 2500
