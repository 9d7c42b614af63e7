"""One end-to-end pipeline, rows in and events out at the fake Graph API, on every warehouse:
a DuckDB file, a real PostgreSQL server, Snowflake (fakesnow's server, real connector) and
BigQuery (the real client against tests/fake_bigquery.py)."""

from __future__ import annotations

import datetime as dt
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from hashlib import sha256
from pathlib import Path
from typing import Any

import duckdb
import pytest
import snowflake.connector
import sqlalchemy as sa

# A reference to the function: fakesnow's first call imports its `fakesnow.server` module, which
# then shadows the `fakesnow.server` attribute.
from fakesnow import server as snowflake_server

from capi_sync import native
from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, dry_run_both_engines
from tests.fake_bigquery import FakeBigQuery
from tests.fake_graph import FakeGraph

COLUMNS = (
    "order_id, email, phone, country, ip, user_agent, page_url, amount, currency, created_at, updated_at"
)
PIPELINES = """
warehouses:
  wh: {warehouse}
destinations:
  meta: {{pixel_id: "123456789", access_token: "${{FB_ACCESS_TOKEN}}", graph_url: "{graph_url}",
          retry_base_seconds: 0.01}}
pipelines:
  purchases: &pipeline
    warehouse: wh
    destination: meta
    query: select * from orders
    primary_key: order_id
    cursor: updated_at
    settle_delay: 0
    settings: {{action_source: website, default_phone_region: US}}
    mapping:
      server_event: {{event_name: {{value: Purchase}}, event_time: created_at, event_source_url: page_url}}
      customer_info: {{em: email, ph: phone, country: country, client_ip_address: ip,
                      client_user_agent: user_agent}}
      custom_data: {{value: amount, currency: currency}}
  templated:
    <<: *pipeline
    query: >
      select * from orders
      {{% if cursor_start is not none %}}where updated_at >= {{{{ cursor_start }}}}{{% endif %}}
"""


@dataclass
class Warehouse:
    yaml: str
    insert: Callable[[list[tuple[Any, ...]]], None]
    count: Callable[[], int]


def rows(first: int, count: int, minutes_ago: float = 120) -> list[tuple[Any, ...]]:
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=minutes_ago)
    return [
        (
            i, f" User{i}@Example.com ", f"(650) 555-{i % 10000:04d}", "US", "203.0.113.7", "Mozilla/5.0",
            f"https://shop.example.com/o/{i}", Decimal("19.99"), "usd",
            (base + dt.timedelta(seconds=i)).replace(tzinfo=None), base + dt.timedelta(seconds=i),
        )
        for i in range(first, first + count)
    ]  # fmt: skip


def _duckdb_table(path: str, aware: str) -> None:
    with duckdb.connect(path) as con:
        con.execute(
            "create table orders (order_id integer, email varchar, phone varchar, country varchar,"
            " ip varchar, user_agent varchar, page_url varchar, amount decimal(10, 2), currency varchar,"
            f" created_at timestamp, updated_at {aware})"
        )


def _duckdb_insert(path: str) -> Callable[[list[tuple[Any, ...]]], None]:
    def insert(values: list[tuple[Any, ...]]) -> None:
        with duckdb.connect(path) as con:
            con.executemany(f"insert into orders ({COLUMNS}) values ({', '.join('?' * 11)})", values)

    return insert


def _duckdb_count(path: str) -> Callable[[], int]:
    def count() -> int:
        with duckdb.connect(path, read_only=True) as con:
            return con.execute("select count(*) from orders").fetchone()[0]  # type: ignore[index]

    return count


def _sql_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dt.datetime):
        kind = "timestamp_ltz" if value.tzinfo else "timestamp_ntz"
        return f"'{value.replace(tzinfo=None).isoformat(sep=' ')}'::{kind}"
    if isinstance(value, (int, Decimal)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


@contextmanager
def fake_snowflake(prefix: str, schema: str) -> Iterator[tuple[Any, str, str]]:
    """A fakesnow server with a fresh database and schema: (a setup connection, the database's
    name, the warehouse's YAML). Databases get unique names: fakesnow's servers share one catalog."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with snowflake_server() as options:
        setup = snowflake.connector.connect(**options)
        setup.cursor().execute(f"create database {database}")
        setup.cursor().execute(f"create schema {database}.{schema}")
        yaml = (
            f"{{type: snowflake, account: {options['account']}, user: {options['user']},"
            f" password: {options['password']}, host: {options['host']}, port: {options['port']},"
            f" protocol: http, database: {database}, schema: {schema}, connect_args: {{network_timeout: 10}}}}"
        )
        try:
            yield setup, database, yaml
        finally:
            setup.close()


@pytest.fixture(params=["duckdb", "postgres", "snowflake", "bigquery"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    kind = request.param
    if kind in ("duckdb", "bigquery"):
        path = str(tmp_path / "wh.duckdb")
        _duckdb_table(path, "timestamp with time zone")
        if kind == "duckdb":
            yield Warehouse(f"{{type: duckdb, path: {path}}}", _duckdb_insert(path), _duckdb_count(path))
            return
        with FakeBigQuery(path) as bigquery:
            yaml = (
                f"{{type: bigquery, project: test-project, dataset: shop, anonymous: true,"
                f" api_endpoint: '{bigquery.url}'}}"
            )
            yield Warehouse(yaml, _duckdb_insert(path), _duckdb_count(path))
        return
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(
                "create table orders (order_id int, email text, phone text, country text, ip text,"
                " user_agent text, page_url text, amount numeric(10, 2), currency text,"
                " created_at timestamp, updated_at timestamptz)"
            ))  # fmt: skip

        def insert(values: list[tuple[Any, ...]]) -> None:
            names = COLUMNS.split(", ")
            with engine.begin() as conn:
                conn.execute(
                    sa.text(f"insert into orders values ({', '.join(':' + n for n in names)})"),
                    [dict(zip(names, row, strict=True)) for row in values],
                )

        def count() -> int:
            with engine.connect() as conn:
                return int(conn.execute(sa.text("select count(*) from orders")).scalar() or 0)

        yield Warehouse(f"{{type: sqlalchemy, url: '{url}'}}", insert, count)
        engine.dispose()
        return
    with fake_snowflake("shop", "sales") as (setup, database, yaml):
        setup.cursor().execute(
            f"create table {database}.sales.orders (order_id int, email varchar, phone varchar, country varchar,"
            " ip varchar, user_agent varchar, page_url varchar, amount number(10, 2), currency varchar,"
            " created_at timestamp_ntz, updated_at timestamp_ltz)"
        )

        def insert(values: list[tuple[Any, ...]]) -> None:
            literal_rows = ", ".join("(" + ", ".join(map(_sql_literal, row)) + ")" for row in values)
            setup.cursor().execute(f"insert into {database}.sales.orders ({COLUMNS}) values {literal_rows}")

        def count() -> int:
            cursor = setup.cursor()
            cursor.execute(f"select count(*) from {database}.sales.orders")
            return int(cursor.fetchone()[0])

        yield Warehouse(yaml, insert, count)


@pytest.fixture
def project(warehouse: Warehouse, graph: FakeGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    path = tmp_path / "pipelines.yaml"
    path.write_text(textwrap.dedent(PIPELINES.format(warehouse=warehouse.yaml, graph_url=graph.url)))
    return path


def delivered(graph: FakeGraph, pipeline_ids: set[str] | None = None) -> list[int]:
    return sorted(
        int(e["event_source_url"].rsplit("/", 1)[1])
        for e in graph.accepted_events
        if pipeline_ids is None or e["event_id"] in pipeline_ids
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # fakesnow's note about Arrow copies
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rows_in_events_out_once(project: Path, warehouse: Warehouse, graph: FakeGraph) -> None:
    warehouse.insert(rows(1, 2300))
    assert cli("run", "purchases") == 0
    assert cli("run", "purchases") == 0
    assert delivered(graph) == list(range(1, 2301))

    tie = rows(2300, 1)[0]  # a second row at exactly the last cursor value
    warehouse.insert([(5000, *tie[1:6], "https://shop.example.com/o/5000", *tie[7:])])
    warehouse.insert(rows(2301, 4, minutes_ago=60))
    assert cli("run", "purchases") == 0
    assert delivered(graph) == [*range(1, 2305), 5000]
    events = graph.accepted_events
    assert len({e["event_id"] for e in events}) == len(events)
    hashed = sha256(b"user1@example.com").hexdigest()
    assert next(e for e in events if e["event_source_url"].endswith("/o/1"))["user_data"]["em"] == hashed
    assert events[0]["custom_data"] == {"value": 19.99, "currency": "USD"}

    graph.requests.clear()
    assert cli("run", "templated") == 0, "the Jinja query binds cursor_start in the warehouse's style"
    assert delivered(graph) == [*range(1, 2305), 5000]
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        for name in ("purchases", "templated"):
            assert store.load_cursor(name).value.tzinfo is not None


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_cursor_holding_sql_is_bound_not_executed(project: Path, warehouse: Warehouse) -> None:
    warehouse.insert(rows(1, 10))
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        store.set_cursor("purchases", "'; drop table orders; --")
    assert cli("run", "purchases", "--dry-run") in (0, 2)  # text for a timestamp cursor: refused (exit 2)
    assert warehouse.count() == 10


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_check_and_render(
    project: Path, warehouse: Warehouse, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    warehouse.insert(rows(1, 3))
    assert cli("check") == 0
    out = capsys.readouterr().out
    assert out.count("mapping OK") == 2
    assert "pixel 123456789 (Test pixel) reachable" in out
    assert TOKEN not in out

    assert cli("render", "templated") == 0
    out = capsys.readouterr().out
    assert "parameter 1:" in out
    assert "parameter 3:" in out, "the template's bound value, then the window's start and end"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.usefixtures("project")
def test_the_native_core_maps_every_warehouse_as_the_reference_does(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], core_writes: list[int],
) -> None:  # fmt: skip
    """Rows of every warehouse reach the core as Arrow (DuckDB's own, the others' chunks converted
    exactly), and its events are the reference's, byte for byte."""
    if not native.available():
        pytest.skip("the native core is not built")
    warehouse.insert(rows(1, 700))
    runs = dry_run_both_engines(tmp_path, monkeypatch, capsys)
    assert "mapped in Python" not in runs["native"][1], runs["native"][1]
    assert runs["native"][0].count(b"\n") == 700
    assert sum(core_writes) == 700, "the core wrote every event"
    assert runs["native"][0] == runs["python"][0]
