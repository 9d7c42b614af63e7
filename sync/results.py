"""A run's results as one JSON document: what `--results PATH` writes, what the state store keeps
with the run, and what `capi-sync runs --json` returns. `run_results.schema.json` describes it.

Orchestrators read these fields instead of parsing the console: the figures add up
(`rows_read = events_sent + rows_rejected + rows_pending + rows_skipped`), every time carries its
zone, and no string holds a secret.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson

from capi_sync.errors import ResultsNotWritten
from capi_sync.files import write_atomically
from capi_sync.secrets import scrub

if TYPE_CHECKING:
    from collections import Counter
    from pathlib import Path

    from capi_sync.report import MatchQuality, RunReport

SCHEMA_VERSION = 1
SCHEMA_FILE = "run_results.schema.json"


def schema() -> dict[str, Any]:
    """The JSON Schema of a results document (shipped inside the package)."""
    loaded: dict[str, Any] = orjson.loads(files("capi_sync").joinpath(SCHEMA_FILE).read_bytes())
    return loaded


def document(report: RunReport) -> dict[str, Any]:
    """The run's results: every figure the console shows, in a form a program can read."""
    errors = []
    if report.error:
        errors.append({"message": report.error, "fbtrace_ids": list(report.fbtrace_ids)})
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": report.run_uid,
        "pipeline": report.pipeline,
        "kind": report.kind,
        "status": str(report.status),
        "dry_run": report.dry_run,
        "started_at": _time(report.started_at),
        "ended_at": _time(report.ended_at),
        "duration_seconds": round(report.seconds, 3),
        "rows_read": report.rows_read,
        "events_sent": report.events_sent,
        "rows_rejected": report.rows_rejected,
        "rows_pending": report.rows_pending,
        "rows_skipped": report.rows_skipped + report.rows_no_consent,
        "rows_pending_total": report.pending_total,
        "rows_lost": report.rows_lost,
        "rows_retried": report.rows_retried,
        "duplicate_keys": report.duplicate_keys,
        "rows_null_key": report.rows_null_key,
        "rows_null_cursor": report.rows_null_cursor,
        "batches": report.batches,
        "retries": report.retries,
        "retries_by_code": dict(report.retry_codes.most_common()),
        "rejected_by_reason": rejected_by_reason(report.rejected_by_rule),
        "match_quality": match_quality(report.quality),
        "meta_quality": report.meta_quality,
        "cursor_before": json_value(report.cursor_before, report.timezone),
        "cursor_after": json_value(report.cursor_after, report.timezone),
        "notes": [scrub(note) for note in report.notes],
        "errors": errors,
    }


def of_run(row: Any) -> dict[str, Any]:
    """A stored run's results document: the one it wrote, or, for a run still going (or one
    recorded before runs kept their document), the figures its row holds."""
    if row.results:
        stored: dict[str, Any] = orjson.loads(row.results)
        if stored.get("status") == str(row.status):
            return stored
    errors = []
    if row.error:
        errors.append({"message": row.error, "fbtrace_ids": (row.fbtrace_ids or "").split()})
    started, ended = _time(row.started_at), _time(row.ended_at)
    seconds = (row.ended_at - row.started_at).total_seconds() if row.ended_at and row.started_at else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": row.run_uid or f"{row.id:032x}",  # runs recorded before v4: their store id
        "pipeline": row.pipeline,
        "kind": row.kind,
        "status": str(row.status),
        "dry_run": False,
        "started_at": started,
        "ended_at": ended,
        "duration_seconds": round(max(seconds, 0.0), 3),
        "rows_read": row.rows_read,
        "events_sent": row.events_sent,
        "rows_rejected": row.rows_rejected,
        "rows_pending": row.rows_pending,
        "rows_skipped": row.rows_skipped,
        "rows_pending_total": row.rows_pending,
        "rows_lost": row.rows_lost,
        "rows_retried": 0,
        "duplicate_keys": 0,
        "rows_null_key": 0,
        "rows_null_cursor": 0,
        "batches": 0,
        "retries": row.retries,
        "retries_by_code": {},
        "rejected_by_reason": [],
        "match_quality": {"events": 0, "keys": {}, "by_event": {}},
        "meta_quality": None,
        "cursor_before": None,
        "cursor_after": None,
        "notes": ["recorded without its results document: the figures are the run history's"],
        "errors": errors,
    }


def rejected_by_reason(counts: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"field": field, "rule": rule, "rows": rows} for (field, rule), rows in counts.most_common()]


def match_quality(quality: MatchQuality) -> dict[str, Any]:
    """Per customer-information key: events carrying it, their share, values dropped by rule."""
    dropped: dict[str, dict[str, int]] = {}
    for (name, rule), count in quality.dropped.items():
        dropped.setdefault(name.removeprefix("customer_info."), {})[rule] = count
    return {
        "events": quality.events,
        "keys": {
            key: {"events": events, "share": round(share, 6), "dropped": dropped.get(key, {})}
            for key, events, share, _ in quality.rows()
        },
        "by_event": {
            name: {
                "events": events,
                "keys": {
                    key: {"events": carrying, "share": round(share, 6)} for key, carrying, share, _ in rows
                },
            }
            for name, (events, rows) in quality.by_event().items()
        },
    }


def _time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()


def json_value(value: Any, timezone: str = "UTC") -> Any:
    """A cursor value as JSON: timestamps in ISO 8601 with their zone (a naive one is a wall time
    in the pipeline's `timezone`), dates as dates, decimals as text so no digit is lost."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=ZoneInfo(timezone))).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def dumps(results: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    return scrub(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()).encode() + b"\n"


def write(path: Path, results: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Write atomically: a reader polling the file never sees half a document."""
    try:
        write_atomically(path, dumps(results))
    except OSError as exc:
        raise ResultsNotWritten(f"cannot write the run's results to {path}: {exc.strerror or exc}") from exc
