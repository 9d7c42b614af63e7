"""Any database with a SQLAlchemy dialect (PostgreSQL, MySQL, Redshift, ...), streamed server-side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from capi_sync.connectors.base import (
    Chunk,
    ClosingSource,
    Column,
    Projection,
    Window,
    column_of,
    count_null_sql,
    describe_sql,
    window_sql,
)
from capi_sync.errors import MissingDependency, SourceError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from capi_sync.config import SQLAlchemyWarehouse

_DRIVER_EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres"}


class SQLAlchemySource(ClosingSource):
    """`stream_results` keeps a server-side cursor open, so memory holds one chunk, not the table."""

    def __init__(self, config: SQLAlchemyWarehouse) -> None:
        try:
            self._engine = sa.create_engine(
                config.url.get_secret_value(), connect_args=dict(config.connect_args)
            )
            self._connection = self._engine.connect()
        except ModuleNotFoundError as exc:
            package = exc.name or "a database driver"
            raise MissingDependency(package, _DRIVER_EXTRAS.get(package, "postgres")) from exc
        except sa.exc.SQLAlchemyError as exc:
            # The exception text may quote the URL; SQLAlchemy masks its password.
            raise SourceError(f"cannot connect: {_short(exc)}") from exc
        self._quote = self._engine.dialect.identifier_preparer.quote
        name = self._engine.dialect.name
        self.dialect = "postgres" if name == "postgresql" else name

    def describe(self, query: str) -> list[Column]:
        try:
            sql, params = describe_sql(query, _named)
            result = self._connection.execute(sa.text(sql), _bound(params))
            description = result.cursor.description if result.cursor is not None else None
            names = list(result.keys())
            result.close()
        except sa.exc.SQLAlchemyError as exc:
            self._connection.rollback()
            raise SourceError(f"the query failed: {_short(exc)}") from exc
        type_codes = [entry[1] for entry in description] if description else [None] * len(names)
        return [column_of(name, self._type_name(code)) for name, code in zip(names, type_codes, strict=True)]

    def _type_name(self, type_code: Any) -> str | None:
        """DB-API type codes differ by driver: psycopg gives OIDs, others a name or nothing."""
        if isinstance(type_code, str):
            return type_code
        adapters = getattr(self._connection.connection.dbapi_connection, "adapters", None)
        if adapters is not None and isinstance(type_code, int):
            info = adapters.types.get(type_code)
            return info.name if info is not None else None
        return None

    def count_null(self, query: str, columns: Sequence[str]) -> int:
        try:
            sql, params = count_null_sql(query, [self._quote(c) for c in columns], _named)
            return int(self._connection.execute(sa.text(sql), _bound(params)).scalar() or 0)
        except sa.exc.SQLAlchemyError as exc:
            self._connection.rollback()
            raise SourceError(f"counting NULL cursors failed: {_short(exc)}") from exc

    def sql(self, query: str, window: Window, project: Projection | None = None) -> tuple[str, list[Any]]:
        return window_sql(query, window, self._quote, _named, project)

    def stream(
        self, query: str, window: Window, chunk_size: int, project: Projection | None = None
    ) -> Iterator[Chunk]:
        sql, params = self.sql(query, window, project)
        try:
            result = self._connection.execution_options(stream_results=True, yield_per=chunk_size).execute(
                sa.text(sql), _bound(params)
            )
            yield from result.partitions(chunk_size)
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(f"reading failed: {_short(exc)}") from exc

    def close(self) -> None:
        self._connection.close()
        self._engine.dispose()


def _named(index: int) -> str:
    return f":p{index}"


def _bound(params: list[Any]) -> dict[str, Any]:
    return {f"p{i}": value for i, value in enumerate(params)}


def _short(exc: Exception) -> str:
    return str(exc).split("\n(Background on this error", 1)[0].strip()
