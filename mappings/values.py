"""Coercion of warehouse values into the JSON types the Conversions API wants.

Warehouses hand back datetimes, dates, Decimals, epoch numbers in seconds or milliseconds, JSON
strings and arrays; Meta wants integer Unix seconds, floats, ints and strings.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import orjson

from capi_sync.errors import InvalidValue
from capi_sync.mappings.normalize import decode_utf8

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

# Epoch values above this are milliseconds: as seconds they would be past the year 5000.
_MILLIS_THRESHOLD: Final = 100_000_000_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH: Final = dt.datetime(1970, 1, 1)


def unix_seconds(value: Any, zone: ZoneInfo) -> int:
    """Integer Unix seconds (UTC) from a timestamp, date, epoch s/ms or ISO-8601 string.

    Naive timestamps and dates are read in the pipeline's `timezone`.
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return int((value - _EPOCH).total_seconds())  # what `timestamp()` computes, in C
        if zone.key == "UTC":  # the common case: no zone lookup, five times faster
            return int((value - _NAIVE_EPOCH).total_seconds())
        return int(value.replace(tzinfo=zone).timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime.combine(value, dt.time(), zone).timestamp())
    if isinstance(value, bool):
        raise InvalidValue("invalid_timestamp")
    if isinstance(value, int | float | Decimal):
        try:
            number = float(value)
        except (OverflowError, ValueError):  # beyond a double; Decimal's signalling NaN
            raise InvalidValue("invalid_timestamp") from None
        if not math.isfinite(number):
            raise InvalidValue("invalid_timestamp")
        return int(number / 1000 if abs(number) >= _MILLIS_THRESHOLD else number)
    text = to_text(value)
    if not text:
        raise InvalidValue("invalid_timestamp")
    if text.isascii() and text.lstrip("-").replace(".", "", 1).isdigit():
        return unix_seconds(float(text), zone)
    try:
        return unix_seconds(dt.datetime.fromisoformat(text), zone)
    except (ValueError, OverflowError):
        raise InvalidValue("invalid_timestamp") from None


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidValue("not_a_number")
    try:
        number = float(to_text(value) if isinstance(value, bytes | bytearray) else value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidValue("not_a_number") from None
    if not math.isfinite(number):
        raise InvalidValue("not_a_number")
    return number


def to_int(value: Any) -> int:
    """An integer JSON can carry (64 bits): 2.0 and "3" are integers, 1e30 is out of range."""
    if value.__class__ is int:
        number: float | int = value
    else:
        number = to_float(value)
        if not number.is_integer():
            raise InvalidValue("not_an_integer")
        number = int(number)
    if not _INT64_MIN <= number <= _UINT64_MAX:
        raise InvalidValue("integer_out_of_range")
    return int(number)


def to_text(value: Any) -> str:
    """A value as text; BLOB bytes are UTF-8 text or refused (`invalid_utf8`), never their repr."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return decode_utf8(value).strip()
    return str(value).strip()


def to_list(value: Any) -> list[Any]:
    """Array columns arrive as lists; JSON columns and strings as text, parsed here."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, bytes | bytearray | memoryview):
        value = decode_utf8(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise InvalidValue("invalid_json") from None
            if isinstance(parsed, list):
                return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    return [value]


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = to_text(value).lower()
    if text in ("1", "true", "t", "yes", "y"):
        return True
    if text in ("0", "false", "f", "no", "n"):
        return False
    raise InvalidValue("not_a_boolean")


def to_json(value: Any) -> Any:
    """Make a user-defined property JSON-safe, whatever the warehouse returned.

    Decimals become floats and dates ISO strings; NaN and infinities become null (JSON has
    neither); integers beyond 64 bits and types JSON lacks become their text, so serializing
    the request can never fail on a value.
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)
    if isinstance(value, float | Decimal):
        number = float(value) if not isinstance(value, Decimal) or not value.is_snan() else math.nan
        return number if math.isfinite(number) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def redact(value: Any) -> str:
    """Enough of a PII value to recognise it, never enough to leak it: `j***@example.com`."""
    text = str(value).strip()
    if not text:
        return "''"
    local, at, domain = text.partition("@")
    if at:  # the domain helps to see why (a typo, a test domain); a long one is cut
        return f"{local[:1]}***@{domain if len(domain) <= 64 else domain[:61] + '...'}"
    if len(text) <= 4:
        return "***"
    return f"{text[:1]}***{text[-1:]}"
