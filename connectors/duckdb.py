"""DuckDB, the embedded default: a database file, or `:memory:` over CSV/Parquet files."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import duckdb

from capi_sync.connectors.base import Chunk, DBAPISource, Window, first_line
from capi_sync.errors import SourceError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from capi_sync.config import DuckDBWarehouse

PAGE_ROWS = 50_000  # rows per keyset page: bounds DuckDB's sort memory


class DuckDBSource(DBAPISource):
    """Opens files read-only so that a sync never blocks the process that writes the warehouse."""

    _errors = (duckdb.Error,)
    _label = "DuckDB"

    def __init__(self, config: DuckDBWarehouse) -> None:
        database = config.database()
        read_only = database != ":memory:"
        try:
            self._connection = duckdb.connect(database, read_only=read_only)
            # Relative paths in queries (read_csv('orders.csv')) resolve beside the pipelines file.
            self._connection.execute("set file_search_path = ?", [str(config.base_dir)])
            self._connection.execute("set TimeZone = 'UTC'")
            for statement in config.setup:
                self._connection.execute(statement)
        except duckdb.Error as exc:
            msg = f"DuckDB {database}: {exc}"
            raise SourceError(msg) from exc

    def _execute(self, sql: str, params: list[Any], what: str) -> Any:
        # The connection itself, not a cursor: DuckDB cursors are new connections that would lose
        # the session settings made above.
        try:
            return self._connection.execute(sql, params)
        except duckdb.Error as exc:
            raise SourceError(f"DuckDB: {what}: {first_line(exc)}") from exc

    def _release(self, cursor: Any) -> None:
        pass  # the result is dropped by the next statement; the connection stays open

    def stream(self, query: str, window: Window, chunk_size: int) -> Iterator[Chunk]:
        """Page by keyset: DuckDB holds a whole ORDER BY result in memory, a LIMITed one only that page.

        Each page is `order by ... limit PAGE` after the last row of the previous page, so memory
        stays at one page whatever the table's size.
        """
        if window.keys or not window.order_by:
            yield from super().stream(query, window, chunk_size)
            return
        page_size = max(chunk_size, PAGE_ROWS)
        after = window.after
        while True:
            sql, params = self.sql(query, replace(window, after=after))
            cursor = self._execute(f"{sql} limit {page_size}", params, "the query failed")
            positions = [
                names.index(c) for names in [[d[0] for d in cursor.description]] for c in window.order_by
            ]
            rows = 0
            while chunk := cursor.fetchmany(chunk_size):
                rows += len(chunk)
                yield chunk
                last = chunk[-1]
            if rows < page_size:
                return
            after = tuple(last[i] for i in positions)
