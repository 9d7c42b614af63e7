"""Rows with a NULL cursor or primary key cannot be ordered or found again: never read, counted."""

from __future__ import annotations

from pathlib import Path

import duckdb

from capi_sync.config import DuckDBWarehouse
from capi_sync.connectors.base import Window
from capi_sync.connectors.duckdb import DuckDBSource


def test_rows_with_null_cursor_or_key_are_left_out_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table t as select i % 9 as c, i % 4 as a, i as b from range(200) r(i)"
            " union all select 3, null, 1000 union all select null, 1, 1001"
        )
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=str(path), memory_limit="64MB")) as source:
        window = Window(order_by=("c", "a", "b"), cursor="c", start=2)
        rows = [row for chunk in source.stream("select * from t", window, 7) for row in chunk]
        assert source.count_null("select * from t", ["a", "b"]) == 1
        assert source.count_null("select * from t", ["c"]) == 1
    assert rows == sorted((i % 9, i % 4, i) for i in range(200) if i % 9 >= 2)
