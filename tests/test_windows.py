"""Window arithmetic: durations, first-run start, lookback and watermarks in the cursor's own type."""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest

from capi_sync.connectors.retry import RetryPolicy, call_with_retry
from capi_sync.errors import MetaRetryableError
from capi_sync.windows import (
    CursorClock,
    incremental_bounds,
    kind_of_type,
    parse_cursor_value,
    parse_duration,
)

PARIS = ZoneInfo("Europe/Paris")
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", dt.timedelta(0)), ("90s", dt.timedelta(seconds=90)), ("5m", dt.timedelta(minutes=5)),
     ("1h30m", dt.timedelta(minutes=90)), ("7 days", dt.timedelta(days=7)), ("2w", dt.timedelta(weeks=2))],
)  # fmt: skip
def test_durations(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5 parsecs", "m5", "-5m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [("TIMESTAMP", "timestamp"), ("timestamp without time zone", "timestamp"), ("DATETIME", "timestamp"),
     ("TIMESTAMP WITH TIME ZONE", "timestamptz"), ("timestamptz", "timestamptz"), ("TIMESTAMP_LTZ", "timestamptz"),
     ("TIMESTAMP_NS", "timestamp"), ("DATE", "date"), ("BIGINT", "integer"), ("int4", "integer"),
     ("NUMERIC(10,2)", "number"), ("VARCHAR", "string"), ("text", "string"), ("STRUCT(a INTEGER)", None)],
)  # fmt: skip
def test_column_kinds_from_warehouse_type_names(type_name: str, kind: str | None) -> None:
    assert kind_of_type(type_name) == kind


def bounds(clock: CursorClock, last: object = None, **kw: object) -> object:
    args = {
        "settle_delay": dt.timedelta(minutes=5),
        "lookback": dt.timedelta(0),
        "start": None,
        "max_age": WEEK,
    }
    return incremental_bounds(last_value=last, clock=clock, now=NOW, **{**args, **kw})  # type: ignore[arg-type]


def test_first_run_starts_at_metas_limit_and_ends_at_the_settle_watermark_in_local_wall_time() -> None:
    result = bounds(CursorClock("timestamp", PARIS))
    assert result.start == dt.datetime(2026, 11, 16, 13, 0)  # 12:00 UTC = 13:00 CET
    assert result.end == dt.datetime(2026, 11, 23, 12, 55)
    assert "all that Meta still accepts" in result.note


def test_lookback_is_measured_in_real_time_across_the_fall_back_hour() -> None:
    """03:30 CET on 2026-10-25 is 02:30 UTC; two real hours earlier is 02:30 CEST, not 01:30."""
    clock = CursorClock("timestamp", PARIS)
    result = bounds(
        clock, dt.datetime(2026, 10, 25, 3, 30), lookback=dt.timedelta(hours=2), max_age=dt.timedelta(days=62)
    )
    assert result.start == dt.datetime(2026, 10, 25, 2, 30)


def test_lookback_never_reaches_past_metas_limit_but_a_paused_cursor_is_kept() -> None:
    clock = CursorClock("timestamptz", PARIS)
    recent = NOW - dt.timedelta(days=6, hours=23)
    assert bounds(clock, recent, lookback=dt.timedelta(days=2)).start == NOW - WEEK
    paused = NOW - dt.timedelta(days=10)
    assert bounds(clock, paused, lookback=dt.timedelta(hours=1)).start == paused


def test_integer_cursors_have_no_clock_bounds_and_start_from_a_value() -> None:
    clock = CursorClock("integer", PARIS)
    assert (bounds(clock).start, bounds(clock).end) == (None, None)
    assert bounds(clock, start="41000").start == 41000
    assert bounds(clock, 41999).start == 41999


def test_relative_and_absolute_start_values() -> None:
    clock = CursorClock("date", PARIS)
    assert bounds(clock, start="2 days ago").start == dt.date(2026, 11, 21)
    assert bounds(clock, start="2026-11-20").start == dt.date(2026, 11, 20)
    assert bounds(clock, start="2026-01-01").start == dt.date(2026, 11, 16), "capped at Meta's limit"


def test_state_set_values_follow_the_column_type() -> None:
    assert parse_cursor_value("2026-11-01T08:00", CursorClock("timestamp", PARIS), NOW) == dt.datetime(
        2026, 11, 1, 8
    )
    aware = parse_cursor_value("2026-11-01T08:00", CursorClock("timestamptz", PARIS), NOW)
    assert aware == dt.datetime(2026, 11, 1, 7, tzinfo=dt.UTC)
    assert parse_cursor_value("1 day ago", CursorClock("date", PARIS), NOW) == dt.date(2026, 11, 22)
    assert parse_cursor_value("42", CursorClock("integer", PARIS), NOW) == 42
    with pytest.raises(ValueError, match="not an integer"):
        parse_cursor_value("yesterday", CursorClock("integer", PARIS), NOW)


def test_a_stop_ends_the_backoff_at_once() -> None:
    stop = threading.Event()
    calls = 0

    def unavailable() -> None:
        nonlocal calls
        calls += 1
        stop.set()
        raise MetaRetryableError("throttled")

    with pytest.raises(MetaRetryableError):
        call_with_retry(unavailable, RetryPolicy(base_delay=30, max_elapsed=600), stop=stop)
    assert calls == 1
