"""How a mapped field reads a row: a column, a path into a nested value, or a combination.

Paths walk JSON text, dicts (DuckDB STRUCT, BigQuery RECORD, PostgreSQL json), lists (`items.0`,
`items.length`) and cookie strings (`context.cookie._fbp`), so nested event tables need no
flattening view. A column's JSON text is parsed once per row however many paths read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import orjson

from capi_sync.mappings.normalize import decode_utf8
from capi_sync.mappings.spec import AllOf, Column, Constant, Derived, FieldSource, FirstOf, Lookup

Row = Sequence[Any]
Getter = Callable[[Row], Any]
DerivedFactory = Callable[["SourceCompiler"], Getter]


def resolve_column(name: str, columns: Sequence[str]) -> int | None:
    """Exact match first; else a unique case-insensitive one (Snowflake upper-cases names)."""
    if name in columns:
        return list(columns).index(name)
    folded = [index for index, column in enumerate(columns) if column.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def parse_nested(value: Any) -> Any:
    """JSON text becomes Python values; anything else is returned as it is."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = decode_utf8(value)  # invalid UTF-8 rejects the row with `invalid_utf8`
    if isinstance(value, str):
        stripped = value.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return value
    return value


def _cookies(text: str) -> dict[str, str]:
    """`a=1; b=2` -> {a: 1, b: 2}: cookie headers are stored as text in many event tables."""
    jar = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            jar[name.strip()] = value.strip()
    return jar


def walk(value: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        value = parse_nested(value)
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list | tuple):
            if part == "length":
                value = len(value)
            elif part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
        elif isinstance(value, str) and "=" in value:
            value = _cookies(value).get(part)
        else:
            return None
    return value


class _ParsedColumn:
    """One column's value, parsed from JSON at most once per row, shared by every path into it."""

    __slots__ = ("index", "row", "value")

    def __init__(self, index: int) -> None:
        self.index = index
        self.row: Row | None = None
        self.value: Any = None

    def __call__(self, row: Row) -> Any:
        if row is not self.row:
            self.row, self.value = row, parse_nested(row[self.index])
        return self.value


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


class SourceCompiler:
    """Turns field sources into getters against one query's columns; collects unknown columns."""

    def __init__(self, columns: Sequence[str], derived: Mapping[str, DerivedFactory] | None = None) -> None:
        self._columns = list(columns)
        self.used: set[int] = set()  # indexes of the columns some getter reads
        self.errors: list[str] = []
        self._derived = derived or {}
        self._parsed: dict[int, _ParsedColumn] = {}

    @property
    def columns(self) -> list[str]:
        """Every column; a getter that reads rows by this list may read any of them."""
        self.used.update(range(len(self._columns)))
        return list(self._columns)

    def path(self, name: str) -> tuple[int, tuple[str, ...]] | None:
        """A column, or the longest leading part of a dotted name that is a column, plus the rest."""
        index = resolve_column(name, self._columns)
        if index is not None:
            self.used.add(index)
            return index, ()
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            index = resolve_column(".".join(parts[:cut]), self._columns)
            if index is not None:
                self.used.add(index)
                return index, tuple(parts[cut:])
        return None

    def getter(self, source: FieldSource, where: str, *, required: bool = True) -> Getter:
        """`required=False` (a preset's defaults): a path missing from this table reads None."""
        if isinstance(source, Constant):
            constant = source.value
            return lambda _row: constant
        if isinstance(source, FirstOf):
            getters = [self.getter(s, where, required=required) for s in source.first_of]
            return lambda row: next((v for g in getters if _present(v := g(row))), None)
        if isinstance(source, AllOf):
            getters = [self.getter(s, where, required=required) for s in source.all_of]
            return lambda row: [v for g in getters if _present(v := g(row))] or None
        if isinstance(source, Lookup):
            inner = self.getter(source.lookup, where, required=required)
            table, default = source.values, source.default

            def translate(row: Row) -> Any:
                value = inner(row)
                return default if value is None else table.get(str(value).strip(), default)

            return translate
        if isinstance(source, Derived):
            factory = self._derived.get(source.derive)
            if factory is None:
                self.errors.append(f"{where}: unknown derived value '{source.derive}'")
                return lambda _row: None
            return factory(self)
        name = source.column if isinstance(source, Column) else source
        return self.column_getter(name, where, required=required)

    def column_getter(self, name: str, where: str, *, required: bool = True) -> Getter:
        found = self.path(name)
        if found is None:
            if required:
                self.errors.append(
                    f"{where}: column '{name}' is not returned by the query"
                    f" (columns: {', '.join(self._columns)}); for a constant write {{value: {name}}}"
                )
            return lambda _row: None
        index, parts = found
        if not parts:
            return itemgetter(index)
        parsed = self._parsed.setdefault(index, _ParsedColumn(index))
        return lambda row: walk(parsed(row), parts)

    def optional(self, name: str) -> Getter:
        """A path that may be missing from this table: reads None instead of being an error."""
        return self.column_getter(name, "", required=False)
