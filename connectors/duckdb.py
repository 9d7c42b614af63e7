"""DuckDB, the embedded default: a database file, or `:memory:` over CSV/Parquet files."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from capi_sync.connectors.base import DBAPISource, describe_sql, first_line
from capi_sync.errors import SourceError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

    from capi_sync.config import DuckDBWarehouse
    from capi_sync.connectors.base import Projection, Window

# With no `memory_limit` set, the sorted read starts lean and doubles its buffer when a sort needs
# more: the bench rows sort in 96 MB (80 MB fails), wider rows may need more, and no table should fail
# for want of a setting the user never chose.
AUTO_MEMORY_LIMIT_MB = 96
AUTO_MEMORY_LIMIT_CEILING_MB = 2048
STREAMING_BUFFER = "2MB"

# Connections to one file in one process share a database, and with it `threads` and `memory_limit`
# (the scheduler runs pipelines side by side): a read only raises `threads` on a database it has alone.
_open_files: Counter[str] = Counter()
_open_files_lock = threading.Lock()


class DuckDBSource(DBAPISource):
    """Opens files read-only so that a sync never blocks the process that writes the warehouse."""

    _errors = (duckdb.Error,)
    _label = "DuckDB"
    dialect = "duckdb"

    def __init__(self, config: DuckDBWarehouse) -> None:
        chosen = {"memory_limit": config.memory_limit, "pushdown_memory_limit": config.pushdown_memory_limit}
        self._limits = {name: value or f"{AUTO_MEMORY_LIMIT_MB}MB" for name, value in chosen.items()}
        self._first_limits = dict(self._limits)
        self._growing = {name for name, value in chosen.items() if value is None}  # set: a hard limit
        self._setting = "memory_limit"  # the one in force; pushdown_memory_limit for pushdown reads
        self._threads = config.threads
        self._stream_threads = config.threads  # while rows stream out, after the sort
        self._raised = False
        database = config.database()
        read_only = database != ":memory:"
        self._file = database if read_only else None  # each ":memory:" connection is a database of its own
        try:
            self._connection = duckdb.connect(database, read_only=read_only)
            # Relative paths in queries (read_csv('orders.csv')) resolve beside the pipelines file.
            self._connection.execute("set file_search_path = ?", [str(config.base_dir)])
            self._connection.execute("set TimeZone = 'UTC'")
            # DuckDB draws its own bar on stdout for slow statements, even into a pipe or a log file;
            # the run's progress is capi-sync's to show.
            self._connection.execute("set enable_progress_bar = false")
            # The ORDER BY that keeps cursor order is a full sort; bounded memory and a spill folder
            # keep a sync's footprint flat however large the table (one thread needs fewer pinned
            # blocks while merging).
            self._connection.execute("set memory_limit = ?", [self._limits["memory_limit"]])
            self._connection.execute("set threads = ?", [config.threads])
            self._connection.execute("set preserve_insertion_order = false")
            # Rows waiting to be fetched: the 10 MB default held 12 MB more at peak than this, and
            # the run fetches a thousand rows at a time, no faster with more queued (1M bench rows).
            self._connection.execute("set streaming_buffer_size = ?", [STREAMING_BUFFER])
            spill = Path(tempfile.gettempdir()) / "capi-sync-duckdb"
            self._connection.execute("set temp_directory = ?", [str(spill)])
            for statement in config.setup:
                self._connection.execute(statement)
        except duckdb.Error as exc:
            msg = f"DuckDB {database}: {exc}"
            raise SourceError(msg) from exc
        if self._file is not None:
            with _open_files_lock:
                _open_files[self._file] += 1

    def _execute(self, sql: str, params: list[Any], what: str) -> Any:
        # The connection itself, not a cursor: DuckDB cursors are new connections that would lose
        # the session settings made above.
        if self._raised:  # the next sort runs with the user's threads again
            self._connection.execute("set threads = ?", [self._threads])
            self._raised = False
        while True:
            try:
                return self._connection.execute(sql, params)
            except duckdb.OutOfMemoryException as exc:
                # The sort runs inside `execute`, before any row is handed out: trying again is safe.
                if not self._grow_memory_limit():
                    raise SourceError(f"DuckDB: {what}: {self._explain(exc)}") from exc
            except duckdb.Error as exc:
                raise SourceError(f"DuckDB: {what}: {first_line(exc)}") from exc

    def _explain(self, exc: BaseException) -> str:
        # Out of memory while rows stream out (more threads pin more blocks) cannot be retried:
        # rows were already handed out. The user learns which limit to raise either way.
        if not isinstance(exc, duckdb.OutOfMemoryException):
            return first_line(exc)
        setting, limit = self._setting, self._limits[self._setting]
        return f"{first_line(exc)} (raise the warehouse's {setting}, now {limit})"

    def _grow_memory_limit(self) -> bool:
        """Double a limit the user left unset, up to the ceiling."""
        setting = self._setting
        if setting not in self._growing:
            return False
        current = _megabytes(self._limits[setting])
        if current >= AUTO_MEMORY_LIMIT_CEILING_MB:
            return False
        # Up to the ceiling itself: stopping at the last doubling below it (1536 MB) left wide rows
        # (10 MB values) failing with 512 MB of the promised room unused.
        self._limits[setting] = grown = f"{min(current * 2, AUTO_MEMORY_LIMIT_CEILING_MB)}MB"
        self._connection.execute("set memory_limit = ?", [grown])
        return True

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(
            f"DuckDB needed more than {_megabytes(limit) // 2}MB to sort the rows: read them with {limit}"
            f" (set {setting} to start there)"
            for setting, limit in self._limits.items()
            if limit != self._first_limits[setting]
        )

    def prepare_for_pushdown(self) -> None:
        self._setting = "pushdown_memory_limit"
        self._execute("set memory_limit = ?", [self._limits[self._setting]], "setting pushdown_memory_limit")
        # The digests are a SELECT over the sorted window. DuckDB documents that a SELECT keeps its
        # input's order, but with this setting off it may reorder a result whose outermost query
        # has no ORDER BY of its own, which this one has not.
        self._execute("set preserve_insertion_order = true", [], "keeping the window's order")
        # Hashing is most of the read, and it comes after the sort: every core takes part then
        # (200k bench rows: 2.8 -> 1.8 s; the sort itself keeps `threads`, which pins less memory).
        self._stream_threads = max(self._threads, os.cpu_count() or 1)

    def arrow_schema(self, query: str) -> pa.Schema:
        """The Arrow schema `query`'s rows arrive in (no row is read)."""
        cursor = self._execute(*describe_sql(query, self._placeholder), "the query failed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the extra copy is of no row
            return cursor.to_arrow_table().schema

    def arrow_batches(
        self, query: str, window: Window, chunk_size: int, project: Projection | None = None
    ) -> Iterator[pa.RecordBatch]:
        """`stream`'s rows as Arrow record batches of `chunk_size` rows: DuckDB hands them out as
        columns, so no Python object is made for a value the core reads."""
        sql, params = self.sql(query, window, project)
        reader = self._arrow_reader(sql, params, chunk_size)
        self._streaming()
        try:
            for batch in reader:
                yield batch
                del batch
        except self._errors as exc:
            raise SourceError(f"{self._label} failed while reading: {self._explain(exc)}") from exc
        finally:
            reader.close()

    def _arrow_reader(self, sql: str, params: list[Any], chunk_size: int) -> pa.RecordBatchReader:
        """A relation's reader streams; a DB-API result's would first copy every row into Arrow."""
        with contextlib.suppress(duckdb.Error):
            self._connection.abort()  # the describe or count before it left a result open
        if self._raised:  # the sort runs with the user's threads again, as `_execute` does
            self._connection.execute("set threads = ?", [self._threads])
            self._raised = False
        while True:
            try:
                return self._connection.sql(sql, params=params).to_arrow_reader(chunk_size)
            except duckdb.OutOfMemoryException as exc:  # the sort, before any row: retried as `_execute` does
                if not self._grow_memory_limit():
                    raise SourceError(f"DuckDB: the query failed: {self._explain(exc)}") from exc
            except duckdb.Error as exc:
                raise SourceError(f"DuckDB: the query failed: {first_line(exc)}") from exc

    def _streaming(self) -> None:
        with _open_files_lock:
            shared = self._file is not None and _open_files[self._file] > 1
        if self._stream_threads > self._threads and not shared:
            # `threads` is the database's, not the session's: a second connection changes it without
            # dropping the result that is streaming on the first.
            with self._connection.cursor() as other:
                other.execute("set threads = ?", [self._stream_threads])
            self._raised = True

    def _release(self, cursor: Any) -> None:
        pass  # the result is dropped by the next statement; the connection stays open

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._file is not None:
                with _open_files_lock:
                    _open_files[self._file] -= 1
                    if not _open_files[self._file]:
                        del _open_files[self._file]
                self._file = None  # closing twice counts once


def _megabytes(limit: str) -> int:
    return int(limit.removesuffix("MB"))
