"""What every warehouse source offers: describe a query's columns, stream its rows in chunks.

The incremental window is applied by wrapping the user's query; values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from capi_sync.windows import kind_of_type

Chunk = Sequence[Sequence[Any]]


class Column(NamedTuple):
    """A result column and its kind (timestamp, timestamptz, date, integer, number, string, None)."""

    name: str
    kind: str | None


def column_of(name: str, type_name: str | None) -> Column:
    return Column(name, kind_of_type(type_name))


@dataclass(frozen=True, slots=True)
class Window:
    """Which rows to read: `start <= cursor` (or `<`), `cursor < end` (or `<=`), ordered for resuming.

    Without a cursor column the window is the whole query, ordered by the primary key.
    """

    order_by: tuple[str, ...]
    cursor: str | None = None
    start: Any = None
    start_inclusive: bool = True
    end: Any = None
    end_inclusive: bool = False
    key_columns: tuple[str, ...] = ()
    keys: tuple[tuple[Any, ...], ...] = ()  # only these rows (by primary key), to retry them


class Source(Protocol):
    """A connected warehouse. Sources are context managers and close their connection on exit."""

    def describe(self, query: str) -> list[Column]:
        """The query's result columns and their kinds, read without fetching a row."""
        ...

    def count_null(self, query: str, column: str) -> int:
        """Rows of `query` whose `column` is NULL: they can never pass a cursor and are reported."""
        ...

    def stream(self, query: str, window: Window, chunk_size: int) -> Iterator[Chunk]:
        """Rows of `query` inside `window`, ordered by `window.order_by`, `chunk_size` at a time."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...


def describe_sql(query: str) -> str:
    """A query that returns the columns of `query` and no row, in any SQL dialect."""
    return f"select * from ({query}) as capi_src where 1 = 0"


def count_null_sql(query: str, column: str) -> str:
    return f"select count(*) from ({query}) as capi_src where {column} is null"


def window_sql(
    query: str, window: Window, quote: Callable[[str], str], placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """Wrap `query` with the window's filter and order; return SQL and its positional parameters."""
    conditions: list[str] = []
    params: list[Any] = []
    if window.cursor is not None:
        column = quote(window.cursor)
        conditions.append(f"{column} is not null")
        if window.start is not None:
            conditions.append(
                f"{column} {'>=' if window.start_inclusive else '>'} {placeholder(len(params))}"
            )
            params.append(window.start)
        if window.end is not None:
            conditions.append(f"{column} {'<=' if window.end_inclusive else '<'} {placeholder(len(params))}")
            params.append(window.end)
    if window.keys:
        matches = []
        for key in window.keys:
            parts = []
            for column, value in zip(window.key_columns, key, strict=True):
                parts.append(f"{quote(column)} = {placeholder(len(params))}")
                params.append(value)
            matches.append(f"({' and '.join(parts)})")
        conditions.append(f"({' or '.join(matches)})")
    where = f" where {' and '.join(conditions)}" if conditions else ""
    order = ", ".join(quote(column) for column in window.order_by)
    return f"select * from ({query}) as capi_src{where} order by {order}", params


def quote_identifier(name: str) -> str:
    """ANSI double-quoted identifier, for dialects without a preparer of their own."""
    return '"' + name.replace('"', '""') + '"'
