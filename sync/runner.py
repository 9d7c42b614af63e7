"""One run of a pipeline: read -> map -> batch -> send -> commit, in that order, nothing skipped.

The cursor moves only after Meta accepted the batch that carried it; rows rejected on the way are
stored with their reasons in the same transaction, so after any crash a re-run resumes exactly at the
first row not yet settled, and re-sent rows carry the same `event_id`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

import orjson

from capi_sync import logs, native, quality, results
from capi_sync.batching import Batch
from capi_sync.building import PARTNER_NAME, make_client, quality_notes
from capi_sync.connectors import Source, Window, open_source
from capi_sync.delivery import Sender, Sent, event_lines
from capi_sync.errors import (
    CapiSyncError,
    ConfigError,
    EventNotSerializable,
    MetaError,
    MetaRetryableError,
    MetaTooLargeError,
    StopRequested,
)
from capi_sync.mappings.mapper import MappedRow, Rejection
from capi_sync.mappings.validate import Problem, max_age_seconds
from capi_sync.preparing import Prepared, check_sendable, prepare, setup_stage
from capi_sync.report import RunReport
from capi_sync.state import AGED_OUT_REASON, BatchCommit, CursorState, RejectedRow, RunStatus, StateStore
from capi_sync.windows import (
    CursorClock,
    coerce_cursor,
    incremental_bounds,
    kind_of_value,
    meta_max_age,
    require_time_kind,
)

if TYPE_CHECKING:
    from pathlib import Path

    from capi_sync.config import PipelineConfig, ProjectConfig
    from capi_sync.connectors.arrow import Converted
    from capi_sync.connectors.base import Chunk
    from capi_sync.connectors.meta import MetaClient
    from capi_sync.connectors.retry import RetryPolicy

Progress = Callable[[RunReport], None]
TRANSIENT_RULE = "meta_unavailable"  # rows Meta could not take (retry budget spent): pending, retried
AGED_OUT_RULE = AGED_OUT_REASON["rule"]  # a pending row that grew too old for Meta to be delivered
RETRY_KEYS_PER_QUERY = 500
KEYS_TRACKED = (
    50_000  # primary keys per run remembered to spot repeats (about 2.5 MB; see `_count_repeated_keys`)
)


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    output: Path | None = None  # dry-run: write each event as one JSON line here
    limit: int | None = None  # stop after this many rows
    retry: RetryPolicy | None = None  # default: the destination's retry settings
    retry_only: bool = False  # `capi-sync retry`: only re-send rejected rows, no incremental read
    retry_data_rejections: bool = False  # with retry_only: also rows rejected for their data
    stop: threading.Event | None = None  # once set: finish the batches in flight, then stop
    workers: int | Literal["auto"] | None = None  # deprecated and ignored: one process maps and sends


def run_pipeline(
    project: ProjectConfig,
    name: str,
    store: StateStore,
    options: RunOptions = RunOptions(),
    *,
    progress: Progress | None = None,
    client: MetaClient | None = None,
) -> RunReport:
    """Run one pipeline incrementally; return its report (also when it failed)."""
    pipeline = project.pipeline(name)
    report = RunReport(pipeline=name, dry_run=options.dry_run, kind="retry" if options.retry_only else "run")
    with session(
        project, pipeline, store, options, report, kind=report.kind, progress=progress, client=client
    ) as run:
        if options.retry_only:
            run.retry_rejected(transient_only=not options.retry_data_rejections)
        else:
            if "transient_retry_cap" in pipeline.settings.model_fields_set:
                report.notes.append(
                    "settings.transient_retry_cap is no longer used: pending rows are retried by every"
                    " run until delivered or too old for Meta; remove it"
                )
            if not options.dry_run:  # rows Meta could not take before go first, every run
                run.retry_rejected(transient_only=True)
            run.incremental()
    return report


@contextmanager
def session(
    project: ProjectConfig,
    pipeline: PipelineConfig,
    store: StateStore,
    options: RunOptions,
    report: RunReport,
    *,
    kind: str = "run",
    lock_name: str | None = None,
    progress: Progress | None = None,
    client: MetaClient | None = None,
    opened: tuple[Source, Prepared] | None = None,
) -> Iterator[RunSession]:
    """Connect, check, lock and record a run; whatever the body does, the run ends with a status.

    Config and connection errors raise before the run is recorded; failures after that end up in
    the report (and the run history) instead of propagating, interrupts are recorded and re-raised.
    `opened` is a source the caller opened and prepared already (and closes): a query is described
    and its mapping compiled once per run.
    """
    report.quality.notes[:] = quality_notes(pipeline)
    report.timezone = pipeline.timezone
    if not options.dry_run:
        check_sendable(project, pipeline)
    with ExitStack() as stack:
        if opened is None:
            with setup_stage(pipeline):
                source = stack.enter_context(open_source(project.warehouse_of(pipeline)))
                prepared = prepare(pipeline, source)
        else:
            source, prepared = opened
        client = client or stack.enter_context(closing(make_client(project, pipeline)))
        if not options.dry_run:
            stack.enter_context(store.lock(lock_name or pipeline.name))
        output = stack.enter_context(_open_output(options.output))
        retry = options.retry or project.destination_of(pipeline).retry_policy()
        if prepared.engine_note:
            report.notes.append(prepared.engine_note)
        if not options.dry_run:
            report.run_id = store.start_run(pipeline.name, kind, run_uid=report.run_uid)
        stack.enter_context(logs.run_context(report.run_uid, pipeline.name))
        engine = "native core" if prepared.native is not None else "pure Python"
        logs.emit("run_started", kind=kind, dry_run=options.dry_run, engine=engine)
        run = RunSession(
            pipeline=pipeline,
            prepared=prepared,
            source=source,
            client=client,
            store=store,
            options=options,
            report=report,
            output=output,
            progress=progress,
            retry=retry,
        )
        try:
            yield run
            report.status = RunStatus.SUCCEEDED
            if pipeline.settings.fetch_quality and not options.dry_run:
                _fetch_meta_quality(client, report)
        except (KeyboardInterrupt, SystemExit):
            report.status = RunStatus.INTERRUPTED
            report.error = "interrupted"
            raise
        except ConfigError as exc:  # found once rows were due (the stored cursor): exit 2 all the same
            report.status = RunStatus.FAILED
            report.error = str(exc)
            raise
        except CapiSyncError as exc:
            report.status = RunStatus.FAILED
            report.error = str(exc)
            if isinstance(exc, MetaError) and exc.fbtrace_id:
                report.fbtrace_ids.append(exc.fbtrace_id)
        except BaseException as exc:  # a bug: recorded as failed, never left `running`, then raised
            report.status = RunStatus.FAILED
            report.error = f"internal error: {type(exc).__name__}: {exc}"
            raise
        finally:
            report.notes.extend(source.notes)
            if report.rows_lost and report.status == RunStatus.SUCCEEDED:
                report.status = RunStatus.FAILED
                report.error = (
                    f"{report.rows_lost:,} row(s) Meta could not take aged out of its window before"
                    f" they could be delivered: they are lost (see capi-sync rejected {pipeline.name},"
                    f" rule {AGED_OUT_RULE})"
                )
            report.ended_at = dt.datetime.now(dt.UTC)
            if report.run_id is not None:
                report.pending_total = store.count_pending(pipeline.name)
                counts = {
                    "rows_read": report.rows_read,
                    "events_sent": report.events_sent,
                    "rows_rejected": report.rows_rejected,
                    "rows_pending": report.rows_pending,
                    "rows_skipped": report.rows_skipped + report.rows_no_consent,
                    "rows_lost": report.rows_lost,
                }
                store.finish_run(
                    report.run_id,
                    report.status,
                    report.error,
                    report.fbtrace_ids,
                    counts,
                    results=results.dumps(results.document(report)).decode(),
                )


@dataclass
class RunSession:
    """The per-run loop and its mutable state, kept out of `run_pipeline` for readability.

    `cursor_name` and `cursor_index` say which position the run advances: the pipeline's own cursor
    for incremental runs, a backfill's private one for backfills.
    """

    pipeline: PipelineConfig
    prepared: Prepared
    source: Source
    client: MetaClient
    store: StateStore
    options: RunOptions
    report: RunReport
    output: IO[bytes] | None
    progress: Progress | None
    retry: RetryPolicy
    state: CursorState = field(default_factory=CursorState)
    cursor_name: str = ""
    cursor_index: int | None = None
    settle_floor: Callable[[Any], Any] = lambda value: value  # oldest cursor value whose keys we keep
    pending_keys: set[str] = field(default_factory=set)  # pending rows being retried by this run
    key_hashes: set[int] = field(default_factory=set)  # row keys read by this run, to count repeats
    last_key: str | None = None  # the key of the last row committed, to count neighbours that repeat it

    def __post_init__(self) -> None:
        self.mapper = self.prepared.mapper
        self.batch_size = self.pipeline.settings.batch_size
        self.cursor_name = self.cursor_name or self.pipeline.name
        # Set on interrupt or stop: senders give up their backoff so the run can commit and exit.
        self.abort = self.options.stop or threading.Event()
        self.sender = Sender(self.client, self.retry, self.abort, dry_run=self.options.dry_run)
        self._last_allowed: int | None = None  # requests allowed in flight, as last logged

    def incremental(self, now: dt.datetime | None = None) -> None:
        """Send the rows past the pipeline's cursor, up to the settle watermark."""
        pipeline, report = self.pipeline, self.report
        self.state = self._as_column_typed(self.store.load_cursor(pipeline.name))
        report.cursor_before = report.cursor_after = self.state.value
        plan = plan_incremental(pipeline, self.prepared, self.state, now or dt.datetime.now(dt.UTC))
        report.rows_null_key = self.source.count_null(pipeline.query, list(self.prepared.key_columns))
        if plan.window.cursor is None:
            self.execute(plan.window)
            return
        self.cursor_index = self.prepared.index(plan.window.cursor)
        if pipeline.lookback:
            clock, lookback = plan.clock, pipeline.lookback
            self.settle_floor = lambda value: _minus(clock, value, lookback)
        if plan.note:
            report.notes.append(plan.note)
        report.rows_null_cursor = self.source.count_null(pipeline.query, [plan.window.cursor])
        self.execute(plan.window, plan.guard)

    def follow(self, position: str, column: str) -> None:
        """Advance `position` (a backfill's own cursor) by `column`, instead of the pipeline's
        cursor: later `execute` calls resume from where `position` was left."""
        index = self.prepared.index(column)
        if index is None:
            raise ConfigError(
                [f"pipeline '{self.pipeline.name}': column '{column}' is not returned by the query"]
            )
        self.cursor_name, self.cursor_index = position, index
        self.state = self.store.load_cursor(position)
        self.report.cursor_before = self.report.cursor_after = self.state.value

    @property
    def position(self) -> Any:
        """Where the followed cursor stands: the last value committed."""
        return self.state.value

    def _as_column_typed(self, state: CursorState) -> CursorState:
        """The stored cursor in the column's current type (it may have changed between runs)."""
        pipeline = self.pipeline
        if state.value is None or pipeline.cursor is None:
            return state
        kind = self.prepared.kind(pipeline.cursor)
        try:
            value = coerce_cursor(state.value, kind, pipeline.zone)
            settled = {key: coerce_cursor(at, kind, pipeline.zone) for key, at in state.settled.items()}
        except ValueError as exc:
            raise ConfigError(
                [
                    f"pipeline '{pipeline.name}': cursor '{pipeline.cursor}': {exc}; move it with"
                    f" `capi-sync state set {pipeline.name} VALUE` or forget it with `state reset`"
                ]
            ) from None
        return CursorState(value, settled)

    def execute(self, window: Window, guard: _TimeGuard | None = None) -> None:
        """Send the rows of `window`, advancing `cursor_name` batch by batch."""
        if self.prepared.native is not None:
            self._pump(self._native_batches(window, guard))
            return
        self._pump(self._batches(self._mapped(self._rows(window, guard)), advances_cursor=True))

    def retry_rejected(self, *, transient_only: bool) -> None:
        """Re-read rejected rows by primary key, map them again and send them; the cursor stays.

        Pending rows (Meta could not take them) are retried until delivered or too old for Meta:
        one that comes back `too_old`, or that was first kept longer ago than Meta's window, is
        lost, and the run says so and fails.
        """
        rejected = self.store.list_rejected(self.pipeline.name, transient=True if transient_only else None)
        self.pending_keys = {row["row_key"] for row in rejected if row["transient"]}
        keys = [tuple(row["key_values"]) for row in rejected if row["key_values"]]
        key_columns = self.prepared.key_columns
        for start in range(0, len(keys), RETRY_KEYS_PER_QUERY):
            window = Window(
                order_by=key_columns,
                key_columns=key_columns,
                keys=tuple(keys[start : start + RETRY_KEYS_PER_QUERY]),
                purpose="retry",
            )
            self.report.rows_retried += len(window.keys)
            rows = self.prepared.stream(self.source, window, self.pipeline.chunk_size)
            self._pump(self._batches(self._mapped(self._counted(rows)), advances_cursor=False))
        max_age = dt.timedelta(seconds=max_age_seconds(self.pipeline.settings.action_source))
        self.report.rows_lost += self.store.expire_pending(self.pipeline.name, older_than=max_age)

    def _aged_out(self, rejections: list[Rejection]) -> set[str]:
        """Pending rows that came back too old for Meta: they can never be delivered now."""
        if not self.pending_keys:
            return set()
        return {
            r.row_key
            for r in rejections
            if r.row_key in self.pending_keys and any(p.rule == "too_old" for p in r.problems)
        }

    def _counted(self, chunks: Iterator[Chunk]) -> Iterator[tuple[Any, Any]]:
        for chunk in chunks:
            for row in chunk:
                self.report.rows_fetched += 1
                yield row, None
            del chunk  # see `_rows`

    def _pump(self, batches: Iterator[Batch]) -> None:
        """Build batches on this thread while up to `in_flight` requests run; commit in read order.

        A batch is committed only when it and every batch before it were settled, so the cursor
        never skips a batch that is still in flight or failed.
        """
        in_flight = 1 if self.options.dry_run else self.pipeline.settings.max_in_flight
        pending: deque[tuple[Batch, Future[Sent]]] = deque()
        with ThreadPoolExecutor(in_flight, thread_name_prefix="capi-send") as pool:
            try:
                for batch in batches:
                    pending.append((batch, pool.submit(self._send, batch)))
                    while pending and (len(pending) >= self._allowed(in_flight) or pending[0][1].done()):
                        self._commit_oldest(pending)
                while pending:
                    self._commit_oldest(pending)
            except KeyboardInterrupt:
                self.abort.set()
                self._drain(pending)
                raise
            except CapiSyncError:
                self._drain(pending)
                raise
            finally:
                for _, future in pending:
                    future.cancel()

    def _allowed(self, in_flight: int) -> int:
        """Fewer requests in flight as Meta's usage headers near 100% of a rate-limit budget,
        back to `max_in_flight` as they fall: slowing down before Meta throttles."""
        allowed = allowed_in_flight(getattr(self.client, "usage", None), in_flight)
        if allowed != self._last_allowed:
            if allowed < in_flight:
                logs.logger.warning(
                    "%s: Meta reports %.0f%% of a rate limit used: %d request(s) in flight",
                    self.pipeline.name,
                    getattr(self.client, "usage", 0) or 0,
                    allowed,
                    extra={"event": "rate_limit_slowdown", "in_flight": allowed},
                )
            elif self._last_allowed is not None:
                logs.logger.info(
                    "%s: back to %d request(s) in flight",
                    self.pipeline.name,
                    allowed,
                    extra={"event": "rate_limit_recovered", "in_flight": allowed},
                )
            self._last_allowed = allowed
        return allowed

    def _drain(self, pending: deque[tuple[Batch, Future[Sent]]]) -> None:
        """Stop cleanly: commit, in order, the batches already on the wire; drop the rest unsent."""
        for _, future in pending:
            future.cancel()
        while pending and not pending[0][1].cancelled():
            try:
                self._commit_oldest(pending)
            except (CapiSyncError, KeyboardInterrupt):
                break

    def _commit_oldest(self, pending: deque[tuple[Batch, Future[Sent]]]) -> None:
        """The batch leaves the queue only once committed, so an interrupt cannot skip it."""
        self._commit(*pending[0])
        pending.popleft()

    def _mapped(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[tuple[MappedRow, Any]]:
        """Rows become events here, in read order, by the Python reference."""
        map_row = self.mapper.map_row
        for row, cursor in rows:
            yield map_row(row), cursor

    def _batches(
        self, mapped_rows: Iterator[tuple[MappedRow, Any]], *, advances_cursor: bool
    ) -> Iterator[Batch]:
        """Batches in read order, each of at most `batch_size` events."""
        batch = Batch(advances_cursor=advances_cursor)
        for mapped, cursor in mapped_rows:
            self._add(batch, mapped, cursor)
            if len(batch.events) >= self.batch_size:
                yield batch
                batch = Batch(advances_cursor=advances_cursor)
        if batch.rows:
            yield batch

    def _add(self, batch: Batch, mapped: MappedRow, cursor: Any) -> None:
        """One row's outcome into its batch and the run's report."""
        if mapped.skipped is not None:  # held back by rule (consent): settled, never sent
            batch.add_row(mapped.row_key, cursor)
            batch.no_consent += 1
            return
        if mapped.event is None:
            rejection = Rejection(self.pipeline.name, mapped.row_key, mapped.problems, mapped.key)
            batch.add_rejection(cursor, rejection)
            return
        batch.add_event(mapped.row_key, cursor, mapped.event, mapped.key)
        event: Any = mapped.event  # JSON bytes from the native core come with their keys and name
        if event.__class__ is bytes:
            batch.quality.add_event(mapped.user_keys or (), mapped.event_name)
        else:
            batch.quality.add_event(event["user_data"].keys(), event["event_name"])
        if mapped.problems:
            batch.quality.dropped.update((p.field, p.rule) for p in mapped.problems)

    def _rows(self, window: Window, guard: _TimeGuard | None) -> Iterator[tuple[Any, Any]]:
        """Rows in cursor order, minus those already settled at or before the stored cursor value."""
        limit, stop = self.options.limit, self.options.stop
        last, settled = self.state.value, self.state.settled
        index = self.cursor_index
        chunks = self.prepared.stream(self.source, window, self.pipeline.chunk_size)
        for chunk in chunks:
            for row in chunk:
                cursor = row[index] if index is not None else None
                if guard is not None and not guard.admits(cursor):
                    if guard.past_end(cursor):
                        return
                    continue
                if settled and cursor <= last and self.mapper.row_key(row) in settled:
                    self.report.rows_skipped += 1
                    self.report.rows_read += 1
                    continue
                if limit is not None and self.report.rows_fetched >= limit:
                    return
                self.report.rows_fetched += 1
                yield row, cursor
            del chunk  # the source fetches the next chunk with this one already freed
            if self.progress:
                self.progress(self.report)
            if stop is not None and stop.is_set():
                raise StopRequested

    def _native_batches(self, window: Window, guard: _TimeGuard | None) -> Iterator[Batch]:
        """`_batches(_mapped(_rows(...)))` for Arrow batches through the native core, in cursor order.

        A record batch whose rows all became events, and that no window bound, settled key or
        `--limit` cuts into, joins the batches as blocks of lists: no Python work per row.
        """
        native_plan = self.prepared.native
        assert native_plan is not None
        limit, stop, report = self.options.limit, self.options.stop, self.report
        last, settled = self.state.value, self.state.settled
        index, size = self.cursor_index, self.batch_size
        batch = Batch()
        for converted in self.prepared.batches(self.source, window, self.pipeline.chunk_size, index):
            record, built = converted.batch, None
            if record is None:  # a chunk Arrow would change: the reference maps its rows as read
                self._note_rows_kept(converted)
                rows = len(converted.rows)
                cursors = [row[index] for row in converted.rows] if index is not None else [None] * rows
                mapped_rows: Iterator[MappedRow] = map(self.mapper.map_row, converted.rows)
            else:
                rows = record.num_rows
                cursors = record.column(index).to_pylist() if index is not None else [None] * rows
                built = native.Built(native_plan, self.mapper, record, self.mapper.now())
                mapped_rows = built.mapped_rows()
            whole = (
                built is not None
                and built.all_native
                and guard is None
                and not (settled and rows and cursors[0] <= last)
                and (limit is None or report.rows_fetched + rows <= limit)
            )
            if whole:
                assert built is not None
                position = 0
                while position < rows:
                    end = min(position + size - len(batch.events), rows)
                    keys = built.row_keys[position:end]
                    batch.add_events(
                        keys,  # type: ignore[arg-type]
                        cursors[position:end],
                        built.events[position:end],
                        built.key_values[position:end],
                    )
                    for shape, count in Counter(built.shapes[position:end]).items():
                        batch.quality.shapes[built.event_name(shape), built.user_keys(shape)] += count
                    batch.quality.events += end - position
                    report.rows_fetched += end - position
                    position = end
                    if len(batch.events) >= size:
                        yield batch
                        batch = Batch()
            else:
                for position, mapped in enumerate(mapped_rows):
                    cursor = cursors[position]
                    if guard is not None and not guard.admits(cursor):
                        if guard.past_end(cursor):
                            if batch.rows:
                                yield batch
                            return
                        continue
                    if settled and cursor <= last and mapped.row_key in settled:
                        report.rows_skipped += 1
                        report.rows_read += 1
                        continue
                    if limit is not None and report.rows_fetched >= limit:
                        if batch.rows:
                            yield batch
                        return
                    report.rows_fetched += 1
                    self._add(batch, mapped, cursor)
                    if len(batch.events) >= size:
                        yield batch
                        batch = Batch()
            del converted, record, built, mapped_rows
            if self.progress:
                self.progress(report)
            if stop is not None and stop.is_set():
                raise StopRequested
        if batch.rows:
            yield batch

    def _note_rows_kept(self, converted: Converted) -> None:
        """Say once per reason why some chunks were mapped in Python instead of by the core."""
        note = (
            f"the native core does not read chunks where {converted.reason}: their rows were mapped in Python"
        )
        if note not in self.report.notes:
            self.report.notes.append(note)

    def _send(self, batch: Batch) -> Sent:
        """Runs on a sender thread: one request (or a bisection), retried within the budget."""
        if self.options.dry_run and self.output is not None:
            self.output.write(event_lines(batch.events))
        return self.sender.send(batch.events)  # in a dry run: the exact requests, built and dropped

    def _commit(self, batch: Batch, sent: Future[Sent]) -> None:
        """Record everything an accepted batch settles, in one transaction; raise if it failed.

        Safe to call again after an interrupt: it reads the batch and never changes it.
        """
        if batch.committed:
            return
        outcome = sent.result()
        if outcome.transient is not None:
            failed: list[tuple[int, MetaError]] = [(i, outcome.transient) for i in range(batch.event_count)]
        else:
            failed = list(outcome.refused)
        refused = {i: self._meta_rejection(batch, i, error) for i, error in failed}
        delivered = [key for i, key in enumerate(batch.delivered_keys) if i not in refused]
        rejections = [*batch.rejections, *refused.values()]
        lost = self._aged_out(rejections)
        new_state = None
        if batch.advances_cursor and self.cursor_index is not None and batch.last_cursor is not None:
            floor = self.settle_floor(batch.last_cursor)
            new_state = self.state.advance(batch.last_cursor, batch.handled, floor)
        if not self.options.dry_run:
            commit = BatchCommit(
                run_id=self.report.run_id or 0,
                cursor=new_state,
                rows_read=batch.rows,
                events_sent=len(delivered),
                rejections=[_rejected_row(r, lost=r.row_key in lost) for r in rejections],
                delivered_keys=delivered,
                retries=outcome.retries,
                cursor_name=self.cursor_name,
            )
            self.store.commit_batch(self.pipeline.name, commit, self.state)
        batch.committed = True
        self._account(
            batch,
            rejections=rejections,
            lost=lost,
            sent=len(delivered),
            retries=outcome.retries,
            new_state=new_state,
            refused=refused.keys(),
            retry_codes=outcome.retry_codes,
        )
        if outcome.transient is not None:
            raise outcome.transient  # stop the run: Meta is unavailable; the rows wait in `rejected`

    def _account(
        self,
        batch: Batch,
        *,
        rejections: list[Rejection],
        lost: set[str],
        sent: int,
        retries: int,
        new_state: CursorState | None,
        refused: Iterable[int] = (),
        retry_codes: Counter[str] | None = None,
    ) -> None:
        """The committed batch into the run's report: the same figures the state store now holds.

        Match quality counts the events Meta took: those it refused (`refused`, their indexes)
        were counted when built and come off again.
        """
        report = self.report
        for rejection in rejections:
            report.reject(rejection, pending=_is_transient(rejection))
        report.rows_lost += len(lost)
        report.rows_read += batch.rows
        report.rows_no_consent += batch.no_consent
        if batch.advances_cursor:
            self._count_repeated_keys(batch.handled)
        report.quality.merge(batch.quality)
        if len(batch.events) == batch.event_count:
            for index in refused:
                report.quality.remove_event(*_user_keys(batch.events[index]))
        report.retries += retries
        report.retry_codes.update(retry_codes or {})
        report.events_sent += sent
        report.batches += 1 if batch.event_count else 0
        if new_state is not None:
            self.state = new_state
            report.cursor_after = new_state.value
        if self.progress:
            self.progress(report)

    def _count_repeated_keys(self, handled: list[tuple[str, Any]]) -> None:
        """Rows repeating a primary key share its event_id, so Meta keeps one: count them, to warn.

        Rows come sorted by cursor then key, so repeats at one cursor value (a join that fans out)
        are neighbours and always counted; other repeats are found among the first `KEYS_TRACKED`
        keys of the run, which keeps memory bounded (200,000 remembered keys cost 11 MB of peak).
        """
        seen, repeated, last = self.key_hashes, 0, self.last_key
        for key, _cursor in handled:
            if key == last:
                repeated += 1
                continue
            hashed = hash(key)
            if hashed in seen:
                repeated += 1
            elif len(seen) < KEYS_TRACKED:
                seen.add(hashed)
            last = key
        self.last_key = last
        self.report.duplicate_keys += repeated

    def _meta_rejection(self, batch: Batch, index: int, error: MetaError) -> Rejection:
        rule = f"meta_{error.code or error.status or 'unreachable'}" + (
            f"_{error.subcode}" if error.subcode else ""
        )
        if isinstance(error, MetaRetryableError):
            rule = TRANSIENT_RULE
        elif isinstance(error, MetaTooLargeError | EventNotSerializable):
            rule = error.rule
        detail = error.user_message or str(error)
        if error.fbtrace_id:
            detail += f" (fbtrace_id {error.fbtrace_id})"
        problem = Problem("event", rule, detail=detail)
        return Rejection(self.pipeline.name, batch.delivered_keys[index], (problem,), batch.key_values[index])


def _settled(send: Callable[[Batch], Sent], batch: Batch) -> Future[Sent]:
    """`send(batch)`'s outcome, or its error, as a finished future `_commit` can read."""
    future: Future[Sent] = Future()
    try:
        future.set_result(send(batch))
    except CapiSyncError as exc:
        future.set_exception(exc)
    return future


SLOW_AT_PERCENT = 75.0  # half the requests in flight from here
ONE_AT_PERCENT = 90.0  # one at a time from here


def allowed_in_flight(usage: float | None, in_flight: int) -> int:
    """Requests allowed in flight at Meta's reported usage (% of the tightest budget)."""
    if usage is None or usage < SLOW_AT_PERCENT:
        return in_flight
    if usage < ONE_AT_PERCENT:
        return max(1, in_flight // 2)
    return 1


def _fetch_meta_quality(client: MetaClient, report: RunReport) -> None:
    """Meta's latest Event Match Quality into the run's results (`settings.fetch_quality`).

    Meta's scores are a courtesy to the run: when Meta will not give them, the run says why in its
    notes and succeeds all the same, its events being delivered.
    """
    try:
        found = quality.fetch(client, PARTNER_NAME)
    except MetaError as exc:
        note = f"Meta's Event Match Quality was not fetched: {exc}"
        report.notes.append(note)
        logs.emit("quality_not_fetched", note, level=logging.WARNING)
        return
    report.meta_quality = [
        {
            "event_name": entry.event_name,
            "composite_score": entry.composite_score,
            "match_keys": {quality.our_key(name): coverage for name, coverage in entry.match_keys.items()},
        }
        for entry in found
    ]


def _user_keys(event: dict[str, Any] | bytes) -> tuple[tuple[str, ...], str]:
    """The customer-information keys an event carries, and its name (the reference's dict, or the
    core's JSON)."""
    body = event if isinstance(event, dict) else orjson.loads(event)
    return tuple(body.get("user_data", {})), str(body.get("event_name", ""))


def _is_transient(rejection: Rejection) -> bool:
    return any(p.rule == TRANSIENT_RULE for p in rejection.problems)


def _rejected_row(rejection: Rejection, *, lost: bool = False) -> RejectedRow:
    reasons = [_problem_dict(p) for p in rejection.problems]
    if lost:
        reasons.insert(0, AGED_OUT_REASON)
    return RejectedRow(rejection.row_key, reasons, rejection.key_values, _is_transient(rejection))


def _problem_dict(problem: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "field": problem.field,
            "rule": problem.rule,
            "value": problem.value,
            "detail": problem.detail,
        }.items()
        if v is not None
    }


@dataclass(frozen=True)
class IncrementalPlan:
    window: Window
    clock: CursorClock
    guard: _TimeGuard | None = None
    note: str | None = None


def plan_incremental(
    pipeline: PipelineConfig, prepared: Prepared, state: CursorState, now: dt.datetime
) -> IncrementalPlan:
    """The window of the next incremental run: what `run` reads and `render` shows."""
    key = prepared.key_columns
    cursor_index = prepared.index(pipeline.cursor)
    if cursor_index is None:
        return IncrementalPlan(Window(order_by=key), CursorClock(None, pipeline.zone))
    cursor = prepared.columns[cursor_index]
    clock = CursorClock(prepared.kind(cursor) or kind_of_value(state.value), pipeline.zone)
    if pipeline.lookback:
        require_time_kind(pipeline.name, cursor, clock, "lookback")
    bounds = incremental_bounds(
        last_value=state.value,
        clock=clock,
        now=now,
        settle_delay=pipeline.settle_delay,
        lookback=pipeline.lookback,
        start=pipeline.start,
        max_age=meta_max_age(pipeline.settings.action_source),
    )
    window = Window(
        order_by=(cursor, *key), cursor=cursor, start=bounds.start, end=bounds.end, end_inclusive=True
    )
    guard = None
    if clock.kind is None and (bounds.start_utc or bounds.end_utc):  # type unknown: bound in Python
        guard = _TimeGuard(clock, bounds.start_utc, bounds.end_utc)
    return IncrementalPlan(window, clock, guard, bounds.note)


@dataclass(frozen=True)
class _TimeGuard:
    """Window bounds applied row by row when the warehouse did not say the cursor's type."""

    clock: CursorClock
    start_utc: dt.datetime | None
    end_utc: dt.datetime | None

    def admits(self, value: Any) -> bool:
        instant = self.clock.to_utc(value)
        if instant is None:
            return True
        return (self.start_utc is None or instant >= self.start_utc) and not self.past_end(value)

    def past_end(self, value: Any) -> bool:
        instant = self.clock.to_utc(value)
        return instant is not None and self.end_utc is not None and instant > self.end_utc


def _minus(clock: CursorClock, value: Any, delta: dt.timedelta) -> Any:
    instant = clock.to_utc(value)
    return value if instant is None else clock.from_utc(instant - delta)


def _open_output(path: Path | None) -> Any:
    return path.open("wb") if path is not None else nullcontext(None)
