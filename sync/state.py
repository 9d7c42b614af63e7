"""Durable state over SQLAlchemy: cursors, run history, rejected rows and per-pipeline locks.

SQLite beside the pipelines file by default; PostgreSQL for a shared deployment. A batch's cursor
advance, its rejected rows and the run's counters are written in one transaction, after Meta
accepted the batch and never before.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import orjson
import sqlalchemy as sa

from capi_sync.errors import PipelineLocked, StateError, StateSetupError
from capi_sync.secrets import scrub, scrub_any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

SCHEMA_VERSION = 4
P = ParamSpec("P")
R = TypeVar("R")
LOCK_STALE_AFTER = dt.timedelta(minutes=10)
# The first reason of a pending row that grew too old for Meta before it could be delivered.
AGED_OUT_REASON = {
    "field": "event",
    "rule": "aged_out",
    "detail": "Meta could not take it while it was young enough; it aged out and was never delivered",
}
HEARTBEAT_EVERY = dt.timedelta(seconds=30)

metadata = sa.MetaData()
cursors = sa.Table(
    "capi_cursors", metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip
cursor_keys = sa.Table(  # rows already handled at exactly the cursor value: ties are not re-sent
    "capi_cursor_keys", metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("row_key", sa.String(500), primary_key=True),
    sa.Column("cursor_value", sa.Text),  # the row's cursor value, same kind as the cursor (v2)
)  # fmt: skip
runs = sa.Table(
    "capi_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("pipeline", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("rows_read", sa.Integer, nullable=False, default=0),
    sa.Column("events_sent", sa.Integer, nullable=False, default=0),
    sa.Column("rows_rejected", sa.Integer, nullable=False, default=0),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("rows_pending", sa.Integer, nullable=False, default=0),  # v3: Meta could not take them
    sa.Column("rows_skipped", sa.Integer, nullable=False, default=0),  # v3: already handled, consent
    sa.Column("rows_lost", sa.Integer, nullable=False, default=0),  # v3: pending rows that aged out
    sa.Column("error", sa.Text),
    sa.Column("fbtrace_ids", sa.Text),
    sa.Column("owner", sa.String(200)),  # v3: the process running it, to tell a run whose process died
    sa.Column("run_uid", sa.String(32)),  # v4: the run's id in logs and results
    sa.Column("results", sa.Text),  # v4: the run's results document (JSON), as --results writes it
)  # fmt: skip
rejected = sa.Table(
    "capi_rejected", metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("row_key", sa.String(500), primary_key=True),
    sa.Column("reasons", sa.Text, nullable=False),  # JSON list of {field, rule, value, detail}
    sa.Column("transient", sa.Boolean, nullable=False, default=False),  # retried automatically
    sa.Column("key_values", sa.Text),  # JSON list of the primary key's typed values, to re-read it
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.Integer),
)  # fmt: skip
locks = sa.Table(
    "capi_locks", metadata,
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)  # fmt: skip
alerts_firing = sa.Table(  # v4: an alert's condition that fired and has not cleared: no second alert
    "capi_alerts_firing", metadata,
    sa.Column("alert", sa.String(200), primary_key=True),
    sa.Column("pipeline", sa.String(200), primary_key=True),
    sa.Column("trigger", sa.String(40), primary_key=True),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_uid", sa.String(32)),
)  # fmt: skip
schema_info = sa.Table(
    "capi_schema", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)  # fmt: skip


# The statements every committed batch runs, built once: building and cache-keying them per batch
# was most of the state store's cost in a profile of a 200,000-row run.
_UPDATE_CURSOR = (
    cursors.update()
    .where(cursors.c.pipeline == sa.bindparam("b_pipeline"))
    .values(kind=sa.bindparam("b_kind"), value=sa.bindparam("b_value"), updated_at=sa.bindparam("b_at"))
)
_INSERT_CURSOR = cursors.insert()
_FORGET_TIE_KEYS = cursor_keys.delete().where(cursor_keys.c.pipeline == sa.bindparam("b_pipeline"))
_INSERT_TIE_KEYS = cursor_keys.insert()
_ANY_REJECTION = sa.select(sa.literal(1)).where(rejected.c.pipeline == sa.bindparam("b_pipeline")).limit(1)
_COUNT_BATCH = (
    runs.update()
    .where(runs.c.id == sa.bindparam("b_run"))
    .values(
        rows_read=runs.c.rows_read + sa.bindparam("b_read", type_=sa.Integer),
        events_sent=runs.c.events_sent + sa.bindparam("b_sent", type_=sa.Integer),
        rows_rejected=runs.c.rows_rejected + sa.bindparam("b_rejected", type_=sa.Integer),
        rows_pending=runs.c.rows_pending + sa.bindparam("b_pending", type_=sa.Integer),
        retries=runs.c.retries + sa.bindparam("b_retries", type_=sa.Integer),
    )
)
_HEARTBEAT = (
    locks.update()
    .where(locks.c.pipeline == sa.bindparam("b_pipeline"), locks.c.owner == sa.bindparam("b_owner"))
    .values(heartbeat_at=sa.bindparam("b_at"))
)


class RunStatus(StrEnum):
    RUNNING = "running"  # in progress, or the process died (no heartbeat: see `runs`)
    SUCCEEDED = "succeeded"  # every row read was sent or rejected with a reason
    FAILED = "failed"  # stopped by an error; the cursor stands after the last accepted batch
    INTERRUPTED = "interrupted"  # stopped by SIGINT/SIGTERM after the batches in flight


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# Cursor values keep their type so they bind back to the query exactly as the warehouse gave them.
def encode_value(value: Any) -> tuple[str, str]:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return "timestamp", value.isoformat()
        return "timestamptz", value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return "date", value.isoformat()
    if isinstance(value, bool):
        msg = "a boolean column cannot be a cursor"
        raise StateError(msg)
    if isinstance(value, int):
        return "int", str(value)
    if isinstance(value, float):
        return "float", repr(value)
    if isinstance(value, Decimal):
        return "decimal", str(value)
    return "str", str(value)


def decode_value(kind: str, text: str) -> Any:
    decoders: dict[str, Callable[[str], Any]] = {
        "timestamp": dt.datetime.fromisoformat,
        "timestamptz": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "int": int,
        "float": float,
        "decimal": Decimal,
        "str": str,
    }
    return decoders[kind](text)


@dataclass(frozen=True, slots=True)
class CursorState:
    """The last cursor value delivered and the rows already handled near it.

    `settled` maps row key -> cursor value for every row handled at a cursor value at or after the
    floor (the value itself, or `lookback` earlier), so rows re-read at those values are not re-sent.
    """

    value: Any = None
    settled: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.settled)

    def advance(self, value: Any, handled: Iterable[tuple[str, Any]], floor: Any = None) -> CursorState:
        """Pure and monotonic: a smaller value means the source broke its ORDER BY."""
        if self.value is not None and value < self.value:
            msg = f"cursor went backwards ({value!r} < {self.value!r}): is the cursor column stable?"
            raise StateError(msg)
        floor = value if floor is None else floor
        settled = {key: at for key, at in self.settled.items() if at >= floor}
        settled.update((key, at) for key, at in handled if at >= floor)
        return CursorState(value, settled)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    row_key: str
    reasons: list[dict[str, Any]]
    key_values: tuple[Any, ...] | None = None
    transient: bool = False  # Meta was unreachable or throttling: worth another try later


@dataclass
class BatchCommit:
    """What one accepted batch changes, written atomically."""

    run_id: int
    cursor: CursorState | None = None  # None: pipeline without a cursor column
    rows_read: int = 0
    events_sent: int = 0
    rejections: list[RejectedRow] = field(default_factory=list)
    delivered_keys: Sequence[str] = ()
    retries: int = 0
    cursor_name: str | None = None  # where the cursor and lock live; a backfill keeps its own


def default_state_url(config_path: Path | None) -> str:
    """`CAPI_SYNC_STATE`, else `.capi-sync/state.db` beside the pipelines file."""
    if url := os.environ.get("CAPI_SYNC_STATE"):
        return url
    folder = (config_path.resolve().parent if config_path else Path.cwd()) / ".capi-sync"
    return f"sqlite:///{folder / 'state.db'}"


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """The one boundary where the store's failures (a full disk, a lost server, a read-only file)
    become a `StateError` that says where and what to do, instead of a driver's traceback."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except StateError:
            raise
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            store = args[0]
            where = getattr(store, "label", "the state store")
            reason = scrub(str(getattr(exc, "orig", None) or exc).splitlines()[0])
            raise StateError(
                f"{where}: {reason}; check that it is reachable and writable (free disk space,"
                " permissions), or choose another with --state / CAPI_SYNC_STATE"
            ) from None

    return wrapper


class StateStore:
    """Usage: `with StateStore(url) as store: store.load_cursor("purchases")`.

    `url` is a SQLAlchemy URL, or a plain file path for SQLite (`--state runs.db`). Every public
    method raises `StateError`, never a driver's exception.
    """

    def __init__(self, url: str) -> None:
        if "://" not in url:
            url = f"sqlite:///{Path(url).expanduser().resolve()}"
        self.label = f"state store {self._safe(url)}"
        self.owner = f"{_LIVENESS_SCOPE}/{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        try:
            self._open(url)
        except StateError as exc:
            raise StateSetupError(str(exc)) from None

    @_translated
    def _open(self, url: str) -> None:
        if url.startswith("sqlite:///") and ":memory:" not in url:
            folder = Path(url.removeprefix("sqlite:///")).parent
            if folder.exists() and not folder.is_dir():
                msg = (
                    f"{self.label}: {folder} is a file, not a folder; move it away or choose another --state"
                )
                raise StateError(msg)
            folder.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        try:
            self.engine = sa.create_engine(url, connect_args=connect_args)
        except ModuleNotFoundError as exc:
            raise StateError(f"{self.label}: driver {exc.name} is not installed") from exc
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    @staticmethod
    def _safe(url: str) -> str:
        try:
            return sa.engine.make_url(url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            msg = f"--state {scrub(url)!r} is neither a SQLAlchemy URL nor a file path"
            raise StateSetupError(msg) from None

    def _migrate(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            version = conn.execute(sa.select(schema_info.c.version)).scalar()
            if version is None:
                conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
                return
            if version > SCHEMA_VERSION:
                msg = f"state store schema v{version} is newer than this capi-sync (v{SCHEMA_VERSION})"
                raise StateError(msg)
            if version < 2:  # v2: tie keys remember their cursor value, for `lookback`
                conn.execute(sa.text("alter table capi_cursor_keys add column cursor_value text"))
            if version < 3:  # v3: runs count pending, skipped and lost rows, so the figures add up
                for column in ("rows_pending", "rows_skipped", "rows_lost"):
                    conn.execute(
                        sa.text(f"alter table capi_runs add column {column} integer not null default 0")
                    )
                conn.execute(sa.text("alter table capi_runs add column owner varchar(200)"))
            if version < 4:  # v4: runs keep their id for logs and their results document
                conn.execute(sa.text("alter table capi_runs add column run_uid varchar(32)"))
                conn.execute(sa.text("alter table capi_runs add column results text"))
            if version < SCHEMA_VERSION:
                conn.execute(schema_info.update().values(version=SCHEMA_VERSION))

    # -- cursor ---------------------------------------------------------------------------------

    @_translated
    def load_cursor(self, pipeline: str) -> CursorState:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(cursors).where(cursors.c.pipeline == pipeline)).first()
            if row is None:
                return CursorState()
            value = decode_value(row.kind, row.value)
            keys = conn.execute(
                sa.select(cursor_keys.c.row_key, cursor_keys.c.cursor_value).where(
                    cursor_keys.c.pipeline == pipeline
                )
            )
            settled = {key: value if text is None else decode_value(row.kind, text) for key, text in keys}
            return CursorState(value, settled)

    @_translated
    def set_cursor(self, pipeline: str, value: Any) -> None:
        with self.engine.begin() as conn:
            self._write_cursor(conn, pipeline, CursorState(value), previous=None)

    @_translated
    def reset(self, pipeline: str) -> None:
        """Forget the cursor; the next run starts from the beginning (Meta deduplicates re-sends)."""
        with self.engine.begin() as conn:
            conn.execute(cursors.delete().where(cursors.c.pipeline == pipeline))
            conn.execute(cursor_keys.delete().where(cursor_keys.c.pipeline == pipeline))

    @_translated
    def list_cursors(self, prefix: str) -> list[tuple[str, CursorState]]:
        """Cursors whose name starts with `prefix` (backfill progress is kept as such cursors)."""
        with self.engine.connect() as conn:
            names = conn.execute(
                sa.select(cursors.c.pipeline).where(cursors.c.pipeline.startswith(prefix, autoescape=True))
            ).scalars()
            found = list(names)
        return [(name, self.load_cursor(name)) for name in found]

    def _write_cursor(
        self, conn: sa.Connection, pipeline: str, state: CursorState, previous: CursorState | None
    ) -> None:
        kind, text = encode_value(state.value)
        now = utcnow()
        changed = conn.execute(
            _UPDATE_CURSOR, {"b_pipeline": pipeline, "b_kind": kind, "b_value": text, "b_at": now}
        )
        if changed.rowcount == 0:
            conn.execute(
                _INSERT_CURSOR, {"pipeline": pipeline, "kind": kind, "value": text, "updated_at": now}
            )
        before = previous.settled if previous is not None else {}
        if before and not before.keys() & state.settled.keys():
            before = {}
        if not before:
            conn.execute(_FORGET_TIE_KEYS, {"b_pipeline": pipeline})
        else:
            gone = [key for key in before if key not in state.settled]
            for start in range(0, len(gone), 500):
                conn.execute(
                    cursor_keys.delete().where(
                        cursor_keys.c.pipeline == pipeline,
                        cursor_keys.c.row_key.in_(gone[start : start + 500]),
                    )
                )
        new_keys = [key for key in state.settled if key not in before]
        if new_keys:
            conn.execute(
                _INSERT_TIE_KEYS,
                [
                    {
                        "pipeline": pipeline,
                        "row_key": key,
                        "cursor_value": encode_value(state.settled[key])[1],
                    }
                    for key in new_keys
                ],
            )

    # -- runs -----------------------------------------------------------------------------------

    @_translated
    def start_run(self, pipeline: str, kind: str = "run", *, run_uid: str | None = None) -> int:
        self.settle_abandoned_runs(pipeline)
        with self.engine.begin() as conn:
            result = conn.execute(runs.insert().values(
                pipeline=pipeline, kind=kind, status=RunStatus.RUNNING, started_at=utcnow(), owner=self.owner,
                run_uid=run_uid,
                rows_read=0, events_sent=0, rows_rejected=0, retries=0, rows_pending=0, rows_skipped=0,
                rows_lost=0,
            ))  # fmt: skip
            inserted = result.inserted_primary_key
            assert inserted is not None
            return int(inserted[0])

    @_translated
    def commit_batch(self, pipeline: str, commit: BatchCommit, previous: CursorState | None) -> None:
        """One transaction: cursor, tie keys, rejected rows, run counters."""
        now = utcnow()
        cursor_name = commit.cursor_name or pipeline
        with self.engine.begin() as conn:
            if commit.cursor is not None and commit.cursor.value is not None:
                self._write_cursor(conn, cursor_name, commit.cursor, previous)
            for row in commit.rejections:
                self._upsert_rejection(conn, pipeline, row, run_id=commit.run_id, now=now)
            if commit.delivered_keys and self._has_rejections(conn, pipeline):
                conn.execute(rejected.delete().where(
                    rejected.c.pipeline == pipeline,
                    rejected.c.row_key.in_(list(commit.delivered_keys)),
                ))  # fmt: skip
            pending = sum(r.transient for r in commit.rejections)
            counts = {
                "b_run": commit.run_id,
                "b_read": commit.rows_read,
                "b_sent": commit.events_sent,
                "b_rejected": len(commit.rejections) - pending,
                "b_pending": pending,
                "b_retries": commit.retries,
            }
            conn.execute(_COUNT_BATCH, counts)
            conn.execute(_HEARTBEAT, {"b_pipeline": cursor_name, "b_owner": self.owner, "b_at": now})

    @staticmethod
    def _has_rejections(conn: sa.Connection, pipeline: str) -> bool:
        return conn.execute(_ANY_REJECTION, {"b_pipeline": pipeline}).first() is not None

    @staticmethod
    def _upsert_rejection(
        conn: sa.Connection, pipeline: str, row: RejectedRow, *, run_id: int, now: dt.datetime
    ) -> None:
        values = {
            "reasons": orjson.dumps(scrub_any(row.reasons)).decode(),
            "transient": row.transient,
            "key_values": orjson.dumps(row.key_values, default=str).decode() if row.key_values else None,
            "last_seen": now,
            "run_id": run_id,
        }
        updated = conn.execute(
            rejected.update()
            .where(rejected.c.pipeline == pipeline, rejected.c.row_key == row.row_key)
            .values(attempts=rejected.c.attempts + 1, **values)
        )
        if updated.rowcount == 0:
            conn.execute(
                rejected.insert().values(
                    pipeline=pipeline, row_key=row.row_key, attempts=1, first_seen=now, **values
                )
            )

    @_translated
    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        error: str | None = None,
        fbtrace_ids: Sequence[str] = (),
        counts: Mapping[str, int] | None = None,
        *,
        results: str | None = None,
    ) -> None:
        """The run's end; `counts` (rows_read, rows_skipped, ...) are its final figures, `results`
        its results document."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(
                status=status, ended_at=utcnow(), error=scrub(error) if error else None,
                fbtrace_ids=" ".join(fbtrace_ids) or None, results=scrub(results) if results else None,
                **(counts or {}),
            ))  # fmt: skip

    @_translated
    def count_pending(self, pipeline: str) -> int:
        """Rows Meta could not take, kept and retried by every run until delivered or aged out."""
        query = sa.select(sa.func.count()).where(rejected.c.pipeline == pipeline, rejected.c.transient)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    @_translated
    def expire_pending(self, pipeline: str, *, older_than: dt.timedelta) -> int:
        """Pending rows first kept longer ago than `older_than` are lost (their events are older
        still): they stop being pending and say so. Returns how many."""
        cutoff = utcnow() - older_than
        query = sa.select(rejected.c.row_key, rejected.c.reasons).where(
            rejected.c.pipeline == pipeline, rejected.c.transient, rejected.c.first_seen < cutoff
        )
        with self.engine.begin() as conn:
            expired = list(conn.execute(query))
            for row_key, reasons in expired:
                marked = [AGED_OUT_REASON, *orjson.loads(reasons)]
                conn.execute(
                    rejected.update()
                    .where(rejected.c.pipeline == pipeline, rejected.c.row_key == row_key)
                    .values(transient=False, reasons=orjson.dumps(marked).decode(), last_seen=utcnow())
                )
        return len(expired)

    @_translated
    def settle_abandoned_runs(self, pipeline: str | None = None) -> int:
        """Runs recorded `running` whose process is gone (killed, or the store failed as it ended)
        are marked failed, so no run stays `running` once its process has ended."""
        query = sa.select(runs.c.id, runs.c.owner, runs.c.started_at).where(
            runs.c.status == RunStatus.RUNNING
        )
        if pipeline:
            query = query.where(runs.c.pipeline == pipeline)
        now = utcnow()
        with self.engine.begin() as conn:
            running = list(conn.execute(query))
            if not running:
                return 0
            heartbeats = {row.owner: row for row in conn.execute(sa.select(locks))}
            gone = [
                row.id
                for row in running
                if row.owner != self.owner
                and _owner_gone(row.owner, heartbeats.get(row.owner), row.started_at, now)
            ]
            if gone:
                conn.execute(
                    runs.update()
                    .where(runs.c.id.in_(gone))
                    .values(
                        status=RunStatus.FAILED,
                        ended_at=now,
                        error="its process ended without recording the end of the run (killed, or the"
                        " state store failed); the cursor stands after the last accepted batch",
                    )
                )
        return len(gone)

    @_translated
    def list_runs(self, pipeline: str | None = None, limit: int = 20) -> list[sa.Row[Any]]:
        self.settle_abandoned_runs(pipeline)
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if pipeline:
            query = query.where(runs.c.pipeline == pipeline)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    @_translated
    def runs_since(self, pipeline: str, since: dt.datetime) -> list[sa.Row[Any]]:
        """The pipeline's runs started at or after `since`, oldest first."""
        self.settle_abandoned_runs(pipeline)
        query = (
            sa.select(runs)
            .where(runs.c.pipeline == pipeline, runs.c.started_at >= since.astimezone(dt.UTC))
            .order_by(runs.c.id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    @_translated
    def successful_results(self, pipeline: str, limit: int = 10) -> list[dict[str, Any]]:
        """The results documents of the pipeline's last `limit` successful runs, newest first."""
        query = (
            sa.select(runs.c.results)
            .where(
                runs.c.pipeline == pipeline, runs.c.status == RunStatus.SUCCEEDED, runs.c.results.is_not(None)
            )
            .order_by(runs.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [orjson.loads(text) for text in conn.execute(query).scalars()]

    @_translated
    def last_success(self, pipeline: str) -> dt.datetime | None:
        """When the pipeline's last successful run ended."""
        query = sa.select(sa.func.max(runs.c.ended_at)).where(
            runs.c.pipeline == pipeline, runs.c.status == RunStatus.SUCCEEDED
        )
        with self.engine.connect() as conn:
            ended = conn.execute(query).scalar()
        return _aware(ended) if ended is not None else None

    @_translated
    def alerts_firing(self, pipeline: str) -> set[tuple[str, str]]:
        """(alert, trigger) pairs whose condition fired and has not cleared since."""
        query = sa.select(alerts_firing.c.alert, alerts_firing.c.trigger).where(
            alerts_firing.c.pipeline == pipeline
        )
        with self.engine.connect() as conn:
            return {(alert, trigger) for alert, trigger in conn.execute(query)}

    @_translated
    def set_alert_firing(
        self, alert: str, pipeline: str, trigger: str, *, firing: bool, run_uid: str | None
    ) -> None:
        key = (
            (alerts_firing.c.alert == alert)
            & (alerts_firing.c.pipeline == pipeline)
            & (alerts_firing.c.trigger == trigger)
        )
        with self.engine.begin() as conn:
            conn.execute(alerts_firing.delete().where(key))
            if firing:
                conn.execute(alerts_firing.insert().values(
                    alert=alert, pipeline=pipeline, trigger=trigger, since=utcnow(), run_uid=run_uid
                ))  # fmt: skip

    @_translated
    def list_rejected(
        self, pipeline: str, *, transient: bool | None = None, max_attempts: int | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(rejected).where(rejected.c.pipeline == pipeline).order_by(rejected.c.last_seen)
        if transient is not None:
            query = query.where(rejected.c.transient == transient)
        if max_attempts is not None:
            query = query.where(rejected.c.attempts < max_attempts)
        with self.engine.connect() as conn:
            return [
                {
                    **{str(k): v for k, v in row._mapping.items()},
                    "reasons": orjson.loads(row.reasons),
                    "key_values": orjson.loads(row.key_values) if row.key_values else None,
                }
                for row in conn.execute(query)
            ]

    # -- locking --------------------------------------------------------------------------------

    @contextmanager
    def lock(self, pipeline: str) -> Iterator[None]:
        """One run of a pipeline at a time, across processes and hosts sharing this store."""
        self._acquire(pipeline)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(pipeline, stop), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self._release(pipeline)

    @_translated
    def _release(self, pipeline: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(locks.delete().where(locks.c.pipeline == pipeline, locks.c.owner == self.owner))

    def _heartbeat(self, pipeline: str, stop: threading.Event) -> None:
        """Keep the lock fresh while a long query or a throttled batch holds up commits."""
        while not stop.wait(HEARTBEAT_EVERY.total_seconds()):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        locks.update()
                        .where(locks.c.pipeline == pipeline, locks.c.owner == self.owner)
                        .values(heartbeat_at=utcnow())
                    )
            except sa.exc.SQLAlchemyError:
                continue  # a busy store: the next beat tries again, well within LOCK_STALE_AFTER

    @_translated
    def _acquire(self, pipeline: str) -> None:
        now = utcnow()
        host, pid = socket.gethostname(), os.getpid()
        mine = {
            "owner": self.owner,
            "host": host,
            "pid": pid,
            "acquired_at": now,
            "heartbeat_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(locks.insert().values(pipeline=pipeline, **mine))
                return
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as conn:
            held = conn.execute(sa.select(locks).where(locks.c.pipeline == pipeline)).first()
            if held is not None and not _is_stale(held, now):
                msg = (
                    f"pipeline '{pipeline}' is already running (pid {held.pid} on {held.host},"
                    f" since {held.acquired_at:%Y-%m-%d %H:%M:%S} UTC)"
                )
                raise PipelineLocked(msg)
            # Take over a dead owner's lock only if nobody else did in between.
            condition = locks.c.owner == held.owner if held is not None else sa.true()
            taken = conn.execute(locks.update().where(locks.c.pipeline == pipeline, condition).values(**mine))
            if taken.rowcount != 1:
                raise PipelineLocked(f"pipeline '{pipeline}' is already running")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _liveness_scope() -> str:
    """Where a pid means one process: this boot of this kernel and this PID namespace.

    Containers share a hostname yet each has its own pids, so `kill(pid, 0)` answers only for
    locks taken in the same scope; any other lock is alive until its heartbeat goes stale.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"noscope-{uuid.uuid4().hex}"  # no way to tell: heartbeats alone decide
    return f"{boot}:{namespace}"


_LIVENESS_SCOPE = _liveness_scope()


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _is_stale(held: sa.Row[Any], now: dt.datetime) -> bool:
    if now - _aware(held.heartbeat_at) > LOCK_STALE_AFTER:
        return True
    return _dead_in_this_scope(held.owner)


def _dead_in_this_scope(owner: str | None) -> bool:
    """True only when `owner` was a process of this scope whose pid no longer runs."""
    scope, _, process = (owner or "").partition("/")
    if scope != _LIVENESS_SCOPE or not process:
        return False
    try:
        pid = int(process.split(":")[-2])
    except (ValueError, IndexError):
        return False
    return not _pid_alive(pid)


def _owner_gone(owner: str | None, lock: sa.Row[Any] | None, started: dt.datetime, now: dt.datetime) -> bool:
    """A running run's process is gone: dead in this scope, or silent past the lock's stale time."""
    if owner is None:  # recorded before v3: only time can tell
        return lock is None and now - _aware(started) > LOCK_STALE_AFTER
    if _dead_in_this_scope(owner):
        return True
    return lock is None or now - _aware(lock.heartbeat_at) > LOCK_STALE_AFTER


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("pragma journal_mode=wal")
    cursor.execute("pragma synchronous=normal")
    cursor.close()
