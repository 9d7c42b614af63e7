"""The whole pipeline through the real CLI: DuckDB file in, requests at a local Graph API out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from hashlib import sha256
from pathlib import Path

import duckdb
import pytest

from capi_sync import __version__
from capi_sync.building import PARTNER_NAME
from capi_sync.state import StateStore
from tests.conftest import (
    TOKEN,
    carries_row,
    cli,
    make_orders,
    meta_on_hold,
    start_run,
    wait_for,
    write_pipelines,
)
from tests.fake_graph import FakeGraph, error_reply


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 2500)
    return write_pipelines(tmp_path, graph.url)


def state_cursor(project: Path) -> object:
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        return store.load_cursor("purchases").value


def test_two_runs_deliver_every_row_exactly_once(project: Path, graph: FakeGraph) -> None:
    assert cli("run", "purchases") == 0
    assert sorted(len(r.body["data"]) for r in graph.requests) == [500, 1000, 1000]
    assert cli("run", "purchases") == 0
    assert len(graph.requests) == 3, "the second run must send nothing"

    ids = Counter(event["event_id"] for event in graph.accepted_events)
    assert len(ids) == 2500
    assert set(ids.values()) == {1}


def test_events_carry_hashed_normalized_pii_and_typed_values(project: Path, graph: FakeGraph) -> None:
    assert cli("run", "purchases", "--limit", "1") == 0
    (event,) = graph.accepted_events
    user = event["user_data"]
    assert user["em"] == sha256(b"user1@example.com").hexdigest()
    assert user["ph"] == sha256(b"16505550001").hexdigest()
    assert user["country"] == sha256(b"us").hexdigest()
    assert user["client_ip_address"] == "203.0.113.7"
    assert event["custom_data"] == {"value": 1.99, "currency": "USD", "loyalty_tier": "gold"}
    assert isinstance(event["event_time"], int)
    assert event["action_source"] == "website"
    assert len(event["event_id"]) == 32, "event_id derived from the primary key when not mapped"


def test_token_travels_in_the_header_never_the_url(project: Path, graph: FakeGraph) -> None:
    assert cli("run", "purchases", "--limit", "5") == 0
    request = graph.requests[0]
    assert TOKEN not in request.path
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    # Meta's documented partner form, `[partner_name]_[major]_[minor]`: its Dataset Quality API
    # filters by the lowercase name before the first `_` (`agent_name`).
    agent = request.body["partner_agent"]
    assert re.fullmatch(r"[a-z]+_\d+_\d+", agent), agent
    assert agent.split("_")[0] == PARTNER_NAME == "capisync"
    assert agent == f"capisync_{'_'.join(__version__.split('.')[:2])}"
    state_db = (project.parent / ".capi-sync" / "state.db").read_bytes()
    assert TOKEN.encode() not in state_db


def test_cursor_advances_only_after_meta_accepts(project: Path, graph: FakeGraph) -> None:
    def refuse_second_batch(_number: int, body: dict) -> object:
        return error_reply(403, 10, "Permission denied") if carries_row(body, 1001) else None

    graph.script = refuse_second_batch
    assert cli("run", "purchases") == 1
    with duckdb.connect(str(project.parent / "shop.duckdb"), read_only=True) as con:
        thousandth = con.execute("select updated_at from orders where order_id = 1000").fetchone()[0]
    assert state_cursor(project) == thousandth

    graph.script = None
    assert cli("run", "purchases") == 0
    ids = Counter(event["event_id"] for event in graph.accepted_events)
    assert len(ids) == 2500
    # Batch 3 may have been accepted while batch 2 failed; it is re-sent with the same
    # event_ids (Meta drops the copies), and nothing before the failure is sent twice.
    twice = {event_id for event_id, count in ids.items() if count > 1}
    assert len(twice) <= 500


def test_rows_added_between_runs_are_sent_once(project: Path, graph: FakeGraph) -> None:
    assert cli("run", "purchases") == 0
    make_orders(project.parent / "shop.duckdb", 10, start_id=5000, minutes_ago=30)
    assert cli("run", "purchases") == 0
    assert sorted(len(r.body["data"]) for r in graph.requests[:3]) == [500, 1000, 1000]
    assert len(graph.requests[3].body["data"]) == 10


def test_run_history_records_counts(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("run", "purchases") == 0
    assert cli("run", "purchases") == 0
    capsys.readouterr()
    assert cli("runs", "purchases", "--json") == 0
    newest, oldest = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (oldest["status"], oldest["rows_read"], oldest["events_sent"]) == (
        "succeeded",
        2500,
        2500,
    )
    # the row at the stored cursor value is read again and skipped as delivered: read = sent + skipped
    assert (newest["status"], newest["rows_read"], newest["events_sent"], newest["rows_skipped"]) == (
        "succeeded",
        1,
        0,
        1,
    )


def test_dry_run_writes_events_and_touches_nothing(project: Path, graph: FakeGraph) -> None:
    output = project.parent / "events.jsonl"
    assert cli("run", "purchases", "--dry-run", "--output", str(output)) == 0
    lines = output.read_text().splitlines()
    assert len(lines) == 2500
    assert all(json.loads(line)["event_name"] == "Purchase" for line in lines)
    assert graph.requests == []
    assert state_cursor(project) is None


def test_rejected_rows_do_not_block_the_batch(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:
        con.execute("update orders set email = null, phone = null, ip = null where order_id = 7")
        con.execute("update orders set currency = 'XYZ' where order_id = 8")
    assert cli("run", "purchases") == 0
    assert len(graph.accepted_events) == 2498
    printed = capsys.readouterr().out
    assert (
        "2,500 rows read = 2,498 events sent in 3 batch(es) + 2 rejected + 0 pending + 0 skipped" in printed
    )
    assert "match quality (2,498 events)" in printed
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        rejected = {row["row_key"]: row["reasons"] for row in store.list_rejected("purchases")}
    assert set(rejected) == {"7", "8"}
    assert rejected["7"][0]["rule"] == "weak_match_keys"
    assert {"field": "custom_data.currency", "rule": "required_for_purchase"} in rejected["8"]


def test_missing_token_is_a_config_error_but_dry_run_works(
    project: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", "")
    assert cli("run", "purchases") == 2
    assert cli("run", "purchases", "--dry-run") == 0
    assert graph.requests == []


def test_console_script_runs_the_example_from_a_fresh_folder(tmp_path: Path) -> None:
    """The README's main command, through the installed `capi-sync` script."""
    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "x.jsonl"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "capi-sync"),
            "run",
            "purchases",
            "--dry-run",
            "--output",
            str(output),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "CAPI_SYNC_STATE": f"sqlite:///{tmp_path / 's.db'}"},
    )
    assert result.returncode == 0, result.stderr
    assert "events built" in result.stdout
    events = [json.loads(line) for line in output.read_text().splitlines()]
    assert events
    assert all(event["user_data"] for event in events)


def test_sigterm_stops_cleanly_and_the_next_run_resumes(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batch 1 is answered at once, the others only after SIGTERM: they were in flight, so the
    run waits for them, commits them in order, and exits 130."""
    import signal
    import time

    with meta_on_hold(graph, holds=lambda body: not carries_row(body, 1)):
        process = start_run(project.parent)
        wait_for(lambda: bool(graph.requests))
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run again to resume" in stderr

    graph.script = None
    assert cli("run", "purchases") == 0
    ids = {event["event_id"] for event in graph.accepted_events}
    assert len(ids) == 2500, "every row accepted at least once; re-sends carry the same event_id"
    capsys.readouterr()
    assert cli("runs", "purchases", "--json") == 0
    newest, first = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (first["status"], newest["status"]) == ("interrupted", "succeeded")
    assert first["events_sent"] + newest["events_sent"] >= 2500


def poison(order_id: int) -> object:
    """Meta refuses any request that carries this order's event, naming it in error_user_msg."""

    def script(_number: int, body: dict) -> object:
        if any(event["custom_data"].get("order_id") == str(order_id) for event in body["data"]):
            return 400, {
                "error": {
                    "message": "Invalid parameter",
                    "code": 100,
                    "error_subcode": 2804019,
                    "error_user_msg": "Invalid content",
                    "fbtrace_id": "poisoned",
                }
            }
        return None

    return script


def test_a_poisoned_batch_is_bisected_and_only_the_bad_event_rejected(
    project: Path, graph: FakeGraph
) -> None:
    project.write_text(
        project.read_text().replace(
            "custom_data: {value: amount,", "custom_data: {order_id: order_id, value: amount,"
        )
    )
    graph.script = poison(1234)
    assert cli("run", "purchases") == 0
    sent = {event["custom_data"]["order_id"] for event in graph.accepted_events}
    assert len(sent) == 2499
    assert "1234" not in sent
    assert len(graph.requests) <= 3 + 2 * 10, "bisection costs about two requests per level"
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        (rejected,) = store.list_rejected("purchases")
    assert rejected["row_key"] == "1234"
    assert rejected["reasons"][0]["rule"] == "meta_100_2804019"
    assert "Invalid content" in rejected["reasons"][0]["detail"]
    assert state_cursor(project) is not None
    assert cli("run", "purchases") == 0
    assert len(graph.accepted_events) == 2499, "the rejected row is not re-sent until it changes"


def test_an_error_every_event_shares_fails_the_run_instead_of_rejecting_all(
    project: Path, graph: FakeGraph
) -> None:
    graph.script = lambda _n, _b: (400, {"error": {"message": "Invalid parameter", "code": 100}})
    assert cli("run", "purchases", "--limit", "8") == 1
    assert state_cursor(project) is None
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        assert store.list_rejected("purchases") == []
