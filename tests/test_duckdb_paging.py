"""DuckDB reads ordered windows in keyset pages, so its sort never holds the whole result."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from capi_sync.config import DuckDBWarehouse
from capi_sync.connectors import duckdb as duckdb_source
from capi_sync.connectors.base import Window


def test_pages_cover_every_row_once_across_ties_and_composite_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.duckdb"
    with duckdb.connect(str(path)) as con:
        # 200 rows on 9 cursor values (long runs of ties), keyed by (a, b), plus NULL keys and cursors
        con.execute(
            "create table t as select i % 9 as c, i % 4 as a, i as b from range(200) r(i)"
            " union all select 3, null, 1000 union all select null, 1, 1001"
        )
    monkeypatch.setattr(duckdb_source, "PAGE_ROWS", 7)
    config = DuckDBWarehouse(type="duckdb", path=str(path))
    with duckdb_source.DuckDBSource(config) as source:
        window = Window(order_by=("c", "a", "b"), cursor="c", start=2)
        rows = [row for chunk in source.stream("select * from t", window, 5) for row in chunk]
        sql, _ = source.sql("select * from t", window)
        assert source.count_null("select * from t", ["a", "b"]) == 1
    expected = sorted((i % 9, i % 4, i) for i in range(200) if i % 9 >= 2)
    assert rows == expected
    assert '"a" is not null' in sql
