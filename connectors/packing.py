"""Rows that leave the warehouse driver as one JSON text each, not one Python object per value.

Turning a fetched row into Python objects (a `datetime`, a `Decimal`, twenty strings) is done by
the driver one value at a time, and a run that builds on worker processes then pickles each of
those objects again. Packed, the warehouse writes the columns the mapping reads into one JSON array
per row: this process fetches one string per row (and the few columns it needs itself, such as the
cursor), hands that string to a worker as is, and the worker turns it back into the row with
`orjson`, the same values of the same types the driver would have returned (200k bench rows: the
run's own process spends about 2 s less of CPU, the run is about a tenth faster).

Only types that survive the round trip exactly are packed; the others are fetched as usual beside
the text, so packing changes how a row travels, never its values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

Decoder = Callable[[Any], Any]
Row = Sequence[Any]


def timestamp(text: str) -> dt.datetime | str:
    """DuckDB's own conversion: infinities become the ends of `datetime`'s range, and a value
    outside that range stays text."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return _TIMESTAMP_ENDS.get(text, text)


def date(text: str) -> dt.date | str:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return _DATE_ENDS.get(text, text)


_TIMESTAMP_ENDS = {"infinity": dt.datetime.max, "-infinity": dt.datetime.min}
_DATE_ENDS = {"infinity": dt.date.max, "-infinity": dt.date.min}


@dataclass(frozen=True)
class Packing:
    """How one query's rows are read: `(*main, *carried, text)`.

    `main` columns are fetched as objects for this process alone (the cursor it advances); `carried`
    columns are used by the mapping but do not pack (fetched as objects, they travel with the text);
    `text` is a JSON array as wide as the query's result, `null` where the mapping reads nothing.
    """

    width: int
    main: tuple[int, ...]  # result positions, fetched as objects for the run's own use
    carried: tuple[int, ...]  # result positions the mapping reads that cannot be packed
    decoders: tuple[tuple[int, Decoder], ...]  # packed positions whose JSON value is text for a type
    select: str  # the select list that reads a row this way

    def project(self, sql: str) -> str:
        """Wrap a sorted SELECT; the source must keep its order (DuckDB: preserve_insertion_order)."""
        return f"select {self.select} from ({sql}) as capi_pack"

    def read_index(self, index: int) -> int:
        """Where result column `index`, one of `main`, sits in a row as read."""
        return self.main.index(index)

    def for_workers(self, row: Row) -> tuple[Any, ...]:
        """What a worker needs of a read row: the carried values and the text."""
        return tuple(row[len(self.main) :])

    def unpack(self, row: Row) -> tuple[Any, ...]:
        """The row as the query returned it, from a read row or a worker's part of one."""
        values = orjson.loads(row[-1])
        for position, decode in self.decoders:
            if (value := values[position]) is not None:
                values[position] = decode(value)
        if self.carried:
            offset = len(row) - 1 - len(self.carried)
            for number, position in enumerate(self.carried):
                values[position] = row[offset + number]
        return tuple(values)

    def __reduce__(self) -> tuple[type[Packing], tuple[Any, ...]]:
        # Rebuilt from its fields: compiled (setup.py), a frozen class cannot be unpickled field by field.
        return Packing, (self.width, self.main, self.carried, self.decoders, self.select)


# DuckDB type -> (SQL for the value inside the JSON array, decoder of what comes back). Integers up
# to 64 bits, booleans and text are JSON as they are; decimals, doubles, dates and timestamps travel
# as DuckDB's text for them, which parses back to the driver's own value. TIMESTAMP_NS/_MS/_S,
# TIMESTAMPTZ, FLOAT, HUGEINT, lists, structs and the rest are fetched as objects.
_AS_IS = {
    "VARCHAR", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
}  # fmt: skip
_AS_TEXT: dict[str, Decoder | None] = {
    "JSON": None, "DOUBLE": float, "TIMESTAMP": timestamp, "DATE": date,
}  # fmt: skip


def duckdb_packing(
    columns: Sequence[tuple[str, str | None]],
    used: Sequence[int] | None,
    main: Sequence[int],
    quote: Callable[[str], str],
) -> Packing | None:
    """Pack the `used` columns (all when None) of a DuckDB result, fetching `main` as objects too.

    None when packing would save nothing. (DuckDB names a repeated column `name_1` and reads it so.)
    """
    wanted = set(range(len(columns)) if used is None else used)
    parts: list[str] = []
    carried: list[int] = []
    decoders: list[tuple[int, Decoder]] = []
    for position, (name, type_name) in enumerate(columns):
        kind = (type_name or "").upper()
        column = quote(name)
        if position not in wanted:
            parts.append("null")
        elif kind in _AS_IS:
            parts.append(column)
        elif kind in _AS_TEXT or kind.startswith("DECIMAL"):
            parts.append(f"cast({column} as varchar)")
            decode = Decimal if kind.startswith("DECIMAL") else _AS_TEXT[kind]
            if decode is not None:
                decoders.append((position, decode))
        else:
            parts.append("null")
            carried.append(position)
    if len(carried) == len(wanted):
        return None
    fetched = [quote(columns[position][0]) for position in (*main, *carried)]
    select = ", ".join([*fetched, f"cast(json_array({', '.join(parts)}) as varchar)"])
    return Packing(len(columns), tuple(main), tuple(carried), tuple(decoders), select)
