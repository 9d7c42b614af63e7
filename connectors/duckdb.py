"""DuckDB, the embedded default: a database file, or `:memory:` over CSV/Parquet files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from capi_sync.connectors.base import DBAPISource, first_line
from capi_sync.errors import SourceError

if TYPE_CHECKING:
    from capi_sync.config import DuckDBWarehouse


class DuckDBSource(DBAPISource):
    """Opens files read-only so that a sync never blocks the process that writes the warehouse."""

    _errors = (duckdb.Error,)
    _label = "DuckDB"
    dialect = "duckdb"

    def __init__(self, config: DuckDBWarehouse) -> None:
        self._pushdown_memory_limit = config.pushdown_memory_limit
        database = config.database()
        read_only = database != ":memory:"
        try:
            self._connection = duckdb.connect(database, read_only=read_only)
            # Relative paths in queries (read_csv('orders.csv')) resolve beside the pipelines file.
            self._connection.execute("set file_search_path = ?", [str(config.base_dir)])
            self._connection.execute("set TimeZone = 'UTC'")
            # The ORDER BY that keeps cursor order is a full sort; bounded memory and a spill folder
            # keep a sync's footprint flat however large the table (one thread needs fewer pinned
            # blocks while merging).
            self._connection.execute("set memory_limit = ?", [config.memory_limit])
            self._connection.execute("set threads = ?", [config.threads])
            self._connection.execute("set preserve_insertion_order = false")
            spill = Path(tempfile.gettempdir()) / "capi-sync-duckdb"
            self._connection.execute("set temp_directory = ?", [str(spill)])
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

    def prepare_for_pushdown(self) -> None:
        self._execute("set memory_limit = ?", [self._pushdown_memory_limit], "setting pushdown_memory_limit")

    def _release(self, cursor: Any) -> None:
        pass  # the result is dropped by the next statement; the connection stays open
