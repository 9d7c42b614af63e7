"""Delivery under injected faults, over real HTTP: throttling, 5xx, timeouts, dropped connections
and a poisoned event, all in one run. Every valid row ends up accepted, the bad one rejected."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import DROP, FakeGraph, Reply, error_reply

POISONED_URL = "https://shop.example.com/o/4321"


def faulty(seed: int) -> object:
    rng = random.Random(seed)

    def script(_number: int, body: dict) -> Reply | None:
        if any(event["event_source_url"] == POISONED_URL for event in body["data"]):
            return 400, {
                "error": {
                    "message": "Invalid parameter",
                    "code": 100,
                    "error_user_msg": "Invalid event",
                    "fbtrace_id": "bad",
                }
            }
        roll = rng.random()
        if roll < 0.30:
            return error_reply(400, rng.choice([4, 17, 32, 613, 80003, 80004]), "throttled")
        if roll < 0.40:
            return error_reply(rng.choice([500, 502, 503]), 2, "service unavailable", transient=True)
        if roll < 0.45:
            time.sleep(0.6)  # past the client's 0.3 s timeout; Meta may still have accepted it
            return None
        if roll < 0.50:
            return DROP
        return None

    return script


@pytest.mark.parametrize("seed", [1, 2])
def test_every_valid_row_is_accepted_under_faults(
    tmp_path: Path,
    graph: FakeGraph,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 6000)
    path = write_pipelines(tmp_path, graph.url)
    path.write_text(
        path.read_text().replace("retry_base_seconds: 0.01", "retry_base_seconds: 0.01\n    timeout: 0.3")
    )
    graph.script = faulty(seed)

    assert cli("run", "purchases") == 0
    accepted = {event["event_id"] for event in graph.accepted_events}
    assert len(accepted) == 5999
    assert not any(e["event_source_url"] == POISONED_URL for e in graph.accepted_events)
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        (rejected,) = store.list_rejected("purchases")
    assert rejected["row_key"] == "4321"
    assert "Invalid event" in rejected["reasons"][0]["detail"]

    capsys.readouterr()
    assert cli("runs", "purchases", "--json") == 0
    run = json.loads(capsys.readouterr().out)
    assert run["rows_read"] == run["events_sent"] + run["rows_rejected"] == 6000
    assert run["retries"] > 0
    statuses = {r.status for r in graph.requests}
    assert {200, 400} <= statuses
