"""Rows as Arrow record batches, for the native core.

DuckDB hands out Arrow itself (`ArrowSource`). Every other warehouse streams rows, and each chunk is
turned into a record batch here, but only where Arrow hands back exactly the values that were read:
the core and the Python reference then map the same values, so their events are equal by
construction. A chunk with a value Arrow would change (bytes, JSON, a UUID, an integer beyond 64
bits, a column mixing types) stays rows, and the reference maps it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Sequence

    import pyarrow as pa

    from capi_sync.connectors.base import Chunk, Projection, Window


@runtime_checkable
class ArrowSource(Protocol):
    """A source that reads Arrow natively, so no Python object is made for a value the core reads."""

    def arrow_schema(self, query: str) -> pa.Schema:
        """The Arrow schema `query`'s rows arrive in (no row is read)."""
        ...

    def arrow_batches(
        self, query: str, window: Window, chunk_size: int, project: Projection | None = None
    ) -> Iterator[pa.RecordBatch]:
        """`Source.stream`'s rows as record batches of about `chunk_size` rows."""
        ...


class Converted(NamedTuple):
    """A chunk as a record batch, or the chunk itself with the reason it stays rows."""

    batch: pa.RecordBatch | None
    rows: Chunk
    reason: str | None = None
    column: int | None = None  # the column that kept the chunk as rows


# Types whose values Arrow keeps exactly, checked by type alone (`bool` is its own class here).
_EXACT = {str: "string", bool: "bool_", int: "int64", float: "float64", dt.date: "date32"}


def record_batch(
    chunk: Chunk, names: Sequence[str], needed: Collection[int], first: Sequence[int] = ()
) -> Converted:
    """`chunk` as a record batch of `names`, with values in the `needed` columns (the mapping's,
    the primary key's and the cursor's) and nulls elsewhere, as the reference reads them.

    Columns in `first` are tried first: a column that kept the last chunk as rows most likely
    keeps this one too, and is found before any other column is converted.
    """
    import pyarrow as pa  # noqa: PLC0415 (the Arrow path only)

    count = len(chunk)
    columns = list(zip(*chunk, strict=True)) if count else [()] * len(names)  # transposed in C
    arrays: dict[int, pa.Array] = {}
    for index in (*first, *(i for i in range(len(names)) if i not in first)):
        if index not in needed:
            arrays[index] = pa.nulls(count)
            continue
        array = _exact_array(pa, columns[index])
        if isinstance(array, str):
            return Converted(None, chunk, f"column '{names[index]}' holds {array}", index)
        arrays[index] = array
    return Converted(
        pa.RecordBatch.from_arrays([arrays[i] for i in range(len(names))], names=list(names)), chunk
    )


class ChunkConverter:
    """`record_batch` over a stream of chunks, trying the column that last stood in the way first."""

    def __init__(self, names: Sequence[str], needed: Collection[int]) -> None:
        self._names, self._needed = list(names), frozenset(needed)
        self._first: tuple[int, ...] = ()

    def __call__(self, chunk: Chunk) -> Converted:
        converted = record_batch(chunk, self._names, self._needed, self._first)
        self._first = () if converted.column is None else (converted.column,)
        return converted


def _exact_array(pa: Any, values: Sequence[Any]) -> pa.Array | str:
    """An array whose `to_pylist()` is `values`, value for value; else what stands in the way."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if not kinds:
        return pa.nulls(len(values))
    if len(kinds) > 1:
        return "values of several types (" + ", ".join(sorted(k.__name__ for k in kinds)) + ")"
    kind = kinds.pop()
    try:
        if kind in _EXACT:
            return pa.array(values, type=getattr(pa, _EXACT[kind])())
        if kind is dt.datetime:
            return _timestamps(pa, values)
        if kind is Decimal:
            return _decimals(pa, values)
    except OverflowError:
        return "an integer beyond 64 bits"
    except (pa.ArrowException, UnicodeError, ValueError):
        return f"{kind.__name__} values Arrow cannot hold"  # never the error's text: it quotes data
    return f"{kind.__name__} values"


def _timestamps(pa: Any, values: Sequence[dt.datetime | None]) -> pa.Array | str:
    """Microsecond timestamps; aware ones must share one zone and come back at the same offsets."""
    zones = {value.tzinfo for value in values if value is not None}
    if len(zones) > 1:
        return "timestamps in several time zones"
    zone = zones.pop()
    array = pa.array(values, type=pa.timestamp("us", tz=_zone_name(zone)))
    if zone is not None:
        back = array.to_pylist()
        for read, kept in zip(values, back, strict=True):
            if read is not None and (read != kept or read.utcoffset() != kept.utcoffset()):
                return "timestamps whose offsets Arrow would change"
    return array


def _zone_name(zone: dt.tzinfo | None) -> str | None:
    """The zone as Arrow names it: an IANA key where the zone has one, else its fixed offset."""
    if zone is None:
        return None
    key = getattr(zone, "key", None) or getattr(zone, "zone", None)  # zoneinfo, pytz
    if isinstance(key, str):
        return key
    offset = zone.utcoffset(None)
    if offset is None:
        raise ValueError(f"the zone {zone!r} has no fixed offset")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _decimals(pa: Any, values: Sequence[Decimal | None]) -> pa.Array | str:
    """decimal128 when every value has one exponent, so that each prints as it was read."""
    present = [value.as_tuple() for value in values if value is not None]
    exponents = {entry.exponent for entry in present}
    exponent = exponents.pop() if len(exponents) == 1 else None
    if not isinstance(exponent, int) or exponent > 0:
        return "decimals of several scales, or not finite"
    if any(entry.sign and not any(entry.digits) for entry in present):
        return "a negative zero decimal"
    scale = -exponent
    precision = max(scale, *(len(entry.digits) for entry in present))
    if precision > 38:
        return "decimals beyond 38 digits"
    return pa.array(values, type=pa.decimal128(precision, scale))
