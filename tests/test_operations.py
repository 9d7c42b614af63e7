"""Running capi-sync where nobody reads a terminal: JSON logs, results documents, global options
before the subcommand, several pipelines per run, `--fail-on-rejected`, progress lines."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from capi_sync import results
from capi_sync.cli import _ProgressLines
from capi_sync.report import RunReport
from tests.conftest import PIPELINES, TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph

TWO_PIPELINES = (
    PIPELINES
    + """
  leads:
    warehouse: shop
    destination: meta
    query: select order_id, email, created_at, updated_at from orders where order_id % 2 = 0
    primary_key: order_id
    cursor: updated_at
    settings: {{action_source: system_generated}}
    mapping:
      server_event: {{event_name: {{value: Lead}}, event_time: created_at}}
      customer_info: {{em: email}}
"""
)


def capi_sync(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as cron or a container would start it (no terminal)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "capi-sync"), *args],
        cwd=folder,
        env={**os.environ, "FB_ACCESS_TOKEN": TOKEN, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def order_is(order_id: int) -> Any:
    return lambda event: str(event.get("event_source_url", "")).endswith(f"/o/{order_id}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed: a line that is not one JSON object fails the test."""
    return [orjson.loads(line) for line in text.splitlines()]


def validate(document: Any) -> None:
    jsonschema.Draft202012Validator(results.schema(), format_checker=jsonschema.FormatChecker()).validate(
        document
    )


def test_with_json_logs_every_line_is_a_json_object_and_the_last_is_run_finished(
    tmp_path: Path, graph: FakeGraph
) -> None:
    make_orders(tmp_path / "shop.duckdb", 30)
    write_pipelines(tmp_path, graph.url)
    done = capi_sync(tmp_path, "--log-format", "json", "run", "purchases")
    assert done.returncode == 0, done.stderr
    stdout, stderr = json_lines(done.stdout), json_lines(done.stderr)
    for line in stdout + stderr:
        assert {"ts", "level", "event"} <= line.keys(), line
        assert dt.datetime.fromisoformat(line["ts"]).utcoffset() == dt.timedelta(0)
        assert TOKEN not in orjson.dumps(line).decode()
    started = next(line for line in stderr if line["event"] == "run_started")
    finished = stdout[-1]
    assert finished["event"] == "run_finished"
    assert (finished["pipeline"], finished["status"]) == ("purchases", "succeeded")
    assert (finished["rows_read"], finished["events_sent"], finished["rows_rejected"]) == (30, 30, 0)
    assert started["run_id"] == finished["run_id"]
    assert started["pipeline"] == "purchases"
    assert started["engine"] in {"native core", "pure Python"}


def test_errors_are_json_lines_too_and_keep_their_exit_code(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 3)
    write_pipelines(tmp_path, graph.url)
    done = capi_sync(tmp_path, "run", "nope", env={"CAPI_SYNC_LOG_FORMAT": "json"})
    assert done.returncode == 2
    (line,) = json_lines(done.stderr)
    assert (line["event"], line["level"], line["exit_code"]) == ("command_failed", "error", 2)
    assert "no pipeline named 'nope'" in line["message"]
    assert done.stdout == ""


def test_results_match_the_schema_and_runs_returns_the_same_documents(
    tmp_path: Path, graph: FakeGraph
) -> None:
    make_orders(tmp_path / "shop.duckdb", 20)
    write_pipelines(tmp_path, graph.url)
    graph.poisoned = order_is(7)  # one row Meta refuses: a rejection with its reason
    done = capi_sync(tmp_path, "run", "purchases", "--results", "out/results.json")
    assert done.returncode == 0, done.stderr
    document = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    validate(document)
    assert document["rows_read"] == (
        document["events_sent"]
        + document["rows_rejected"]
        + document["rows_pending"]
        + document["rows_skipped"]
    )
    assert document["match_quality"]["keys"]["em"]["events"] == document["events_sent"]
    assert dt.datetime.fromisoformat(document["cursor_after"]).utcoffset() == dt.timedelta(0)  # with its zone
    for moment in (document["started_at"], document["ended_at"]):
        assert dt.datetime.fromisoformat(moment).utcoffset() == dt.timedelta(0)
    (kept,) = json_lines(capi_sync(tmp_path, "rejected", "purchases", "--json").stdout)
    for moment in (kept["first_seen"], kept["last_seen"]):
        assert dt.datetime.fromisoformat(moment).utcoffset() == dt.timedelta(0)  # was naive before
    listed = capi_sync(tmp_path, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    (stored,) = json_lines(listed.stdout)
    assert stored == document


def test_runs_recorded_before_results_existed_still_list_as_valid_documents(tmp_path: Path) -> None:
    from capi_sync.state import RunStatus, StateStore

    with StateStore(f"sqlite:///{tmp_path / 'state.db'}") as store:
        run_id = store.start_run("purchases")  # no run_uid, no document: as a v3 store holds them
        store.finish_run(run_id, RunStatus.FAILED, "Meta said no", ["AbC123"], {"rows_read": 0})
        (row,) = store.list_runs("purchases")
    document = results.of_run(row)
    validate(document)
    assert document["errors"] == [{"message": "Meta said no", "fbtrace_ids": ["AbC123"]}]


def test_global_options_work_before_the_subcommand_and_from_the_environment(
    tmp_path: Path, graph: FakeGraph
) -> None:
    make_orders(tmp_path / "shop.duckdb", 5)
    write_pipelines(tmp_path, graph.url)
    (tmp_path / "pipelines.yaml").rename(tmp_path / "prod.yaml")
    before = capi_sync(
        tmp_path, "-f", "prod.yaml", "--state", "sqlite:///s.db", "run", "purchases", "--dry-run"
    )
    assert before.returncode == 0, before.stderr
    from_env = capi_sync(tmp_path, "validate", "--offline", env={"CAPI_SYNC_FILE": "prod.yaml"})
    assert from_env.returncode == 0, from_env.stderr
    assert "prod.yaml" in from_env.stdout
    after = capi_sync(tmp_path, "run", "purchases", "-f", "prod.yaml", "--state", "sqlite:///s.db")
    assert after.returncode == 0, after.stderr
    assert (tmp_path / "s.db").exists()
    assert len(graph.accepted_events) == 5


def test_run_takes_several_pipelines_or_all(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 10)
    write_pipelines(tmp_path, graph.url, text=TWO_PIPELINES)
    assert cli("run", "purchases", "leads", "--results", "both.json") == 0
    documents = orjson.loads((tmp_path / "both.json").read_bytes())
    validate(documents)
    assert [(d["pipeline"], d["events_sent"]) for d in documents] == [("purchases", 10), ("leads", 5)]
    assert cli("run", "--all", "--dry-run") == 0
    assert cli("run", "--all", "purchases") == 2
    assert cli("run") == 2
    assert cli("run", "purchases", "nope") == 2  # checked before any row is read
    assert len(graph.accepted_events) == 15


def test_fail_on_rejected_fails_a_run_above_the_share(
    tmp_path: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 10)
    write_pipelines(tmp_path, graph.url)
    graph.poisoned = order_is(3)
    assert cli("run", "purchases", "--fail-on-rejected", "5%") == 1
    assert "1 of 10 rows rejected (10.0%), above --fail-on-rejected 5.0%" in capsys.readouterr().err
    make_orders(tmp_path / "shop.duckdb", 10, start_id=11, minutes_ago=300)
    assert cli("run", "purchases", "--fail-on-rejected", "0.2") == 0
    assert cli("run", "purchases", "--fail-on-rejected", "150%") == 2


def test_without_a_terminal_progress_is_a_line_every_interval(capsys: pytest.CaptureFixture[str]) -> None:
    from capi_sync import logs

    logs.configure("json")
    try:
        report = RunReport(pipeline="purchases")
        with _ProgressLines("purchases", every=0.0) as update:
            report.rows_fetched, report.events_sent = 5000, 4000
            update(report)
        with _ProgressLines("purchases", every=0.0, total=20000) as update:  # `--limit`: an ETA
            update(report)
        with _ProgressLines("purchases", every=3600) as update:
            update(report)  # within the interval: nothing
    finally:
        logs.configure("text")
    line, with_total = json_lines(capsys.readouterr().err)
    assert (line["event"], line["rows_read"], line["events_sent"]) == ("progress", 5000, 4000)
    assert line["eta_seconds"] is None
    assert with_total["eta_seconds"] >= 0
    assert "left" in with_total["message"]


@pytest.mark.parametrize("value", ["2%", "0.02"])
def test_a_share_reads_as_percent_or_fraction(value: str) -> None:
    from capi_sync.cli import _share

    assert _share(None, None, value) == pytest.approx(0.02)  # type: ignore[arg-type]


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples as prometheus-client's own parser reads them: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_textfile_holds_the_runs_figures(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 12)
    write_pipelines(tmp_path, graph.url)
    graph.poisoned = order_is(5)
    graph.script = lambda number, _body: (
        (500, {"error": {"code": 2, "message": "busy"}}) if number == 1 else None
    )
    done = capi_sync(tmp_path, "run", "purchases", "--metrics-textfile", "capi_sync.prom")
    assert done.returncode == 0, done.stderr
    samples = metric_samples((tmp_path / "capi_sync.prom").read_text())
    pipeline = (("pipeline", "purchases"),)
    assert samples["capi_sync_events_sent_total", pipeline] == 11
    assert samples["capi_sync_rows_read_total", pipeline] == 12
    rejected = {
        labels: value for (name, labels), value in samples.items() if name == "capi_sync_rows_rejected_total"
    }
    assert sum(rejected.values()) == 1
    assert samples["capi_sync_retries_total", (("code", "2"), ("pipeline", "purchases"))] == 1
    assert samples["capi_sync_runs_total", (("pipeline", "purchases"), ("status", "succeeded"))] == 1
    assert samples["capi_sync_rows_pending", pipeline] == 0
    assert 0 <= samples["capi_sync_cursor_lag_seconds", pipeline] < 24 * 3600
    last_success = samples["capi_sync_last_success_timestamp_seconds", pipeline]
    assert abs(last_success - dt.datetime.now(dt.UTC).timestamp()) < 120


def test_metrics_are_pushed_to_a_pushgateway(tmp_path: Path, graph: FakeGraph) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            received.append(("PUT", self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        make_orders(tmp_path / "shop.duckdb", 4)
        write_pipelines(tmp_path, graph.url)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = capi_sync(tmp_path, "run", "purchases", "--pushgateway", url)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
        server.server_close()
    ((method, path, body),) = received
    assert (method, path) == ("PUT", "/metrics/job/capi_sync")
    assert metric_samples(body.decode())["capi_sync_events_sent_total", (("pipeline", "purchases"),)] == 4


def test_schedule_serves_metrics_while_it_runs(tmp_path: Path, graph: FakeGraph) -> None:
    import signal
    import threading
    import urllib.request

    make_orders(tmp_path / "shop.duckdb", 6)
    path = write_pipelines(tmp_path, graph.url)
    text = path.read_text().replace(
        "    cursor: updated_at\n", "    cursor: updated_at\n    schedule: '@hourly'\n"
    )
    # a test code left under a schedule: Meta still counts those events, so the scheduler warns
    path.write_text(
        text.replace("action_source: website,", "action_source: website, test_event_code: TEST42,")
    )
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "capi-sync"), "--log-format", "json", "schedule", "--run-now",
         "--metrics-port", "0"],
        cwd=tmp_path,
        env={**os.environ, "FB_ACCESS_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: lines.extend(orjson.loads(line) for line in process.stderr))  # type: ignore[union-attr]
    reader.start()
    try:
        from tests.conftest import wait_for

        wait_for(lambda: any(line["event"] == "run_finished" for line in lines), timeout=60)
        (serving,) = [line for line in lines if line["event"] == "metrics_serving"]
        with urllib.request.urlopen(f"http://127.0.0.1:{serving['port']}/metrics", timeout=10) as answer:
            samples = metric_samples(answer.read().decode())
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        reader.join(timeout=10)
    assert process.returncode == 0
    assert samples["capi_sync_events_sent_total", (("pipeline", "purchases"),)] == 6
    (warned,) = [line for line in lines if line["event"] == "test_event_code_scheduled"]
    assert (warned["level"], warned["pipeline"]) == ("warning", "purchases")
    finished = next(line for line in lines if line["event"] == "run_finished")
    assert "test_event_code is set under a schedule" in finished["message"]
    validate(
        {key: value for key, value in finished.items() if key not in {"ts", "level", "event", "message"}}
    )


@pytest.mark.parametrize("kind", ["duckdb", "postgres", "snowflake", "bigquery"])
def test_init_writes_a_starter_that_validates(tmp_path: Path, kind: str) -> None:
    done = capi_sync(tmp_path, "init", "--warehouse", kind, "--dir", "project")
    assert done.returncode == 0, done.stderr
    env_names = [
        line.split("=")[0]
        for line in (tmp_path / "project" / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert {"FB_PIXEL_ID", "FB_ACCESS_TOKEN"} <= set(env_names)
    checked = capi_sync(
        tmp_path / "project",
        "validate",
        "--offline",
        env={**dict.fromkeys(env_names, "x1"), "FB_PIXEL_ID": "123"},
    )
    assert checked.returncode == 0, checked.stderr
    again = capi_sync(tmp_path, "init", "--warehouse", kind, "--dir", "project")
    assert again.returncode == 2
    assert "--force" in again.stderr


def test_unknown_keys_get_a_did_you_mean_at_every_level(tmp_path: Path) -> None:
    assert capi_sync(tmp_path, "init").returncode == 0
    path = tmp_path / "pipelines.yaml"
    text = path.read_text()
    for typo, right in [
        ("    path: warehouse.duckdb", "    pth: warehouse.duckdb"),
        ("    schedule:", "    schedul:"),
        ("      action_source: website", "      action_sorce: website"),
        ("      server_event:", "      server_evnt:"),
    ]:
        text = text.replace(typo, right)
    path.write_text(text)
    done = capi_sync(tmp_path, "validate", "--offline", env={"FB_PIXEL_ID": "1", "FB_ACCESS_TOKEN": "x1"})
    assert done.returncode == 2
    for hint in ("'path'", "'schedule'", "'action_source'", "'server_event'"):
        assert f"did you mean {hint}?" in done.stderr, done.stderr


def test_list_shows_pipelines_with_their_cursor_and_last_run(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 3)
    write_pipelines(tmp_path, graph.url)
    assert capi_sync(tmp_path, "run", "purchases").returncode == 0
    (row,) = json_lines(capi_sync(tmp_path, "list", "--json").stdout)
    assert (row["pipeline"], row["warehouse_type"], row["last_run"]["events_sent"]) == (
        "purchases",
        "duckdb",
        3,
    )
    assert row["cursor"] is not None
    validate(row["last_run"])
    table = capi_sync(tmp_path, "list").stdout
    assert "purchases" in table
    assert "succeeded" in table


def test_without_a_terminal_nothing_is_cut_to_80_columns(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 3)
    write_pipelines(tmp_path, graph.url)
    graph.poisoned = order_is(2)
    assert capi_sync(tmp_path, "run", "purchases").returncode == 0
    runs = capi_sync(tmp_path, "runs").stdout
    assert max(len(line) for line in runs.splitlines()) > 80
    assert "…" not in runs


def test_validate_check_and_state_show_answer_in_json(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 3)
    write_pipelines(tmp_path, graph.url)
    assert capi_sync(tmp_path, "run", "purchases").returncode == 0
    (verdict,) = json_lines(capi_sync(tmp_path, "validate", "--json").stdout)
    assert (verdict["ok"], verdict["pipelines"], verdict["errors"]) == (True, ["purchases"], [])
    checks = json_lines(capi_sync(tmp_path, "check", "--json").stdout)
    assert [(c["check"], c["ok"]) for c in checks] == [
        ("warehouse shop", True),
        ("query and mapping", True),
        ("destination meta", True),
        ("api_version", True),
    ]
    (state,) = json_lines(capi_sync(tmp_path, "state", "show", "purchases", "--json").stdout)
    assert dt.datetime.fromisoformat(state["cursor"]).utcoffset() == dt.timedelta(0)
    assert (state["cursor_kind"], state["rows_settled"]) == ("timestamp", 1)
    broken = (
        (tmp_path / "pipelines.yaml").read_text().replace("select * from orders", "select * from nowhere")
    )
    (tmp_path / "pipelines.yaml").write_text(broken)
    failed = capi_sync(tmp_path, "validate", "--json")
    assert failed.returncode == 2
    (verdict,) = json_lines(failed.stdout)
    assert verdict["ok"] is False
    assert "nowhere" in verdict["errors"][0]


def test_a_bug_under_json_logs_is_one_json_line_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(_path: object) -> None:
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr("capi_sync.cli.load_config", broken)
    assert cli("--log-format", "json", "validate", "--offline") == 1
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["event"], line["level"], line["exit_code"]) == ("internal_error", "error", 1)
    assert "RuntimeError: a bug, not a user error" in line["exc_info"]
    with pytest.raises(RuntimeError):  # in text mode the traceback is printed as Python prints it
        cli("validate", "--offline")
