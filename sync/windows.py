"""Where an incremental run or a backfill starts and stops, in the cursor column's own type.

Every comparison with the clock happens in UTC; the bound values handed to the warehouse keep the
column's type: a naive timestamp is local wall time in the pipeline's zone, a date is a local date.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from capi_sync.errors import ConfigError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

TIME_KINDS = frozenset({"timestamp", "timestamptz", "date"})
META_MAX_AGE = dt.timedelta(days=7)
META_MAX_AGE_PHYSICAL_STORE = dt.timedelta(days=62)

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)")
_LONG_UNITS = {
    "second": "s", "seconds": "s", "minute": "m", "minutes": "m", "hour": "h", "hours": "h",
    "day": "d", "days": "d", "week": "w", "weeks": "w",
}  # fmt: skip


def parse_duration(text: str) -> dt.timedelta:
    """`90s`, `5m`, `1h30m`, `2d`, `0`; also `15 minutes`, `7 days`."""
    cleaned = text.strip().lower()
    if cleaned == "0":
        return dt.timedelta(0)
    words = re.fullmatch(r"(\d+)\s*([a-z]+)", cleaned)
    if words and words[2] in _LONG_UNITS:
        cleaned = words[1] + _LONG_UNITS[words[2]]
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned.replace(" ", ""):
        msg = f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 7d)"
        raise ValueError(msg)
    return sum((dt.timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), dt.timedelta(0))


def kind_of_type(type_name: str | None) -> str | None:
    """A warehouse column type name -> timestamp, timestamptz, date, integer, number, string or None."""
    if not type_name:
        return None
    name = type_name.strip().upper()
    if any(tz in name for tz in ("WITH TIME ZONE", "TIMESTAMPTZ", "TIMESTAMP_TZ", "TIMESTAMP_LTZ")):
        return "timestamptz"
    if name.startswith(("TIMESTAMP", "DATETIME")):
        return "timestamp"
    if name == "DATE":
        return "date"
    if re.match(r"(U?(BIG|SMALL|TINY|HUGE)?INT|INTEGER|INT\d|SERIAL|BIGSERIAL)", name):
        return "integer"
    if name.startswith(("DECIMAL", "NUMERIC", "NUMBER", "FIXED", "FLOAT", "DOUBLE", "REAL", "BIGNUMERIC")):
        return "number"
    if name.startswith(("VARCHAR", "TEXT", "STRING", "CHAR", "CHARACTER", "UUID")):
        return "string"
    return None


def kind_of_value(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return "timestamp" if value.tzinfo is None else "timestamptz"
    if isinstance(value, dt.date):
        return "date"
    return None


_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float, Decimal),
    "string": (str,),
}


def coerce_cursor(value: Any, kind: str | None, zone: ZoneInfo) -> Any:
    """A stored cursor value as a value of the column's type today.

    A column changed between runs (TIMESTAMPTZ to TIMESTAMP, say) keeps its position: time values
    move through their UTC instant (naive ones read in `zone`). A value that cannot be carried
    over (a number for a text column) raises ValueError saying so.
    """
    if value is None or kind is None:
        return value
    if kind in TIME_KINDS:
        stored = kind_of_value(value)
        if stored == kind:
            return value
        if stored is not None:
            return CursorClock(kind, zone).from_utc(CursorClock(stored, zone).to_utc(value))  # type: ignore[arg-type]
    elif isinstance(value, _KIND_TYPES.get(kind, object)) and not isinstance(value, bool):
        return value
    msg = f"the stored cursor {value!r} ({type(value).__name__}) does not fit the column's type now ({kind})"
    raise ValueError(msg)


@dataclass(frozen=True)
class CursorClock:
    """Converts values of one cursor column to UTC instants and back."""

    kind: str | None
    zone: ZoneInfo

    @property
    def is_time(self) -> bool:
        return self.kind in TIME_KINDS

    def to_utc(self, value: Any) -> dt.datetime | None:
        if isinstance(value, dt.datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=self.zone)
            return aware.astimezone(dt.UTC)
        if isinstance(value, dt.date):
            return dt.datetime.combine(value, dt.time(), self.zone).astimezone(dt.UTC)
        return None

    def from_utc(self, instant: dt.datetime) -> Any:
        """The column-typed value for an instant; for dates, the local day that contains it."""
        if self.kind == "timestamptz":
            return instant.astimezone(dt.UTC)
        local = instant.astimezone(self.zone)
        if self.kind == "date":
            return local.date()
        if self.kind == "timestamp":
            return local.replace(tzinfo=None)
        msg = f"a {self.kind or 'non-time'} cursor has no time bounds"
        raise ValueError(msg)

    def day_start(self, day: dt.date) -> Any:
        """Local midnight of `day` as a bound for this column."""
        if self.kind == "date":
            return day
        return self.from_utc(dt.datetime.combine(day, dt.time(), self.zone))


def meta_max_age(action_source: str | None) -> dt.timedelta:
    """Meta's age limit for a pipeline; per-row action sources may reach the longer window."""
    if action_source in (None, "physical_store"):
        return META_MAX_AGE_PHYSICAL_STORE
    return META_MAX_AGE


@dataclass(frozen=True)
class Bounds:
    """The incremental window of one run, plus how far back the tie keys must be remembered."""

    start: Any
    start_utc: dt.datetime | None  # for rows whose cursor type was unknown up front
    end: Any
    end_utc: dt.datetime | None
    note: str | None = None


def parse_start(text: str, clock: CursorClock, now: dt.datetime) -> Any:
    """`start:` of a first run: `7 days ago`, a date, an ISO timestamp, or a value of the cursor."""
    cleaned = text.strip()
    relative = re.fullmatch(r"(.+?)\s+ago", cleaned, re.IGNORECASE)
    try:
        if relative:
            return ("utc", now - parse_duration(relative[1]))
        if clock.is_time or clock.kind is None:
            try:
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}", cleaned):
                    day = dt.date.fromisoformat(cleaned)
                    return ("utc", dt.datetime.combine(day, dt.time(), clock.zone).astimezone(dt.UTC))
                stamp = dt.datetime.fromisoformat(cleaned)
                return ("utc", clock.to_utc(stamp))
            except ValueError:
                if clock.is_time:
                    raise
        if clock.kind == "integer":
            return ("value", int(cleaned))
        return ("value", cleaned)
    except ValueError:
        msg = f"start: {text!r} is not 'N days ago', a date, or a timestamp"
        raise ValueError(msg) from None


def incremental_bounds(
    *,
    last_value: Any,
    clock: CursorClock,
    now: dt.datetime,
    settle_delay: dt.timedelta,
    lookback: dt.timedelta,
    start: str | None,
    max_age: dt.timedelta,
) -> Bounds:
    """`[start, end]` for an incremental run, both inclusive.

    end: `now - settle_delay`, so rows still being written wait for the next run.
    start: the stored cursor (minus `lookback`), or on a first run `start:` or Meta's age limit;
    never earlier than what Meta still accepts, since older events would only be rejected.
    """
    oldest = now - max_age
    end_utc: dt.datetime | None = now - settle_delay
    note = None
    start_utc: dt.datetime | None = None
    start_value: Any = None
    if last_value is not None:
        start_value = last_value
        last_utc = clock.to_utc(last_value)
        if lookback and last_utc is not None:
            start_utc = max(last_utc - lookback, oldest)
    elif start is not None:
        kind, parsed = parse_start(start, clock, now)
        if kind == "utc":
            start_utc = max(parsed, oldest)
            note = f"first run: reading rows since {start_utc:%Y-%m-%d %H:%M} UTC (start: {start})"
            if parsed < oldest:
                note += f"; rows before {oldest:%Y-%m-%d %H:%M} UTC are past Meta's age limit"
        else:
            start_value = parsed
            note = f"first run: reading rows from {parsed!r} (start: {start})"
    elif clock.kind is None or clock.is_time:
        start_utc = oldest
        note = (
            f"first run: reading rows since {oldest:%Y-%m-%d %H:%M} UTC, all that Meta still accepts"
            " (set start: to choose)"
        )
    else:
        note = "first run: reading every row (the cursor is not a time)"
    if not clock.is_time:
        if clock.kind is not None:  # an integer or string cursor is not bounded by the clock
            start_utc = end_utc = None
        return Bounds(start_value, start_utc, None, end_utc, note)
    if start_utc is not None:
        lower = clock.from_utc(start_utc)
        start_value = lower if last_value is None else min(lower, last_value)
    end_value = clock.from_utc(end_utc) if end_utc is not None else None
    return Bounds(start_value, start_utc, end_value, end_utc, note)


def require_time_kind(pipeline: str, column: str, clock: CursorClock, setting: str) -> None:
    if clock.kind is not None and not clock.is_time:
        problem = f"needs a timestamp or date column, '{column}' is {clock.kind}"
        raise ConfigError([f"pipeline '{pipeline}': {setting}: {problem}"])


def parse_cursor_value(text: str, clock: CursorClock, now: dt.datetime) -> Any:
    """A value typed like the cursor column, for `capi-sync state set`; times may be relative."""
    cleaned = text.strip()
    if clock.is_time or clock.kind is None:
        relative = re.fullmatch(r"(.+?)\s+ago", cleaned, re.IGNORECASE)
        instant: dt.datetime | None
        try:
            if relative:
                instant = now - parse_duration(relative[1])
            elif clock.kind == "date" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", cleaned):
                return dt.date.fromisoformat(cleaned)
            else:
                stamp = dt.datetime.fromisoformat(cleaned)
                instant = clock.to_utc(stamp)
        except ValueError:
            if clock.is_time:
                msg = f"{text!r} is not a timestamp like 2026-11-01T08:00 or a time like '2 days ago'"
                raise ValueError(msg) from None
        else:
            assert instant is not None
            return clock.from_utc(instant) if clock.is_time else instant
    if clock.kind == "integer":
        try:
            return int(cleaned)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if clock.kind == "number":
        try:
            return Decimal(cleaned)
        except ArithmeticError:
            raise ValueError(f"{text!r} is not a number") from None
    return cleaned
