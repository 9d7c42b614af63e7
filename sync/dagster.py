"""Dagster assets for capi-sync's pipelines (`pip install 'capi-sync[dagster]'`).

One asset per pipeline, in one multi-asset, the way dagster-dlt and dagster-sling model a tool
that moves several tables in one step:

    from dagster import Definitions
    from capi_sync.dagster import CapiSyncResource, capi_sync_assets

    meta_events = capi_sync_assets("pipelines.yaml", deps={"purchases": ["analytics", "orders"]})
    defs = Definitions(assets=[meta_events], resources={"capi_sync": CapiSyncResource()})

Unpartitioned, a materialization is an incremental run. With `partitions_def` (daily), each
partition is a backfill of its day, and a range of days is one backfill (single-run policy). Each
run goes through `capi_sync.jobs.sync`, the CLI's own path: it is recorded in the state store,
`capi-sync runs` lists it, and the project's alerts apply. Materialization metadata carries the
run's facts; an asset check per pipeline fails when too large a share of its rows was rejected.
"""

# No `from __future__ import annotations`: Dagster reads the asset function's annotations as objects.
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from capi_sync import jobs, results
from capi_sync.config import load_config
from capi_sync.errors import CapiSyncError
from capi_sync.report import RunReport

POOL = "meta_graph_api"  # Dagster's concurrency pool for every capi-sync run, unless told otherwise
REJECTED_CHECK = "rejected_share"


class CapiSyncResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where runs are recorded: `state` is a SQLite file path or a SQLAlchemy URL (PostgreSQL when
    several hosts run pipelines). Unset: `CAPI_SYNC_STATE`, else `.capi-sync/state.db` beside the
    pipelines file, as for the CLI, so `capi-sync runs` sees what Dagster ran."""

    state: str | None = None

    def run(
        self,
        pipelines_file: str | Path,
        pipeline: str,
        *,
        start: dt.date | None = None,
        end: dt.date | None = None,
        clip: bool = False,
    ) -> RunReport:
        """One run of `pipeline`: incremental, or a backfill of `[start, end)`."""
        project, store = jobs.open_project(pipelines_file, self.state)
        with store:
            return jobs.sync(project, pipeline, store, start=start, end=end, clip=clip)


def capi_sync_assets(
    pipelines_file: str | Path,
    *,
    select: Sequence[str] | None = None,
    deps: Mapping[str, Any] | None = None,
    key_prefix: Sequence[str] = ("capi_sync",),
    partitions_def: dg.TimeWindowPartitionsDefinition | None = None,
    max_rejected_share: float = 0.05,
    clip: bool = False,
    pool: str | None = POOL,
    group_name: str | None = "capi_sync",
    name: str | None = None,
) -> dg.AssetsDefinition:
    """A multi-asset with one asset per pipeline of `pipelines_file` (or those in `select`).

    `deps` maps a pipeline to the upstream asset key (or keys) it reads: the warehouse table or
    dbt model. `partitions_def` (a `DailyPartitionsDefinition` in the pipelines' timezone) makes
    each partition a backfill of that day; `clip` sends the part of a range Meta still accepts
    (7 days back) instead of refusing it. `max_rejected_share` is where each pipeline's asset check
    fails. Every run asks for a slot of Dagster's `pool`, so pipelines together stay within the
    Graph API's budget.
    """
    project = load_config(pipelines_file)
    names = list(select) if select is not None else list(project.pipelines)
    for pipeline in names:
        project.pipeline(pipeline)  # an unknown name fails at definition time
    unknown = sorted(set(deps or {}) - set(names))
    if unknown:
        msg = f"deps name pipelines that are not selected: {', '.join(unknown)}"
        raise dg.DagsterInvalidDefinitionError(msg)
    if partitions_def is not None:
        zone = partitions_def.timezone or "UTC"
        if mismatched := [p for p in names if project.pipeline(p).timezone != zone]:
            msg = (
                f"partitions_def is in {zone}, pipelines {', '.join(mismatched)} date rows in another"
                " timezone: give the partitions the pipelines' timezone, so a partition is their day"
            )
            raise dg.DagsterInvalidDefinitionError(msg)
    keys = {pipeline: dg.AssetKey([*key_prefix, pipeline]) for pipeline in names}
    specs = [
        dg.AssetSpec(
            keys[pipeline],
            deps=_as_list((deps or {}).get(pipeline)),
            description=f"Conversions API events of capi-sync pipeline '{pipeline}'",
            kinds={"meta"},
            group_name=group_name,
            skippable=True,
        )
        for pipeline in names
    ]
    checks = [
        dg.AssetCheckSpec(
            REJECTED_CHECK,
            asset=keys[pipeline],
            description=f"at most {max_rejected_share:.1%} of the rows a run reads are rejected",
        )
        for pipeline in names
    ]
    file = Path(pipelines_file)

    @dg.multi_asset(
        specs=specs,
        check_specs=checks,
        name=name or "capi_sync_" + "_".join(names)[:100],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run() if partitions_def is not None else None,
        can_subset=True,
        pool=pool,
    )
    def _assets(context: dg.AssetExecutionContext, capi_sync: CapiSyncResource) -> Iterator[Any]:
        start = end = None
        if context.has_partition_key_range or context.has_partition_key:
            window = context.partition_time_window
            start, end = window.start.date(), window.end.date()
        failed = []
        for pipeline, key in keys.items():
            if key not in context.selected_asset_keys:
                continue
            try:
                report = capi_sync.run(file, pipeline, start=start, end=end, clip=clip)
            except CapiSyncError as exc:  # refused before a row was read: a range Meta no longer takes
                failed.append(f"{pipeline}: {exc}")
                context.log.error(f"capi-sync did not run {pipeline}: {exc}")
                continue
            document = results.document(report)
            if not report.ok:
                failed.append(f"{pipeline}: {report.error or 'run failed'}")
                context.log.error(f"capi-sync run {report.run_uid} of {pipeline} failed: {report.error}")
                continue
            yield dg.MaterializeResult(asset_key=key, metadata=materialization_metadata(document))
            share = report.rows_rejected / report.rows_read if report.rows_read else 0.0
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=REJECTED_CHECK,
                passed=share <= max_rejected_share,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "rejected_share": dg.MetadataValue.float(round(share, 6)),
                    "max_rejected_share": dg.MetadataValue.float(max_rejected_share),
                    "rows_rejected": dg.MetadataValue.int(report.rows_rejected),
                    "rows_read": dg.MetadataValue.int(report.rows_read),
                },
            )
        if failed:  # after the others ran: one pipeline's failure never holds the rest back
            raise dg.Failure(description="; ".join(failed))

    return _assets


def materialization_metadata(document: Mapping[str, Any]) -> dict[str, Any]:
    """A run's results document as Dagster metadata: its counts, rejections by reason, the share
    of sent events carrying each customer key, the cursor before and after, run id and duration."""
    quality = document["match_quality"]
    return {
        "run_id": dg.MetadataValue.text(document["run_id"]),
        "kind": dg.MetadataValue.text(document["kind"]),
        "events_sent": dg.MetadataValue.int(document["events_sent"]),
        "rows_read": dg.MetadataValue.int(document["rows_read"]),
        "rows_rejected": dg.MetadataValue.int(document["rows_rejected"]),
        "rows_pending": dg.MetadataValue.int(document["rows_pending_total"]),
        "rejected_by_reason": dg.MetadataValue.json(
            {f"{item['field']}: {item['rule']}": item["rows"] for item in document["rejected_by_reason"]}
        ),
        "match_quality": dg.MetadataValue.json(
            {key: figures["share"] for key, figures in quality["keys"].items()}
        ),
        "cursor_before": dg.MetadataValue.text(_text(document["cursor_before"])),
        "cursor_after": dg.MetadataValue.text(_text(document["cursor_after"])),
        "duration_seconds": dg.MetadataValue.float(document["duration_seconds"]),
    }


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _as_list(value: Any) -> list[Any]:
    """One upstream key (a string, a key path or an AssetKey) or several, as a list of deps."""
    if value is None:
        return []
    if isinstance(value, str | dg.AssetKey):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
        return [dg.AssetKey(list(value))]  # ["analytics", "orders"]: one key's path
    return list(value)
