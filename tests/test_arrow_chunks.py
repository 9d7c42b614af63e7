"""Rows of warehouses without an Arrow reader become record batches chunk by chunk
(`capi_sync.connectors.arrow.record_batch`): only where Arrow hands every value back exactly, so the
native core and the Python reference read the same values."""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capi_sync.connectors.arrow import ChunkConverter, record_batch

ZONES = [dt.UTC, dt.timezone(dt.timedelta(hours=-3, minutes=-30)), zoneinfo.ZoneInfo("Europe/Paris")]

VALUES = st.one_of(
    st.none(),
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from(ZONES)),
    st.decimals(places=2, allow_nan=False, allow_infinity=False),
    st.decimals(),
    st.binary(max_size=3),
    st.uuids(),
)


def same(read: Any, kept: Any) -> bool:
    """Equal as the mapper sees a value: type, value, printed form and (for times) offset."""
    if type(read) is not type(kept):
        return False
    if isinstance(read, float) and math.isnan(read):
        return math.isnan(kept)
    if isinstance(read, dt.datetime) and read.utcoffset() != kept.utcoffset():
        return False
    return bool(read == kept) and str(read) == str(kept)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=6), st.data())
def test_a_converted_chunk_hands_back_every_needed_value_exactly(rows: list[list[Any]], data: Any) -> None:
    # Columns of one kind, as a warehouse returns them, and mixed ones.
    columns = [[*column] for column in zip(*rows, strict=True)]
    kind = data.draw(VALUES.filter(lambda v: v is not None))
    columns[0] = [data.draw(st.none()) if i % 2 else _like(kind, data) for i in range(len(rows))]
    chunk = [tuple(values) for values in zip(*columns, strict=True)]
    converted = record_batch(chunk, ["a", "b", "c"], {0, 1})
    if converted.batch is None:
        assert str(converted.reason).startswith("column '")
        assert converted.rows is chunk
        return
    assert converted.batch.num_rows == len(chunk)
    for index in (0, 1):
        kept = converted.batch.column(index).to_pylist()
        assert all(same(a, b) for a, b in zip(columns[index], kept, strict=True)), (columns[index], kept)
    assert converted.batch.column(2).null_count == len(chunk), "a column the mapping does not read"


def _like(value: Any, data: Any) -> Any:
    """Another value of the same type as `value` (a warehouse column holds one type)."""
    strategies = {
        str: st.text(), bool: st.booleans(), int: st.integers(-(2**63), 2**63 - 1), float: st.floats(),
        dt.date: st.dates(), Decimal: st.decimals(places=2, allow_nan=False, allow_infinity=False),
    }  # fmt: skip
    if isinstance(value, dt.datetime):
        zone = value.tzinfo
        return data.draw(st.datetimes(timezones=st.just(zone))) if zone else data.draw(st.datetimes())
    strategy = strategies.get(type(value))
    return data.draw(strategy) if strategy is not None else value


def test_what_stays_rows_says_which_column_and_why() -> None:
    cases = {
        b"\x00": "bytes values",
        2**64: "an integer beyond 64 bits",
        Decimal("NaN"): "decimals of several scales, or not finite",
        "\ud800": "str values Arrow cannot hold",
    }
    for value, reason in cases.items():
        converted = record_batch([(1, value)], ["id", "email"], {0, 1})
        assert converted.batch is None
        assert f"column 'email' holds {reason}" in str(converted.reason)
        assert "\ud800" not in converted.reason, "a reason never quotes the data"
    mixed = record_batch([(1,), (1.5,)], ["amount"], {0})
    assert mixed.reason == "column 'amount' holds values of several types (float, int)"
    scales = record_batch([(Decimal("1.5"),), (Decimal("1.25"),)], ["amount"], {0})
    assert scales.batch is None, "1.5 would come back as 1.50"
    zones = record_batch(
        [(dt.datetime(2026, 1, 1, tzinfo=dt.UTC),), (dt.datetime(2026, 1, 1, tzinfo=ZONES[1]),)], ["t"], {0}
    )
    assert zones.reason == "column 't' holds timestamps in several time zones"
    assert record_batch([(b"\x00",)], ["blob"], set()).batch is not None, "unread columns never matter"


def test_a_converter_tries_the_column_that_kept_the_last_chunk_first() -> None:
    convert = ChunkConverter(["id", "note", "blob"], {0, 1, 2})
    first = convert([(1, "a", b"x"), (2, "b", b"y")])
    assert (first.column, first.reason) == (2, "column 'blob' holds bytes values")
    second = convert([(3, 3.5, b"z"), (4, "c", b"w")])  # both columns stand in the way now
    assert (second.column, second.reason) == (2, "column 'blob' holds bytes values"), "tried first"
    third = convert([(5, "d", None)])
    assert third.batch is not None
    assert third.batch.column(1).to_pylist() == ["d"]
    assert convert([(6, 1, None), (7, "e", None)]).column == 1
