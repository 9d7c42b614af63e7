"""Alerts reach a real local HTTP receiver: once per condition until it clears, in JSON or Slack's
shape, never with a secret in them, and a receiver that fails never fails the run."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from capi_sync.alerts import Alerter, conditions
from capi_sync.config import AlertConfig, load_config
from capi_sync.errors import ConfigError
from capi_sync.report import RunReport
from capi_sync.state import RunStatus, StateStore
from tests.conftest import TOKEN, cli, make_orders, write_pipelines

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fake_graph import FakeGraph

HOOK_SECRET = "T0HOOKSECRETabc123"


class Receiver:
    """A webhook endpoint: records every POST body; answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append({"path": self.path, "raw": raw.decode(), "json": json.loads(raw)})
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{HOOK_SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


def with_alerts(folder: Path, graph: FakeGraph, text: str) -> Path:
    path = write_pipelines(folder, graph.url)
    path.write_text(text + path.read_text())
    return path


ALERTS = """
alerts:
  ops:
    webhook: ${ALERT_HOOK}
    on: [failed, rejected, stranded]
    rejected_share: 5%
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("ALERT_HOOK", receiver.url)


@pytest.mark.usefixtures("env")
def test_a_failing_pipeline_alerts_once_until_it_recovers(
    tmp_path: Path, graph: FakeGraph, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_orders(tmp_path / "shop.duckdb", 5)
    with_alerts(tmp_path, graph, ALERTS)
    monkeypatch.setenv("FB_ACCESS_TOKEN", "EAAB-wrong-token-77")
    assert cli("run", "purchases") == 1
    assert cli("run", "purchases") == 1  # still failing: no second alert
    (alert,) = [body["json"] for body in receiver.bodies]
    assert (alert["alert"], alert["trigger"], alert["pipeline"], alert["status"]) == (
        "ops",
        "failed",
        "purchases",
        "failed",
    )
    assert alert["run_id"]
    assert alert["rows_read"] == 0
    assert "EAAB-wrong-token-77" not in receiver.bodies[0]["raw"]  # the token it used is a secret too
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    assert cli("run", "purchases") == 0  # recovered: the condition clears, nothing is sent
    assert len(receiver.bodies) == 1
    make_orders(tmp_path / "shop.duckdb", 2, start_id=6, minutes_ago=300)
    monkeypatch.setenv("FB_ACCESS_TOKEN", "EAAB-wrong-token-77")
    assert cli("run", "purchases") == 1  # failing again: a new alert
    assert [body["json"]["trigger"] for body in receiver.bodies] == ["failed", "failed"]
    for body in receiver.bodies:
        assert HOOK_SECRET not in body["raw"]
        assert TOKEN not in body["raw"]


@pytest.mark.usefixtures("env")
def test_rejections_above_the_share_alert_in_slacks_shape(
    tmp_path: Path, graph: FakeGraph, receiver: Receiver
) -> None:
    make_orders(tmp_path / "shop.duckdb", 10)
    with_alerts(tmp_path, graph, ALERTS.replace("    on:", "    format: slack\n    on:"))
    graph.poisoned = lambda event: str(event.get("event_source_url", "")).endswith("/o/4")
    assert cli("run", "purchases") == 0
    (body,) = [body["json"] for body in receiver.bodies]
    assert body["text"].startswith("capi-sync rejected: purchases: 1 of 10 rows rejected (10.0%)")
    fields = {field["text"].split("\n")[0] for field in body["blocks"][1]["fields"]}
    assert {"*rows_rejected*", "*rows_read*", "*pipeline*"} <= fields


@pytest.mark.usefixtures("env")
def test_a_webhook_that_fails_never_fails_the_run(
    tmp_path: Path, graph: FakeGraph, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    make_orders(tmp_path / "shop.duckdb", 10)
    with_alerts(tmp_path, graph, ALERTS)
    receiver.status = 500
    graph.poisoned = lambda event: str(event.get("event_source_url", "")).endswith("/o/4")
    assert cli("run", "purchases") == 0
    assert len(receiver.bodies) == 1
    err = capsys.readouterr().err
    assert "alert ops (rejected) could not be sent" in err
    assert HOOK_SECRET not in err


def test_pipelines_choose_their_alerts_and_unknown_names_are_config_errors(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERT_HOOK", "https://hooks.example.com/x")
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    path = with_alerts(tmp_path, graph, ALERTS + "  quiet:\n    webhook: https://hooks.example.com/y\n")
    project = load_config(path)
    assert set(project.alerts_of(project.pipeline("purchases"))) == {"ops", "quiet"}
    path.write_text(
        path.read_text().replace("    cursor: updated_at\n", "    cursor: updated_at\n    alerts: [ops]\n")
    )
    project = load_config(path)
    assert set(project.alerts_of(project.pipeline("purchases"))) == {"ops"}
    path.write_text(path.read_text().replace("alerts: [ops]", "alerts: [opps]"))
    with pytest.raises(ConfigError, match="alert 'opps' is not defined"):
        load_config(path)


def report_with_shares(shares: dict[str, float], events: int = 100) -> RunReport:
    report = RunReport(pipeline="purchases", status=RunStatus.SUCCEEDED, rows_read=events, events_sent=events)
    report.quality.events = events
    for key, share in shares.items():
        report.quality.shapes["Purchase", (key,)] += round(share * events)
    return report


def history_with(shares: dict[str, float]) -> dict[str, Any]:
    keys = {
        key: {"events": round(share * 100), "share": share, "dropped": {}} for key, share in shares.items()
    }
    return {"match_quality": {"events": 100, "keys": keys}}


def test_coverage_drop_compares_each_key_with_the_median_of_recent_runs() -> None:
    alert = AlertConfig(webhook="https://hooks.example.com/x", coverage_drop=10)  # type: ignore[arg-type]
    history = [
        history_with({"em": 0.9, "ph": 0.5}),
        history_with({"em": 0.95, "ph": 0.55}),
        history_with({"em": 0.2}),
    ]
    fell = conditions(alert, report_with_shares({"em": 0.7, "ph": 0.5}), history)["coverage_drop"]
    assert fell is not None
    assert "em 70% (median 90%)" in fell.message
    assert "ph" not in fell.message  # 50% against a median of 50%
    assert conditions(alert, report_with_shares({"em": 0.85, "ph": 0.5}), history)["coverage_drop"] is None
    assert conditions(alert, report_with_shares({"em": 0.1}), [])["coverage_drop"] is None  # no history yet


def test_stale_fires_after_stale_after_without_a_success_and_clears_on_one(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, graph: FakeGraph
) -> None:
    monkeypatch.setenv("ALERT_HOOK", receiver.url)
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    path = with_alerts(
        tmp_path, graph, ALERTS.replace("[failed, rejected, stranded]", "[stale]") + "    stale_after: 2h\n"
    )
    project = load_config(path)
    pipeline = project.pipeline("purchases")
    started = dt.datetime.now(dt.UTC)
    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        alerter = Alerter(project, store)
        alerter.check_stale(pipeline, started, now=started + dt.timedelta(hours=1))
        assert receiver.bodies == []
        alerter.check_stale(pipeline, started, now=started + dt.timedelta(hours=3))
        alerter.check_stale(pipeline, started, now=started + dt.timedelta(hours=4))
        assert [body["json"]["trigger"] for body in receiver.bodies] == ["stale"]
        assert "no successful run since the scheduler started" in receiver.bodies[0]["json"]["message"]
        run = store.start_run("purchases")
        store.finish_run(run, RunStatus.SUCCEEDED)
        alerter.check_stale(pipeline, started)
        assert store.alerts_firing("purchases") == set()
