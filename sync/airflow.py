"""An Airflow operator for capi-sync's pipelines (`pip install 'capi-sync[airflow]'`).

    from capi_sync.airflow import CapiSyncOperator

    CapiSyncOperator(task_id="purchases", pipeline="purchases", pipelines_file="/opt/capi/pipelines.yaml",
                     mode="incremental", pool="meta_graph_api")

`mode="incremental"` sends the rows past the pipeline's cursor; `mode="backfill"` sends the rows
dated in the DAG run's data interval (whole days in the pipeline's timezone). The run goes through
`capi_sync.jobs.sync`, the CLI's own path, so `capi-sync runs` lists it and the project's alerts
apply. Its results document is the task's return value (XCom `return_value`); a failed run fails
the task. Airflow pools cap how many pipelines talk to the Graph API at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from airflow.sdk import BaseOperator  # Airflow 3's Task SDK
from airflow.sdk.exceptions import AirflowException

from capi_sync import jobs, results

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

    from capi_sync.config import ProjectConfig


class CapiSyncOperator(BaseOperator):
    """Run one capi-sync pipeline; return its results document.

    `state` is the state store (a SQLite path or a SQLAlchemy URL); unset, `CAPI_SYNC_STATE`, else
    `.capi-sync/state.db` beside the pipelines file. `fail_on_rejected` (a share, 0.02) fails the
    task when more of the rows read were rejected; `clip` sends the part of a backfill's range Meta
    still accepts instead of refusing it.
    """

    template_fields: Sequence[str] = ("pipeline", "pipelines_file", "state")
    ui_color = "#1877f2"

    def __init__(
        self,
        *,
        pipeline: str,
        pipelines_file: str,
        mode: Literal["incremental", "backfill"] = "incremental",
        state: str | None = None,
        fail_on_rejected: float | None = None,
        clip: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("incremental", "backfill"):
            msg = f"mode is 'incremental' or 'backfill', not {mode!r}"
            raise ValueError(msg)
        self.pipeline = pipeline
        self.pipelines_file = pipelines_file
        self.mode = mode
        self.state = state
        self.fail_on_rejected = fail_on_rejected
        self.clip = clip

    def execute(self, context: Any) -> dict[str, Any]:
        project, store = jobs.open_project(self.pipelines_file, self.state)
        start = end = None
        if self.mode == "backfill":
            start, end = days_of(
                project, self.pipeline, context.get("data_interval_start"), context.get("data_interval_end")
            )
        with store:
            report = jobs.sync(project, self.pipeline, store, start=start, end=end, clip=self.clip)
        document = results.document(report)
        self.log.info(
            "capi-sync %s %s: %s, %s events sent, %s rows rejected, %s pending (run %s)",
            document["kind"],
            self.pipeline,
            document["status"],
            document["events_sent"],
            document["rows_rejected"],
            document["rows_pending_total"],
            document["run_id"],
        )
        if not report.ok:
            context["ti"].xcom_push(key="results", value=document)
            raise AirflowException(f"capi-sync {self.pipeline}: {report.error or 'run failed'}")
        share = report.rows_rejected / report.rows_read if report.rows_read else 0.0
        if self.fail_on_rejected is not None and share > self.fail_on_rejected:
            context["ti"].xcom_push(key="results", value=document)
            msg = (
                f"capi-sync {self.pipeline}: {report.rows_rejected:,} of {report.rows_read:,} rows rejected"
                f" ({share:.1%}), above fail_on_rejected {self.fail_on_rejected:.1%}"
            )
            raise AirflowException(msg)
        return document


def days_of(project: ProjectConfig, pipeline: str, start: Any, end: Any) -> tuple[dt.date, dt.date]:
    """The DAG run's data interval as `[first day, day after the last)` in the pipeline's timezone."""
    if start is None or end is None:
        msg = f"capi-sync {pipeline}: backfill mode needs the DAG run's data interval (a scheduled DAG)"
        raise AirflowException(msg)
    zone = ZoneInfo(project.pipeline(pipeline).timezone)
    first, after = start.astimezone(zone).date(), end.astimezone(zone).date()
    if first >= after:
        msg = (
            f"capi-sync {pipeline}: backfill mode sends whole days; the data interval {start} to {end}"
            " holds none (schedule the DAG with a data interval of a day or more, such as"
            " CronDataIntervalTimetable('@daily', timezone=...))"
        )
        raise AirflowException(msg)
    return first, after
