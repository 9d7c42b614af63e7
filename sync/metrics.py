"""Prometheus metrics of runs, with prometheus-client: served by `schedule --metrics-port`, written
for node_exporter's textfile collector (`--metrics-textfile`) or pushed to a Pushgateway.

Labels stay low-cardinality: the pipeline, a rejection's rule (not the row or the value), a
retried error's code. Under `schedule` the counters grow for the life of the process; for a
one-shot command (textfile, Pushgateway) they count that command's runs, and the gauges carry
the facts an alert needs across runs (last success, cursor lag, rows pending).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server
from prometheus_client.exposition import generate_latest

from capi_sync.errors import MetricsNotExported
from capi_sync.files import write_atomically
from capi_sync.secrets import scrub
from capi_sync.state import RunStatus

if TYPE_CHECKING:
    from pathlib import Path

    from capi_sync.report import RunReport


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_sent = Counter("capi_sync_events_sent", "Events Meta accepted.", ["pipeline"], registry=r)
        self.rows_read = Counter("capi_sync_rows_read", "Rows read and settled.", ["pipeline"], registry=r)
        self.rows_rejected = Counter(
            "capi_sync_rows_rejected",
            "Rows kept back with a reason, by the rule that rejected them.",
            ["pipeline", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "capi_sync_retries", "Requests retried, by Meta's error code.", ["pipeline", "code"], registry=r
        )
        self.runs = Counter("capi_sync_runs", "Runs by final status.", ["pipeline", "status"], registry=r)
        self.run_duration = Gauge(
            "capi_sync_run_duration_seconds", "Duration of the last run.", ["pipeline"], registry=r
        )
        self.last_success = Gauge(
            "capi_sync_last_success_timestamp_seconds",
            "When the last successful run ended (Unix time).",
            ["pipeline"],
            registry=r,
        )
        self.cursor_lag = Gauge(
            "capi_sync_cursor_lag_seconds",
            "How far the cursor trails now, after the last run (timestamp cursors).",
            ["pipeline"],
            registry=r,
        )
        self.rows_pending = Gauge(
            "capi_sync_rows_pending",
            "Rows Meta could not take, kept and retried by every run.",
            ["pipeline"],
            registry=r,
        )

    def observe(self, report: RunReport, zone: dt.tzinfo | None = None) -> None:
        """Count one finished run (a dry run is not a delivery and is not counted); `zone` is the
        pipeline's, in which a naive timestamp cursor is a wall time."""
        if report.dry_run:
            return
        pipeline = report.pipeline
        self.events_sent.labels(pipeline).inc(report.events_sent)
        self.rows_read.labels(pipeline).inc(report.rows_read)
        by_rule: dict[str, int] = {}
        for (_field, rule), count in report.rejected_by_rule.items():
            by_rule[rule] = by_rule.get(rule, 0) + count
        for rule, count in by_rule.items():
            self.rows_rejected.labels(pipeline, rule).inc(count)
        for code, count in report.retry_codes.items():
            self.retries.labels(pipeline, code).inc(count)
        self.runs.labels(pipeline, str(report.status)).inc()
        self.run_duration.labels(pipeline).set(report.seconds)
        if report.status == RunStatus.SUCCEEDED and report.ended_at is not None:
            self.last_success.labels(pipeline).set(report.ended_at.timestamp())
        self.rows_pending.labels(pipeline).set(report.pending_total)
        if (lag := cursor_lag_seconds(report.cursor_after, report.ended_at, zone)) is not None:
            self.cursor_lag.labels(pipeline).set(lag)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        """Atomically, as node_exporter's textfile collector needs (it may read at any moment)."""
        try:
            write_atomically(path, self.text())
        except OSError as exc:
            raise MetricsNotExported(f"cannot write metrics to {path}: {exc.strerror or exc}") from exc

    def push(self, gateway: str, job: str = "capi_sync") -> None:
        try:
            push_to_gateway(gateway, job=job, registry=self.registry, timeout=10)
        except OSError as exc:
            raise MetricsNotExported(f"cannot push metrics to {scrub(gateway)}: {scrub(str(exc))}") from exc

    def serve(self, port: int, address: str = "0.0.0.0") -> int:  # noqa: S104 (scraped from outside)
        """Serve `/metrics` on a background thread for the life of the process; returns the port
        (the one the system chose, for port 0)."""
        try:
            server, _thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise MetricsNotExported(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from exc
        return int(server.server_port)


def cursor_lag_seconds(cursor: Any, now: dt.datetime | None, zone: dt.tzinfo | None = None) -> float | None:
    """Seconds between a timestamp cursor and `now`; a naive cursor is a wall time in `zone`."""
    if not isinstance(cursor, dt.datetime) or now is None:
        return None
    aware = cursor if cursor.tzinfo is not None else cursor.replace(tzinfo=zone or dt.UTC)
    return max((now - aware).total_seconds(), 0.0)
