"""Send a past date range again, in daily chunks, without touching the incremental cursor.

A backfill keeps its own position in the state store, named after the pipeline and the range, so
running the same range again after an interruption continues where it stopped, and running it again
after it finished sends nothing. Events carry the same deterministic `event_id` as incremental runs,
so a backfill that overlaps them is deduplicated by Meta.
"""

from __future__ import annotations

import datetime as dt
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from capi_sync.connectors import Window, open_source
from capi_sync.errors import BackfillRefused, ConfigError
from capi_sync.mappings.spec import column_of
from capi_sync.preparing import prepare, setup_stage
from capi_sync.report import RunReport
from capi_sync.runner import RunOptions, RunSession, session
from capi_sync.windows import CursorClock, meta_max_age

if TYPE_CHECKING:
    from collections.abc import Callable

    from capi_sync.config import PipelineConfig, ProjectConfig
    from capi_sync.runner import Progress
    from capi_sync.state import StateStore


@dataclass(frozen=True)
class Day:
    """One chunk: `[start, end)` in the column's type, and the local date it covers."""

    date: dt.date
    start: object
    end: object


@dataclass(frozen=True)
class Plan:
    column: str
    days: list[Day]
    notes: list[str]


def backfill_prefix(pipeline: str) -> str:
    return f"{pipeline}#backfill:"


def backfill_name(pipeline: str, start: dt.date, end: dt.date) -> str:
    return f"{backfill_prefix(pipeline)}{start.isoformat()}..{end.isoformat()}"


def backfill_column(pipeline: PipelineConfig) -> str:
    """`backfill_column`, else the column mapped to event_time, else the cursor."""
    column = (
        pipeline.backfill_column
        or column_of(pipeline.mapping.server_event.get("event_time", ""))
        or pipeline.cursor
    )
    if not column:
        raise ConfigError(
            [
                f"pipeline '{pipeline.name}': backfill_column: not set, and event_time is not a column;"
                " name the timestamp column that dates each row"
            ]
        )
    return column


def plan_backfill(
    pipeline: PipelineConfig,
    column: str,
    kind: str | None,
    start: dt.date,
    end: dt.date,
    *,
    now: dt.datetime,
    clip: bool,
) -> Plan:
    """Daily chunks of `[start, end)` in the pipeline's zone, refused or clipped at Meta's age limit."""
    name = pipeline.name
    if end <= start:
        raise ConfigError([f"pipeline '{name}': backfill: --end {end} must be after --start {start}"])
    clock = CursorClock(kind, pipeline.zone)
    if not clock.is_time:
        found = f"is {kind}" if kind else "has a type capi-sync cannot tell"
        problem = f"'{column}' {found}; backfill needs a timestamp or date column"
        raise ConfigError([f"pipeline '{name}': backfill_column: {problem}"])
    max_age = meta_max_age(pipeline.settings.action_source)
    oldest = now - max_age
    range_start = dt.datetime.combine(start, dt.time(), pipeline.zone).astimezone(dt.UTC)
    range_end = dt.datetime.combine(end, dt.time(), pipeline.zone).astimezone(dt.UTC)
    notes = []
    clipped_from = None
    if range_start < oldest:
        limit = f"{max_age.days} days"
        if range_end <= oldest:
            raise BackfillRefused(
                [
                    f"pipeline '{name}': backfill {start}..{end} lies entirely before"
                    f" {oldest:%Y-%m-%d %H:%M} UTC; Meta rejects events older than {limit}"
                ]
            )
        if not clip:
            raise BackfillRefused(
                [
                    f"pipeline '{name}': Meta rejects events older than {limit}, so"
                    f" {start} 00:00 .. {oldest.astimezone(pipeline.zone):%Y-%m-%d %H:%M}"
                    f" ({pipeline.timezone}) of this range would be refused. Run again with --clip to"
                    f" send only {oldest.astimezone(pipeline.zone):%Y-%m-%d %H:%M} .. {end}, or"
                    f" choose --start {(oldest.astimezone(pipeline.zone) + dt.timedelta(days=1)).date()}"
                ]
            )
        clipped_from = clock.from_utc(oldest)
        notes.append(f"clipped to Meta's {limit} limit: sending from {clipped_from!s} ({pipeline.timezone})")
    days = []
    day = start
    while day < end:
        following = day + dt.timedelta(days=1)
        day_start, day_end = clock.day_start(day), clock.day_start(following)
        if clipped_from is not None:
            if day_end <= clipped_from:
                day = following
                continue
            day_start = max(day_start, clipped_from)
        days.append(Day(day, day_start, day_end))
        day = following
    return Plan(column, days, notes)


def run_backfill(
    project: ProjectConfig,
    name: str,
    store: StateStore,
    *,
    start: dt.date,
    end: dt.date,
    options: RunOptions | None = None,
    clip: bool = False,
    now: dt.datetime | None = None,
    progress: Progress | None = None,
    on_day: Callable[[Day, int, int], None] | None = None,
) -> RunReport:
    """Send the rows dated in `[start, end)`; `on_day(day, index, total)` announces each chunk."""
    pipeline = project.pipeline(name)
    column = backfill_column(pipeline)
    position = backfill_name(name, start, end)
    options = options or RunOptions()
    with ExitStack() as stack:
        with setup_stage(pipeline):
            source = stack.enter_context(open_source(project.warehouse_of(pipeline)))
            prepared = prepare(pipeline, source)
        # Refused here, before anything is recorded.
        plan = plan_backfill(
            pipeline, column, prepared.kind(column), start, end, now=now or dt.datetime.now(dt.UTC), clip=clip
        )
        index = prepared.index(column)
        assert index is not None  # prepare() checked the column exists
        column = prepared.columns[index]
        report = RunReport(pipeline=name, dry_run=options.dry_run, kind="backfill", notes=list(plan.notes))
        with session(
            project, pipeline, store, options, report,
            kind="backfill", lock_name=position, progress=progress, opened=(source, prepared),
        ) as run:  # fmt: skip
            run.follow(position, column)
            _send_days(run, plan, column, on_day)
    return report


def _send_days(
    run: RunSession, plan: Plan, column: str, on_day: Callable[[Day, int, int], None] | None
) -> None:
    """Day by day, each resuming where an interrupted backfill left it."""
    for number, day in enumerate(plan.days, 1):
        if on_day is not None:
            on_day(day, number, len(plan.days))
        done_up_to = run.position
        if done_up_to is not None and done_up_to >= day.end:
            continue  # sent before an interruption
        window = Window(
            order_by=(column, *run.prepared.key_columns),
            cursor=column,
            start=day.start if done_up_to is None else max(day.start, done_up_to),
            end=day.end,
            purpose="backfill",
        )
        run.execute(window)
