"""A real PostgreSQL server as warehouse and state store (state-store tests: test_state.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, recent, write_pipelines
from tests.fake_graph import FakeGraph


def test_pipeline_from_postgres_delivers_once_and_binds_the_cursor(
    postgres_url: str, tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("CAPI_SYNC_STATE", postgres_url)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "create table orders (order_id int primary key, email text, phone text, country text,"
            " ip text, user_agent text, page_url text, amount numeric(10, 2), currency text,"
            " tier text, created_at timestamptz, updated_at timestamptz)"
        ))  # fmt: skip
        conn.execute(
            sa.text(
                "insert into orders select i, 'u' || i || '@example.com', null, 'US', null, 'UA',"
                " 'https://x.example/' || i, 9.99, 'usd', 'gold', :t + i * interval '1 second',"
                " :t + i * interval '1 second' from generate_series(1, 2300) as i"
            ),
            {"t": recent(600).replace(tzinfo=dt.UTC)},
        )
    path = write_pipelines(tmp_path, graph.url)
    path.write_text(
        path.read_text().replace(
            "shop: {type: duckdb, path: shop.duckdb}", f"shop: {{type: sqlalchemy, url: '{postgres_url}'}}"
        )
    )
    assert cli("run", "purchases") == 0
    assert cli("run", "purchases") == 0
    ids = [event["event_id"] for event in graph.accepted_events]
    assert len(ids) == len(set(ids)) == 2300
    with StateStore(postgres_url) as store:
        assert store.load_cursor("purchases").value.tzinfo is not None

    # A cursor value is bound as a parameter, never spliced into the SQL.
    with StateStore(postgres_url) as store:
        store.set_cursor("purchases", "'; drop table orders; --")
    assert cli("run", "purchases") == 2  # text for a timestamptz cursor: refused before any SQL runs
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from orders")).scalar() == 2300
    engine.dispose()
