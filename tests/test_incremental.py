"""Incremental runs against a real DuckDB file and a real PostgreSQL server: ties, late rows within
`lookback`, the settle watermark, naive and aware cursors across a DST change, NULL cursors."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest
import sqlalchemy as sa

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli
from tests.fake_graph import FakeGraph

PARIS = ZoneInfo("Europe/Paris")
PIPELINE = """
warehouses:
  wh: {warehouse}
destinations:
  meta: {{pixel_id: "1", access_token: "${{FB_ACCESS_TOKEN}}", graph_url: "{graph_url}",
          retry_base_seconds: 0.01}}
pipelines:
  events:
    warehouse: wh
    destination: meta
    query: select * from events
    primary_key: id
    cursor: loaded_at
    timezone: {zone}
    lookback: {lookback}
    settle_delay: {settle}
    schedule: "{schedule}"
    settings: {{action_source: website}}
    mapping:
      server_event: {{event_name: {{value: Lead}}, event_time: created_at, event_source_url: url}}
      customer_info: {{em: email, client_ip_address: ip, client_user_agent: ua}}
"""


@dataclass
class Warehouse:
    """A table `events` in a real warehouse, written between runs like a loader would."""

    kind: str  # duckdb | postgres
    url: str
    cursor_type: str  # timestamp | timestamptz

    @property
    def yaml(self) -> str:
        if self.kind == "duckdb":
            return f"{{type: duckdb, path: {self.url}}}"
        return f"{{type: sqlalchemy, url: '{self.url}'}}"

    def execute(self, sql: str, rows: list[dict[str, Any]] | None = None) -> None:
        if self.kind == "duckdb":
            with duckdb.connect(self.url) as con:
                if rows:
                    con.executemany(sql.replace(":", "$"), rows)
                else:
                    con.execute(sql)
            return
        engine = sa.create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(sa.text(sql), rows or {})
        engine.dispose()

    @property
    def aware(self) -> bool:
        return self.cursor_type in ("timestamptz", "timestamp with time zone")

    def create(self) -> None:
        self.execute(
            "create table events (id integer primary key, email varchar, ip varchar, ua varchar,"
            f" url varchar, created_at timestamp, loaded_at {self.cursor_type})"
        )

    def insert(self, rows: dict[int, dt.datetime | None], zone: ZoneInfo = dt.UTC) -> None:  # type: ignore[assignment]
        """Rows by id and the UTC instant they were loaded; naive columns get wall time in `zone`."""
        now_local = dt.datetime.now(zone).replace(tzinfo=None)
        self.execute(
            "insert into events values (:id, :email, '203.0.113.7', 'Mozilla/5.0', :url, :created, :loaded)",
            [
                {
                    "id": i,
                    "email": f"u{i}@example.com",
                    "url": f"https://shop.example/{i}",
                    "created": now_local - dt.timedelta(hours=1),
                    "loaded": self.cursor_value(at, zone),
                }
                for i, at in rows.items()
            ],
        )

    def cursor_value(self, instant: dt.datetime | None, zone: ZoneInfo) -> dt.datetime | None:
        if instant is None or self.aware:
            return instant
        return instant.astimezone(zone).replace(tzinfo=None)


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["timestamp", "timestamptz"])
def warehouse(request: pytest.FixtureRequest, warehouse_kind: str, tmp_path: Path) -> Iterator[Warehouse]:
    if warehouse_kind == "duckdb":
        url = str(tmp_path / "wh.duckdb")
    else:
        url = request.getfixturevalue("postgres_url")
    cursor_type = request.param
    if warehouse_kind == "duckdb" and cursor_type == "timestamptz":
        cursor_type = "timestamp with time zone"
    wh = Warehouse(warehouse_kind, url, cursor_type)
    wh.create()
    return wh


def configure(
    folder: Path,
    graph: FakeGraph,
    wh: Warehouse,
    *,
    zone: str = "UTC",
    lookback: str = "1h",
    settle: str = "5m",
    schedule: str = "@hourly",
) -> Path:
    path = folder / "pipelines.yaml"
    path.write_text(
        textwrap.dedent(
            PIPELINE.format(
                warehouse=wh.yaml,
                graph_url=graph.url,
                zone=zone,
                lookback=lookback,
                settle=settle,
                schedule=schedule,
            )
        )
    )
    return path


def delivered(graph: FakeGraph) -> Counter[int]:
    return Counter(int(e["event_source_url"].rsplit("/", 1)[1]) for e in graph.accepted_events)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)


def minutes_ago(minutes: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_rows_equal_late_and_new_are_each_delivered_once(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path, zone: str
) -> None:
    tz = ZoneInfo(zone)
    configure(tmp_path, graph, warehouse, zone=zone)
    warehouse.insert({1: minutes_ago(60), 2: minutes_ago(50), 3: minutes_ago(40), 4: minutes_ago(20)}, tz)
    assert cli("run", "events") == 0
    assert delivered(graph) == dict.fromkeys([1, 2, 3, 4], 1)

    last = warehouse.cursor_value(minutes_ago(20), tz)
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        stored = store.load_cursor("events").value
    assert abs(stored - last) < dt.timedelta(seconds=5)

    # Loaded after the first run: at the cursor value itself (a tie), earlier but within the
    # one-hour lookback, later, too fresh (inside the 5-minute settle delay), and too late.
    warehouse.execute(
        "insert into events select 5, 'u5@example.com', ip, ua, 'https://shop.example/5', created_at,"
        " loaded_at from events where id = 4"
    )
    warehouse.insert({6: minutes_ago(45), 7: minutes_ago(10), 8: minutes_ago(2), 9: minutes_ago(180)}, tz)
    assert cli("run", "events") == 0
    assert delivered(graph) == dict.fromkeys([1, 2, 3, 4, 5, 6, 7], 1), "8 waits for the settle delay"

    configure(tmp_path, graph, warehouse, zone=zone, settle="0")
    assert cli("run", "events") == 0
    assert cli("run", "events") == 0
    assert delivered(graph) == dict.fromkeys([1, 2, 3, 4, 5, 6, 7, 8], 1)
    assert 9 not in delivered(graph), "older than cursor - lookback: documented as not re-read"


def test_without_lookback_ties_still_arrive_and_nothing_is_resent(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path
) -> None:
    configure(tmp_path, graph, warehouse, lookback="0")
    at = minutes_ago(30)
    warehouse.insert({1: at, 2: at, 3: minutes_ago(40)})
    assert cli("run", "events") == 0
    warehouse.insert({4: at, 5: minutes_ago(35), 6: minutes_ago(20)})
    assert cli("run", "events") == 0
    assert delivered(graph) == dict.fromkeys([1, 2, 3, 4, 6], 1), "5 is behind the cursor, no lookback"


def test_cursor_across_a_dst_change_in_the_pipeline_zone(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Paris fell back on 2026-10-25 at 03:00 CEST: 02:00-03:00 local happened twice."""
    configure(tmp_path, graph, warehouse, zone="Europe/Paris", lookback="0")
    assert cli("state", "set", "events", "2026-10-25T00:00") == 0
    expected = (
        "2026-10-24 22:00:00+00:00 (timestamptz)" if warehouse.aware else "2026-10-25 00:00:00 (timestamp)"
    )
    assert expected in capsys.readouterr().out
    fall_back = dt.datetime(2026, 10, 25, 1, tzinfo=dt.UTC)  # 03:00 CEST -> 02:00 CET
    instants = {
        1: fall_back - dt.timedelta(minutes=90),  # 01:30 CEST
        2: fall_back - dt.timedelta(minutes=30),  # 02:30 CEST (first pass)
        3: fall_back + dt.timedelta(minutes=40),  # 02:40 CET (second pass)
        4: fall_back + dt.timedelta(minutes=70),  # 03:10 CET
        5: minutes_ago(10),  # would look 50-60 minutes in the future if read as UTC
        6: minutes_ago(1),  # inside the settle delay
    }
    warehouse.insert(instants, PARIS)
    assert cli("run", "events") == 0
    assert delivered(graph) == dict.fromkeys([1, 2, 3, 4, 5], 1)
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        stored = store.load_cursor("events").value
    assert stored == warehouse.cursor_value(instants[5], PARIS).replace(microsecond=stored.microsecond)

    capsys.readouterr()
    assert cli("state", "show", "events") == 0
    shown = capsys.readouterr().out
    if not warehouse.aware:
        assert "in Europe/Paris =" in shown
        assert f"{instants[5]:%Y-%m-%d %H:%M}" in shown, "the naive wall time is also shown in UTC"


def test_rows_with_a_null_cursor_are_counted_and_reported(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(tmp_path, graph, warehouse)
    warehouse.insert({1: minutes_ago(30), 2: None, 3: None})
    assert cli("run", "events") == 0
    captured = capsys.readouterr()
    assert "2 row(s) have a NULL cursor" in captured.err
    assert delivered(graph) == {1: 1}


def test_first_run_reads_what_meta_accepts_or_from_start(
    warehouse_kind: str, graph: FakeGraph, tmp_path: Path, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    url = (
        str(tmp_path / "wh.duckdb") if warehouse_kind == "duckdb" else request.getfixturevalue("postgres_url")
    )
    wh = Warehouse(warehouse_kind, url, "timestamp")
    wh.create()
    wh.insert({1: minutes_ago(60 * 24 * 9), 2: minutes_ago(60 * 24 * 3), 3: minutes_ago(60)})
    path = configure(tmp_path, graph, wh)
    assert cli("run", "events", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "first run: reading rows since" in out
    assert "all that Meta still accepts" in out
    assert "2 rows read" in out

    path.write_text(path.read_text().replace("    lookback: 1h", "    lookback: 1h\n    start: 2 days ago"))
    assert cli("run", "events") == 0
    assert delivered(graph) == {3: 1}
