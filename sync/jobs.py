"""One pipeline run the way every front end starts it: the CLI, Dagster's assets, Airflow's operator.

A run is incremental (rows past the cursor) or, given a date range, a backfill of `[start, end)`.
Either way it is recorded in the state store (so `capi-sync runs` shows it), and the project's
alerts are evaluated after it, exactly as after a CLI run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capi_sync.alerts import Alerter
from capi_sync.backfill import run_backfill
from capi_sync.config import load_config
from capi_sync.runner import RunOptions, run_pipeline
from capi_sync.state import StateStore, default_state_url

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable
    from pathlib import Path

    from capi_sync.backfill import Day
    from capi_sync.config import ProjectConfig
    from capi_sync.report import RunReport
    from capi_sync.runner import Progress


def sync(
    project: ProjectConfig,
    name: str,
    store: StateStore,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    clip: bool = False,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    on_day: Callable[[Day, int, int], None] | None = None,
) -> RunReport:
    """Run pipeline `name`: incrementally, or as a backfill of `[start, end)` when both are given.

    Returns the report, also for a run that failed (`report.ok`); raises for a configuration error
    found before any row is read (`ConfigError`, `BackfillRefused`, ...).
    """
    if (start is None) != (end is None):
        msg = "a backfill needs both start and end"
        raise ValueError(msg)
    options = options or RunOptions()
    if start is None or end is None:
        report = run_pipeline(project, name, store, options, progress=progress)
    else:
        report = run_backfill(
            project,
            name,
            store,
            start=start,
            end=end,
            options=options,
            clip=clip,
            progress=progress,
            on_day=on_day,
        )
    Alerter(project, store).after_run(report)
    return report


def open_project(pipelines_file: str | Path, state: str | None = None) -> tuple[ProjectConfig, StateStore]:
    """The pipelines file and its state store, found as the CLI finds them: `state` is a SQLAlchemy
    URL or a SQLite file path; unset, `CAPI_SYNC_STATE`, else `.capi-sync/state.db` beside the file."""
    project = load_config(pipelines_file)
    return project, StateStore(state or default_state_url(project.path))
