"""Alerts: a webhook told when a run fails, rejects too many rows, strands rows Meta could not take,
loses match-key coverage, sees Meta's match-quality score fall, or (under `schedule`) has not
succeeded for too long.

Each (alert, pipeline, trigger) fires once and stays quiet until its condition clears: the state
store remembers what is firing, so a pipeline failing every 15 minutes sends one alert, not a
storm. A webhook that fails is logged and never fails the run. Payloads carry counts and names,
never a row's values or a secret (every string is scrubbed).
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from capi_sync.secrets import scrub
from capi_sync.state import RunStatus

if TYPE_CHECKING:
    from capi_sync.config import AlertConfig, AlertTrigger, PipelineConfig, ProjectConfig
    from capi_sync.report import RunReport
    from capi_sync.state import StateStore

log = logging.getLogger("capi_sync.alerts")

HISTORY_RUNS = 10  # coverage_drop compares against the median of this many successful runs


@dataclass(frozen=True)
class Condition:
    trigger: AlertTrigger
    message: str


def conditions(
    alert: AlertConfig, report: RunReport, history: list[dict[str, Any]]
) -> dict[AlertTrigger, Condition | None]:
    """Per trigger the alert listens to (except `stale`, checked by the scheduler): the condition
    this run shows, or None where it holds no more (a firing alert clears)."""
    found: dict[AlertTrigger, Condition | None] = {}
    name = report.pipeline
    if "failed" in alert.on:
        found["failed"] = (
            Condition("failed", f"{name}: run failed: {report.error or 'no reason given'}")
            if report.status == RunStatus.FAILED
            else None
        )
    if "rejected" in alert.on and report.status != RunStatus.INTERRUPTED:
        share = report.rows_rejected / report.rows_read if report.rows_read else 0.0
        found["rejected"] = (
            Condition(
                "rejected",
                f"{name}: {report.rows_rejected:,} of {report.rows_read:,} rows rejected ({share:.1%}),"
                f" above {alert.rejected_share:.1%}",
            )
            if share > alert.rejected_share
            else None
        )
    if "stranded" in alert.on and report.status != RunStatus.INTERRUPTED:
        stranded = report.pending_total or report.rows_lost
        found["stranded"] = (
            Condition(
                "stranded",
                f"{name}: {report.pending_total:,} row(s) Meta could not take are pending"
                + (f", {report.rows_lost:,} aged out and are lost" if report.rows_lost else ""),
            )
            if stranded
            else None
        )
    if "coverage_drop" in alert.on and report.status == RunStatus.SUCCEEDED:
        found["coverage_drop"] = _coverage_drop(alert, report, history)
    if "quality_drop" in alert.on and report.meta_quality is not None:  # Meta's scores came
        found["quality_drop"] = _quality_drop(alert, report, history)
    return found


def _quality_drop(alert: AlertConfig, report: RunReport, history: list[dict[str, Any]]) -> Condition | None:
    """Meta's composite score for an event name fell more than `quality_drop` below its median
    over the last successful runs that fetched it (`settings.fetch_quality`)."""
    past: dict[str, list[float]] = {}
    for document in history:
        for entry in document.get("meta_quality") or []:
            if isinstance(entry.get("composite_score"), int | float):
                past.setdefault(entry["event_name"], []).append(entry["composite_score"])
    drops = []
    for entry in report.meta_quality or []:
        score, scores = entry["composite_score"], past.get(entry["event_name"])
        if score is None or not scores:
            continue
        median = statistics.median(scores)
        if median - score > alert.quality_drop:
            drops.append(f"{entry['event_name']} {score:g} (median {median:g})")
    if not drops:
        return None
    message = f"{report.pipeline}: Meta's Event Match Quality fell: {', '.join(drops)}"
    return Condition("quality_drop", message)


def _coverage_drop(alert: AlertConfig, report: RunReport, history: list[dict[str, Any]]) -> Condition | None:
    """A key's share of sent events fell more than `coverage_drop` points below its median share
    over the last successful runs (which need to have sent events at all)."""
    past = [doc["match_quality"] for doc in history if doc.get("match_quality", {}).get("events")]
    if not past or not report.quality.events:
        return None
    now = {key: share for key, _events, share, _dropped in report.quality.rows()}
    drops = []
    for key in sorted({key for quality in past for key in quality["keys"]}):
        median = statistics.median(quality["keys"].get(key, {}).get("share", 0.0) for quality in past)
        points = (median - now.get(key, 0.0)) * 100
        if points > alert.coverage_drop:
            drops.append(f"{key} {now.get(key, 0.0):.0%} (median {median:.0%})")
    if not drops:
        return None
    return Condition("coverage_drop", f"{report.pipeline}: match-key coverage fell: {', '.join(drops)}")


class Alerter:
    """Sends a project's alerts for finished runs and stale pipelines; remembers what is firing."""

    def __init__(self, project: ProjectConfig, store: StateStore) -> None:
        self.project = project
        self.store = store

    def after_run(self, report: RunReport) -> None:
        """Evaluate and send the alerts of one finished run (dry runs alert nobody)."""
        if report.dry_run:
            return
        pipeline = self.project.pipeline(report.pipeline)
        alerts = self.project.alerts_of(pipeline)
        if not alerts:
            return
        history = self.store.successful_results(pipeline.name, HISTORY_RUNS + 1)
        history = [doc for doc in history if doc.get("run_id") != report.run_uid][:HISTORY_RUNS]
        firing = self.store.alerts_firing(pipeline.name)
        for name, alert in alerts.items():
            for trigger, condition in conditions(alert, report, history).items():
                self._settle(
                    name, alert, pipeline, trigger=trigger, condition=condition, firing=firing, report=report
                )

    def check_stale(
        self, pipeline: PipelineConfig, started: dt.datetime, now: dt.datetime | None = None
    ) -> None:
        """Under `schedule`: no successful run for `stale_after`, counted from the last success,
        or from `started` (the scheduler's start) for a pipeline that never succeeded."""
        now = now or dt.datetime.now(dt.UTC)
        last = self.store.last_success(pipeline.name)
        firing = self.store.alerts_firing(pipeline.name)
        for name, alert in self.project.alerts_of(pipeline).items():
            if "stale" not in alert.on:
                continue
            stale = now - (last or started) > alert.stale_after
            since = (
                f"since {last:%Y-%m-%d %H:%M} UTC"
                if last is not None
                else f"since the scheduler started at {started:%Y-%m-%d %H:%M} UTC"
            )
            condition = (
                Condition(
                    "stale", f"{pipeline.name}: no successful run {since} (stale after {alert.stale_after})"
                )
                if stale
                else None
            )
            self._settle(
                name, alert, pipeline, trigger="stale", condition=condition, firing=firing, report=None
            )

    def _settle(
        self,
        name: str,
        alert: AlertConfig,
        pipeline: PipelineConfig,
        *,
        trigger: AlertTrigger,
        condition: Condition | None,
        firing: set[tuple[str, str]],
        report: RunReport | None,
    ) -> None:
        was_firing = (name, trigger) in firing
        if condition is None:
            if was_firing:
                self.store.set_alert_firing(name, pipeline.name, trigger, firing=False, run_uid=None)
                log.info(
                    "%s: alert %s (%s) cleared",
                    pipeline.name,
                    name,
                    trigger,
                    extra={"event": "alert_cleared"},
                )
            return
        if was_firing:
            return  # told once already; quiet until the condition clears
        run_uid = report.run_uid if report is not None else None
        self.store.set_alert_firing(name, pipeline.name, trigger, firing=True, run_uid=run_uid)
        send(name, alert, payload(name, pipeline.name, condition, report))


def payload(name: str, pipeline: str, condition: Condition, report: RunReport | None) -> dict[str, Any]:
    counts = (
        {
            "rows_read": report.rows_read,
            "events_sent": report.events_sent,
            "rows_rejected": report.rows_rejected,
            "rows_pending": report.rows_pending,
            "rows_pending_total": report.pending_total,
            "rows_lost": report.rows_lost,
        }
        if report is not None
        else {}
    )
    return {
        "alert": name,
        "trigger": condition.trigger,
        "pipeline": pipeline,
        "run_id": report.run_uid if report is not None else None,
        "status": str(report.status) if report is not None else None,
        **counts,
        "message": scrub(condition.message),
    }


def slack_body(facts: dict[str, Any]) -> dict[str, Any]:
    """An incoming-webhook message with the same facts: a headline, then one field per figure."""
    figures = [
        {"type": "mrkdwn", "text": f"*{key}*\n{value}"}
        for key, value in facts.items()
        if key not in {"message", "alert"} and value is not None
    ]
    return {
        "text": f"capi-sync {facts['trigger']}: {facts['message']}",
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*capi-sync* `{facts['alert']}`: {facts['message']}"},
            },
            {"type": "section", "fields": figures[:10]},  # Slack takes at most ten fields
        ],
    }


def send(name: str, alert: AlertConfig, facts: dict[str, Any]) -> bool:
    """POST the alert; a failure is logged (scrubbed) and swallowed: alerts never fail a run."""
    body = slack_body(facts) if alert.format == "slack" else facts
    try:
        answer = requests.post(alert.webhook.get_secret_value(), json=body, timeout=alert.timeout)
        answer.raise_for_status()
    except requests.RequestException as exc:
        log.warning(
            "alert %s (%s) could not be sent: %s",
            name,
            facts["trigger"],
            scrub(str(exc)),
            extra={"event": "alert_failed", "alert": name, "trigger": facts["trigger"]},
        )
        return False
    log.info(
        "alert %s sent: %s",
        name,
        facts["message"],
        extra={"event": "alert_sent", "alert": name, "trigger": facts["trigger"]},
    )
    return True
