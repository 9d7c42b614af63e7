"""What every warehouse source offers: describe a query's columns, stream its rows in chunks.

The incremental window is applied by wrapping the user's query; values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Self

from capi_sync.errors import SourceError, TemplateProblem
from capi_sync.windows import kind_of_type

Chunk = Sequence[Sequence[Any]]
Projection = Callable[[str], str]  # wraps a windowed, sorted SELECT in one that keeps its order


class Column(NamedTuple):
    """A result column and its kind (timestamp, timestamptz, date, integer, number, string, None)."""

    name: str
    kind: str | None
    type_name: str | None = None  # the warehouse's own name for its type


def column_of(name: str, type_name: str | None) -> Column:
    return Column(name, kind_of_type(type_name), type_name)


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
    # incremental | backfill | retry | describe: which template variables are set
    purpose: str = "incremental"


class Source(Protocol):
    """A connected warehouse. Sources are context managers and close their connection on exit."""

    dialect: str
    """SQL dialect for generated SQL (hash pushdown): duckdb, postgres, snowflake, bigquery, or other."""

    @property
    def notes(self) -> tuple[str, ...]:
        """What the source decided on the user's behalf while reading (a run's report shows them)."""
        ...

    def describe(self, query: str) -> list[Column]:
        """The query's result columns and their kinds, read without fetching a row."""
        ...

    def count_null(self, query: str, columns: Sequence[str]) -> int:
        """Rows of `query` with a NULL in any of `columns` (cursor, primary key): never read, reported."""
        ...

    def stream(
        self, query: str, window: Window, chunk_size: int, project: Projection | None = None
    ) -> Iterator[Chunk]:
        """Rows of `query` inside `window`, ordered by `window.order_by`, `chunk_size` at a time;
        `project` is a SELECT put over the sorted window (hash pushdown's digests)."""
        ...

    def sql(self, query: str, window: Window, project: Projection | None = None) -> tuple[str, list[Any]]:
        """The statement `stream` runs, with its bind parameters (for `capi-sync render`)."""
        ...

    def prepare_for_pushdown(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...


TEMPLATE_VARIABLES = (
    "cursor_start", "cursor_end", "backfill_start", "backfill_end", "window_start", "window_end",
)  # fmt: skip


def is_template(query: str) -> bool:
    return "{{" in query or "{%" in query


def template_variables(window: Window | None) -> dict[str, Any]:
    """What a templated query sees; a bound that does not apply is None."""
    values = dict.fromkeys(TEMPLATE_VARIABLES)
    if window is None:
        return values
    values["window_start"], values["window_end"] = window.start, window.end
    if window.purpose == "incremental":
        values["cursor_start"], values["cursor_end"] = window.start, window.end
    elif window.purpose == "backfill":
        values["backfill_start"], values["backfill_end"] = window.start, window.end
    return values


def render_query(
    query: str, window: Window | None, placeholder: Callable[[int], str], params: list[Any]
) -> str:
    """Render a Jinja query: every `{{ expression }}` becomes a bind parameter, never literal SQL.

    Sandboxed, with undefined names an error. Values are appended to `params` in order.
    """
    if not is_template(query):
        return query
    # Imported here: most queries are plain SQL, and a run need not load a template engine for them.
    from jinja2 import StrictUndefined, TemplateError, Undefined  # noqa: PLC0415
    from jinja2.sandbox import SandboxedEnvironment  # noqa: PLC0415

    def bind(value: Any) -> str:
        if isinstance(value, Undefined):
            str(value)  # StrictUndefined raises here, naming the variable
        params.append(value)
        return placeholder(len(params) - 1)

    environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=bind)
    try:
        return environment.from_string(query).render(template_variables(window))
    except TemplateError as exc:
        raise TemplateProblem(f"query template: {exc}") from exc


def describe_sql(query: str, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """A query that returns the columns of `query` and no row, in any SQL dialect."""
    params: list[Any] = []
    inner = render_query(query, Window(order_by=(), purpose="describe"), placeholder, params)
    return f"select * from ({inner}) as capi_src where 1 = 0", params


def count_null_sql(
    query: str, columns: Sequence[str], placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """`columns` are already quoted."""
    params: list[Any] = []
    inner = render_query(query, Window(order_by=(), purpose="describe"), placeholder, params)
    nulls = " or ".join(f"{column} is null" for column in columns)
    return f"select count(*) from ({inner}) as capi_src where {nulls}", params


def window_sql(
    query: str,
    window: Window,
    quote: Callable[[str], str],
    placeholder: Callable[[int], str],
    project: Projection | None = None,
) -> tuple[str, list[Any]]:
    """Wrap `query` with the window's filter and order, and `project` over that; return SQL and its
    positional parameters.

    A templated query is rendered first (its parameters come first); the window's own filter is
    still applied outside it, so a template can only narrow what is read, never widen it.
    """
    params: list[Any] = []
    query = render_query(query, window, placeholder, params)
    conditions: list[str] = []
    # Rows with a NULL cursor or key cannot be ordered or found again; they are counted instead.
    conditions += [f"{quote(column)} is not null" for column in window.order_by]
    if window.cursor is not None:
        column = quote(window.cursor)
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
    windowed = f"select * from ({query}) as capi_src{where} order by {order}"
    return (project(windowed) if project is not None else windowed), params


def quote_identifier(name: str) -> str:
    """ANSI double-quoted identifier, for dialects without a preparer of their own."""
    return '"' + name.replace('"', '""') + '"'


class ClosingSource:
    """`with source:` closes the connection however the block ends."""

    @property
    def notes(self) -> tuple[str, ...]:
        return ()

    def prepare_for_pushdown(self) -> None:
        """Adjust session settings for hash pushdown's wider rows; most warehouses need nothing."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DBAPISource(ClosingSource):
    """Describe, count and stream over a DB-API connection; subclasses say how to run a statement.

    Subclasses set `_connection`, `_errors` and `_label`, and may override `_type_name`,
    `_placeholder` and `_quote` for their dialect.
    """

    _connection: Any
    _errors: tuple[type[Exception], ...] = ()
    _label = "the warehouse"

    @staticmethod
    def _placeholder(_index: int) -> str:
        return "?"

    @staticmethod
    def _quote(name: str) -> str:
        return quote_identifier(name)

    def _type_name(self, description: Any) -> str | None:
        return str(description[1]) if description[1] is not None else None

    def _execute(self, sql: str, params: list[Any], what: str) -> Any:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, params)
        except self._errors as exc:
            self._release(cursor)
            raise SourceError(f"{self._label}: {what}: {first_line(exc)}") from exc
        return cursor

    def _release(self, cursor: Any) -> None:
        cursor.close()

    def describe(self, query: str) -> list[Column]:
        cursor = self._execute(*describe_sql(query, self._placeholder), "the query failed")
        try:
            return [column_of(entry[0], self._type_name(entry)) for entry in cursor.description or ()]
        finally:
            self._release(cursor)

    def count_null(self, query: str, columns: Sequence[str]) -> int:
        statement = count_null_sql(query, [self._quote(c) for c in columns], self._placeholder)
        cursor = self._execute(*statement, "counting NULL cursors failed")
        try:
            row = cursor.fetchone()
        finally:
            self._release(cursor)
        return int(row[0]) if row else 0

    def sql(self, query: str, window: Window, project: Projection | None = None) -> tuple[str, list[Any]]:
        return window_sql(query, window, self._quote, self._placeholder, project)

    def stream(
        self, query: str, window: Window, chunk_size: int, project: Projection | None = None
    ) -> Iterator[Chunk]:
        cursor = self._execute(*self.sql(query, window, project), "the query failed")
        self._streaming()
        try:
            while chunk := cursor.fetchmany(chunk_size):
                yield chunk
                del chunk  # with the reader's reference gone too, one chunk is alive, not two
        except self._errors as exc:
            raise SourceError(f"{self._label} failed while reading: {self._explain(exc)}") from exc
        finally:
            self._release(cursor)

    def _streaming(self) -> None:
        """The statement ran (a sort is done); its rows are about to be fetched."""

    def _explain(self, exc: BaseException) -> str:
        """A driver's error as the user reads it; sources add what to change where they know."""
        return first_line(exc)

    def close(self) -> None:
        self._connection.close()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
