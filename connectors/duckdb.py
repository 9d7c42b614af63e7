"""DuckDB, the embedded default: a database file, or `:memory:` over CSV/Parquet files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from capi_sync.connectors.base import (
    Chunk,
    Column,
    Window,
    column_of,
    count_null_sql,
    describe_sql,
    quote_identifier,
    window_sql,
)
from capi_sync.errors import SourceError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from capi_sync.config import DuckDBWarehouse


class DuckDBSource:
    """Opens files read-only so that a sync never blocks the process that writes the warehouse."""

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

    def describe(self, query: str) -> list[Column]:
        try:
            description = self._connection.execute(describe_sql(query)).description
        except duckdb.Error as exc:
            raise SourceError(f"DuckDB could not run the query: {exc}") from exc
        return [column_of(column[0], str(column[1])) for column in description or ()]

    def count_null(self, query: str, column: str) -> int:
        try:
            row = self._connection.execute(count_null_sql(query, quote_identifier(column))).fetchone()
        except duckdb.Error as exc:
            raise SourceError(f"DuckDB could not count NULL cursors: {exc}") from exc
        return int(row[0]) if row else 0

    def stream(self, query: str, window: Window, chunk_size: int) -> Iterator[Chunk]:
        sql, params = window_sql(query, window, quote_identifier, lambda _i: "?")
        try:
            cursor = self._connection.execute(sql, params)
            while chunk := cursor.fetchmany(chunk_size):
                yield chunk
        except duckdb.Error as exc:
            raise SourceError(f"DuckDB failed while reading: {exc}") from exc

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> DuckDBSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
