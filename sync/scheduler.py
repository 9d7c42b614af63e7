"""`capi-sync schedule`: run pipelines on their `schedule:` in the foreground until told to stop.

Jobs are built once from the YAML; the durable state is each pipeline's cursor, so a restarted
scheduler simply continues. Missed runs coalesce into one, a pipeline never runs twice at once
(here by APScheduler's `max_instances`, across processes by the state store's lock), and a stop
lets the runs in flight commit their batches before the process exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from capi_sync import results
from capi_sync.errors import CapiSyncError, ConfigError, PipelineLocked
from capi_sync.runner import RunOptions, run_pipeline
from capi_sync.schedules import make_trigger
from capi_sync.state import StateStore

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from capi_sync.config import ProjectConfig
    from capi_sync.report import RunReport

log = logging.getLogger("capi_sync.scheduler")
CHECKS_JOB = "capi-sync-checks"
TEST_CODE_WARNING = (
    "settings.test_event_code is set under a schedule: Meta shows these events as test events and still"
    " counts them; remove it once the pipeline is checked"
)


class Scheduler:
    """Usage: `Scheduler(project, names, state_url).run()`; `stop()` from a signal handler."""

    def __init__(
        self,
        project: ProjectConfig,
        names: Sequence[str],
        state_url: str,
        *,
        run_now: bool = False,
        summarize: Callable[[RunReport], str] | None = None,
        on_report: Callable[[RunReport], None] | None = None,
        every_minute: Callable[[], None] | None = None,
    ) -> None:
        pipelines = [project.pipeline(name) for name in names] or [
            p for p in project.pipelines.values() if p.schedule
        ]
        unscheduled = [p.name for p in pipelines if not p.schedule]
        if unscheduled or not pipelines:
            problem = (
                [f"pipeline '{name}': schedule: not set, so it cannot be scheduled" for name in unscheduled]
                if unscheduled
                else ["no pipeline has a schedule: add e.g. `schedule: '@hourly'` to a pipeline"]
            )
            raise ConfigError(problem, source=str(project.path))
        self.project = project
        self.state_url = state_url
        self.summarize = summarize or _summary
        self.on_report = on_report  # each finished run's report (metrics, alerts)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._running = 0
        self.scheduler = BlockingScheduler(timezone="UTC")
        first_run = {"next_run_time": dt.datetime.now(dt.UTC)} if run_now else {}  # None would pause it
        for pipeline in pipelines:
            assert pipeline.schedule is not None
            self.scheduler.add_job(
                self._run_one,
                make_trigger(pipeline.schedule, pipeline.timezone),
                args=[pipeline.name],
                id=pipeline.name,
                name=pipeline.name,
                coalesce=True,  # a scheduler that slept through five runs makes one
                max_instances=1,
                misfire_grace_time=None,  # late is better than never: the cursor makes it safe
                **first_run,
            )
        self.names = [p.name for p in pipelines]
        # Test events are still counted by Meta: a schedule left with a test code sends them for real.
        self.testing = {p.name for p in pipelines if p.settings.test_event_code}
        if every_minute is not None:  # checks between runs (stale pipelines)
            self.scheduler.add_job(
                every_minute, IntervalTrigger(minutes=1), id=CHECKS_JOB, coalesce=True, max_instances=1
            )

    def run(self) -> None:
        """Block until `stop()`; then wait for the runs in flight to commit and finish."""
        now = dt.datetime.now(dt.UTC)
        for name in sorted(self.testing):
            log.warning(
                "%s: %s",
                name,
                TEST_CODE_WARNING,
                extra={"event": "test_event_code_scheduled", "pipeline": name},
            )
        for job in self.scheduler.get_jobs():
            if job.id == CHECKS_JOB:
                continue
            first = getattr(job, "next_run_time", None) or job.trigger.get_next_fire_time(None, now)
            log.info("%s: scheduled (%s), first run %s", job.name, job.trigger, _when(first))
        self.scheduler.start()
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0)
        log.info("scheduler stopped")

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        log.info("stopping: waiting for the runs in flight to commit")
        self.scheduler.shutdown(wait=False)

    def _run_one(self, name: str) -> None:
        if self._stop.is_set():
            return
        with self._idle:
            self._running += 1
        try:
            with StateStore(self.state_url) as store:
                report = run_pipeline(self.project, name, store, RunOptions(stop=self._stop))
            summary = self.summarize(report) + (f" ({TEST_CODE_WARNING})" if name in self.testing else "")
            log.info("%s", summary, extra={"event": "run_finished", **results.document(report)})
            if self.on_report is not None:
                try:
                    self.on_report(report)
                except CapiSyncError as exc:  # metrics or alerts failing never stop the scheduler
                    log.warning("%s: after the run: %s", name, exc)
        except KeyboardInterrupt:
            log.info("%s: interrupted after committing the batches in flight", name)
        except PipelineLocked as exc:
            log.warning("%s: skipped: %s", name, exc)
        except CapiSyncError as exc:
            log.error("%s: %s", name, exc)
        except Exception:
            log.exception("%s: unexpected error; the scheduler keeps going", name)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()
            job = self.scheduler.get_job(name) if not self._stop.is_set() else None
            if job is not None:
                log.info("%s: next run %s", name, _when(job.next_run_time))


def _when(moment: dt.datetime | None) -> str:
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "-"


def _summary(report: RunReport) -> str:
    return (
        f"{report.pipeline}: {report.status} in {report.seconds:.1f}s: {report.rows_read:,} read,"
        f" {report.events_sent:,} sent, {report.rows_rejected:,} rejected, {report.rows_pending:,} pending"
        + (f" ({report.pending_total:,} pending in all)" if report.pending_total else "")
        + (f", {report.rows_null_cursor:,} NULL cursor" if report.rows_null_cursor else "")
        + (f"; cursor {report.cursor_after}" if report.cursor_after is not None else "")
        + (f"; error: {report.error}" if report.error else "")
    )
