"""One run of a pipeline: read -> map -> batch -> send -> commit, in that order, nothing skipped.

The cursor moves only after Meta accepted the batch that carried it; rows rejected on the way are
stored with their reasons in the same transaction, so after any crash a re-run resumes exactly at the
first row not yet settled, and re-sent rows carry the same `event_id`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import orjson

from capi_sync import __version__
from capi_sync.batching import Batch
from capi_sync.connectors import Source, Window, open_source
from capi_sync.connectors.meta import MetaClient
from capi_sync.connectors.retry import RetryPolicy, call_with_retry
from capi_sync.errors import CapiSyncError, ConfigError, MetaError, MetaRequestError, MetaRetryableError
from capi_sync.mappings.mapper import (
    EventMapper,
    MapperOptions,
    Rejection,
    compile_mapping,
    resolve_column,
)
from capi_sync.mappings.validate import Problem
from capi_sync.report import RunReport
from capi_sync.state import BatchCommit, CursorState, RejectedRow, RunStatus, StateStore

if TYPE_CHECKING:
    from pathlib import Path

    from capi_sync.config import PipelineConfig, ProjectConfig
    from capi_sync.connectors.base import Chunk

Progress = Callable[[RunReport], None]
RetryHook = Callable[[MetaError, float], None]
INVALID_PARAMETER = 100  # Graph API code for an invalid event: worth isolating by bisection
OBJECT_NOT_FOUND = 33  # code 100 subcode for a wrong pixel id or missing access: fatal
TRANSIENT_RULE = "meta_unavailable"  # rows dead-lettered after the retry budget; retried next run
RETRY_KEYS_PER_QUERY = 500


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    output: Path | None = None  # dry-run: write each event as one JSON line here
    limit: int | None = None  # stop after this many rows
    retry: RetryPolicy | None = None  # default: the destination's retry settings
    retry_only: bool = False  # `capi-sync retry`: only re-send rejected rows, no incremental read
    retry_data_rejections: bool = False  # with retry_only: also rows rejected for their data


def mapper_for(
    pipeline: PipelineConfig, columns: list[str], clock: Callable[[], float] = time.time
) -> EventMapper:
    settings = pipeline.settings
    options = MapperOptions(
        pipeline=pipeline.name,
        primary_key=pipeline.primary_key,
        action_source=settings.action_source,
        hashing_required=settings.hashing_required,
        default_phone_region=settings.default_phone_region,
        strong_match_key_required=settings.strong_match_key_required,
        hash_external_id=settings.hash_external_id,
        timezone=pipeline.timezone,
    )
    return compile_mapping(pipeline.mapping, options, columns, clock)


def prepare(pipeline: PipelineConfig, source: Source) -> tuple[EventMapper, list[str]]:
    """Describe the query and compile the mapping: every config error surfaces before a row is read."""
    columns = source.columns(pipeline.query)
    mapper = mapper_for(pipeline, columns)
    if pipeline.cursor is not None and _column(pipeline.cursor, columns) is None:
        raise ConfigError(
            [
                f"pipeline '{pipeline.name}': cursor: column '{pipeline.cursor}' is not"
                f" returned by the query (columns: {', '.join(columns)})"
            ]
        )
    return mapper, columns


def make_client(project: ProjectConfig, pipeline: PipelineConfig) -> MetaClient:
    destination = project.destination_of(pipeline)
    return MetaClient(
        destination.pixel_id,
        destination.access_token.get_secret_value(),
        api_version=destination.api_version,
        graph_url=destination.graph_url,
        timeout=destination.timeout,
        test_event_code=pipeline.settings.test_event_code,
        partner_agent=f"capi-sync/{__version__}",
        app_secret=destination.app_secret.get_secret_value() if destination.app_secret else None,
    )


def _check_sendable(project: ProjectConfig, pipeline: PipelineConfig) -> None:
    destination = project.destination_of(pipeline)
    errors = []
    if not destination.pixel_id:
        errors.append(f"destination '{pipeline.destination}': pixel_id is empty")
    if not destination.access_token.get_secret_value():
        errors.append(f"destination '{pipeline.destination}': access_token is empty")
    if errors:
        raise ConfigError(
            [f"pipeline '{pipeline.name}': {e} (needed to send; --dry-run works without)" for e in errors]
        )


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
    if not options.dry_run:
        _check_sendable(project, pipeline)
    report = RunReport(pipeline=name, dry_run=options.dry_run)
    with ExitStack() as stack:
        source = stack.enter_context(open_source(project.warehouse_of(pipeline)))
        mapper, columns = prepare(pipeline, source)
        client = client or stack.enter_context(closing(make_client(project, pipeline)))
        if not options.dry_run:
            stack.enter_context(store.lock(name))
        output = stack.enter_context(_open_output(options.output))
        state = store.load_cursor(name)
        report.cursor_before = report.cursor_after = state.value
        if not options.dry_run:
            report.run_id = store.start_run(name)
        run = _Run(
            pipeline=pipeline,
            mapper=mapper,
            columns=columns,
            client=client,
            store=store,
            options=options,
            report=report,
            state=state,
            output=output,
            progress=progress,
            retry=options.retry or project.destination_of(pipeline).retry_policy(),
        )
        try:
            if options.retry_only:
                run.retry_rejected(
                    source, transient_only=not options.retry_data_rejections, max_attempts=None
                )
            else:
                if not options.dry_run:  # rows Meta could not take last time go first
                    cap = pipeline.settings.transient_retry_cap
                    run.retry_rejected(source, transient_only=True, max_attempts=cap + 1)
                run.execute(source)
            report.status = RunStatus.SUCCEEDED
        except (KeyboardInterrupt, SystemExit):
            report.status = RunStatus.INTERRUPTED
            report.error = "interrupted"
            raise
        except CapiSyncError as exc:
            report.status = RunStatus.FAILED
            report.error = str(exc)
            if isinstance(exc, MetaError) and exc.fbtrace_id:
                report.fbtrace_ids.append(exc.fbtrace_id)
        finally:
            report.ended_at = dt.datetime.now(dt.UTC)
            if report.run_id is not None:
                store.finish_run(report.run_id, report.status, report.error, report.fbtrace_ids)
    return report


@dataclass(frozen=True)
class _Sent:
    """What a sender thread hands back for one batch."""

    refused: list[tuple[int, MetaRequestError]] = field(default_factory=list)
    retries: int = 0
    transient: MetaRetryableError | None = None  # the retry budget ran out: dead-letter the batch


@dataclass
class _Run:
    """The per-run loop and its mutable state, kept out of `run_pipeline` for readability."""

    pipeline: PipelineConfig
    mapper: EventMapper
    columns: list[str]
    client: MetaClient
    store: StateStore
    options: RunOptions
    report: RunReport
    state: CursorState
    output: IO[bytes] | None
    progress: Progress | None
    retry: RetryPolicy

    def __post_init__(self) -> None:
        self.cursor_index = _column(self.pipeline.cursor, self.columns)
        self.batch_size = self.pipeline.settings.batch_size

    def window(self) -> Window:
        columns = self.columns
        key = tuple(columns[index] for index in self.mapper.key_indexes)
        if self.cursor_index is None:
            return Window(order_by=key)
        cursor = columns[self.cursor_index]
        return Window(order_by=(cursor, *key), cursor=cursor, start=self.state.value)

    def execute(self, source: Source) -> None:
        """Send the rows past the cursor."""
        self._pump(self._batches(self._rows(source), advances_cursor=True))

    def retry_rejected(self, source: Source, *, transient_only: bool, max_attempts: int | None) -> None:
        """Re-read rejected rows by primary key, map them again and send them; the cursor stays."""
        rejected = self.store.list_rejected(
            self.pipeline.name, transient=True if transient_only else None, max_attempts=max_attempts
        )
        keys = [tuple(row["key_values"]) for row in rejected if row["key_values"]]
        key_columns = tuple(self.columns[index] for index in self.mapper.key_indexes)
        for start in range(0, len(keys), RETRY_KEYS_PER_QUERY):
            window = Window(
                order_by=key_columns,
                key_columns=key_columns,
                keys=tuple(keys[start : start + RETRY_KEYS_PER_QUERY]),
            )
            self.report.rows_retried += len(window.keys)
            rows = source.stream(self.pipeline.query, window, self.pipeline.chunk_size)
            self._pump(self._batches(self._counted(rows), advances_cursor=False))

    def _counted(self, chunks: Iterator[Chunk]) -> Iterator[tuple[Any, Any]]:
        for chunk in chunks:
            for row in chunk:
                self.report.rows_read += 1
                yield row, None

    def _pump(self, batches: Iterator[Batch]) -> None:
        """Build batches on this thread while up to `in_flight` requests run; commit in read order.

        A batch is committed only when it and every batch before it were settled, so the cursor
        never skips a batch that is still in flight or failed.
        """
        in_flight = 1 if self.options.dry_run else self.pipeline.settings.max_in_flight
        pending: deque[tuple[Batch, Future[_Sent]]] = deque()
        with ThreadPoolExecutor(in_flight, thread_name_prefix="capi-send") as pool:
            try:
                for batch in batches:
                    pending.append((batch, pool.submit(self._send, batch)))
                    while pending and (len(pending) >= in_flight or pending[0][1].done()):
                        self._commit_oldest(pending)
                while pending:
                    self._commit_oldest(pending)
            except (KeyboardInterrupt, CapiSyncError):
                self._drain(pending)
                raise
            finally:
                for _, future in pending:
                    future.cancel()

    def _drain(self, pending: deque[tuple[Batch, Future[_Sent]]]) -> None:
        """Stop cleanly: commit, in order, the batches already on the wire; drop the rest unsent."""
        for _, future in pending:
            future.cancel()
        while pending and not pending[0][1].cancelled():
            try:
                self._commit_oldest(pending)
            except (CapiSyncError, KeyboardInterrupt):
                break

    def _commit_oldest(self, pending: deque[tuple[Batch, Future[_Sent]]]) -> None:
        """The batch leaves the queue only once committed, so an interrupt cannot skip it."""
        self._commit(*pending[0])
        pending.popleft()

    def _batches(self, rows: Iterator[tuple[Any, Any]], *, advances_cursor: bool) -> Iterator[Batch]:
        batch = Batch(advances_cursor=advances_cursor)
        for row, cursor in rows:
            mapped = self.mapper.map_row(row)
            if mapped.event is None:
                rejection = Rejection(self.pipeline.name, mapped.row_key, mapped.problems, mapped.key)
                batch.add_rejection(cursor, rejection)
                self.report.reject(rejection)
                continue
            batch.add_event(mapped.row_key, cursor, mapped.event, mapped.key)
            self.report.quality.add_event(mapped.event["user_data"])
            if mapped.problems:
                self.report.quality.dropped.update((p.field, p.rule) for p in mapped.problems)
            if len(batch.events) >= self.batch_size:
                yield batch
                batch = Batch(advances_cursor=advances_cursor)
        if batch.rows:
            yield batch

    def _rows(self, source: Source) -> Iterator[tuple[Any, Any]]:
        """Rows in cursor order, minus those already settled at exactly the stored cursor value."""
        limit = self.options.limit
        start, settled = self.state.value, self.state.keys
        index = self.cursor_index
        for chunk in source.stream(self.pipeline.query, self.window(), self.pipeline.chunk_size):
            for row in chunk:
                cursor = row[index] if index is not None else None
                if settled and cursor == start and self.mapper.row_key(row) in settled:
                    self.report.rows_skipped += 1
                    continue
                if limit is not None and self.report.rows_read >= limit:
                    return
                self.report.rows_read += 1
                yield row, cursor
            if self.progress:
                self.progress(self.report)

    def _send(self, batch: Batch) -> _Sent:
        """Runs on a sender thread: one request (or a bisection), retried within the budget."""
        if not batch.events:
            return _Sent()
        if self.options.dry_run:
            self.client.prepare(batch.events)  # the exact request, built and dropped
            if self.output is not None:
                self.output.writelines(
                    orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in batch.events
                )
            return _Sent()
        retries = 0

        def count(_error: MetaError, _pause: float) -> None:
            nonlocal retries
            retries += 1

        try:
            return _Sent(self._deliver(batch.events, count), retries)
        except MetaRetryableError as exc:
            return _Sent(retries=retries, transient=exc)

    def _commit(self, batch: Batch, sent: Future[_Sent]) -> None:
        """Record everything an accepted batch settles, in one transaction; raise if it failed.

        Safe to call again after an interrupt: it reads the batch and never changes it.
        """
        if batch.committed:
            return
        outcome = sent.result()
        if outcome.transient is not None:
            failed: list[tuple[int, MetaError]] = [(i, outcome.transient) for i in range(len(batch.events))]
        else:
            failed = list(outcome.refused)
        refused = {i: self._meta_rejection(batch, i, error) for i, error in failed}
        delivered = [key for i, key in enumerate(batch.delivered_keys) if i not in refused]
        rejections = [*batch.rejections, *refused.values()]
        new_state = None
        if batch.advances_cursor and self.cursor_index is not None and batch.last_cursor is not None:
            new_state = self.state.advance(batch.last_cursor, batch.keys_at_last_cursor)
        if not self.options.dry_run:
            commit = BatchCommit(
                run_id=self.report.run_id or 0,
                cursor=new_state,
                rows_read=batch.rows,
                events_sent=len(delivered),
                rejections=[_rejected_row(r) for r in rejections],
                delivered_keys=delivered,
                retries=outcome.retries,
            )
            self.store.commit_batch(self.pipeline.name, commit, self.state)
        batch.committed = True
        self._account(batch, refused, len(delivered), outcome.retries, new_state)
        if outcome.transient is not None:
            raise outcome.transient  # stop the run: Meta is unavailable; the rows wait in `rejected`

    def _account(
        self,
        batch: Batch,
        refused: dict[int, Rejection],
        sent: int,
        retries: int,
        new_state: CursorState | None,
    ) -> None:
        report = self.report
        for rejection in refused.values():
            report.reject(rejection)
        report.retries += retries
        report.events_sent += sent
        report.batches += 1 if batch.events else 0
        if new_state is not None:
            self.state = new_state
            report.cursor_after = new_state.value
        if self.progress:
            self.progress(report)

    def _deliver(
        self, events: list[dict[str, Any]], on_retry: RetryHook, offset: int = 0
    ) -> list[tuple[int, MetaRequestError]]:
        """Send, retrying transient errors; on an invalid-parameter error, bisect to the bad events.

        Returns the refused events as (index in the batch, Meta's error).
        """
        try:
            call_with_retry(lambda: self.client.send(events), self.retry, on_retry=on_retry)
        except MetaRequestError as exc:
            if exc.code != INVALID_PARAMETER or exc.subcode == OBJECT_NOT_FOUND:
                raise
            if len(events) == 1:
                return [(offset, exc)]
            middle = len(events) // 2
            refused = self._deliver(events[:middle], on_retry, offset)
            refused += self._deliver(events[middle:], on_retry, offset + middle)
            if len(refused) == len(events):
                raise  # every event refused alone: the request itself is wrong, not the rows
            return refused
        return []

    def _meta_rejection(self, batch: Batch, index: int, error: MetaError) -> Rejection:
        rule = f"meta_{error.code or error.status or 'unreachable'}" + (
            f"_{error.subcode}" if error.subcode else ""
        )
        if isinstance(error, MetaRetryableError):
            rule = TRANSIENT_RULE
        detail = error.user_message or str(error)
        if error.fbtrace_id:
            detail += f" (fbtrace_id {error.fbtrace_id})"
        problem = Problem("event", rule, detail=detail)
        return Rejection(self.pipeline.name, batch.delivered_keys[index], (problem,), batch.key_values[index])


def _rejected_row(rejection: Rejection) -> RejectedRow:
    reasons = [_problem_dict(p) for p in rejection.problems]
    transient = any(p.rule == TRANSIENT_RULE for p in rejection.problems)
    return RejectedRow(rejection.row_key, reasons, rejection.key_values, transient)


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


def _column(name: str | None, columns: list[str]) -> int | None:
    return resolve_column(name, columns) if name else None


def _open_output(path: Path | None) -> Any:
    return path.open("wb") if path is not None else nullcontext(None)
