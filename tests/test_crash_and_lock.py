"""Real processes: SIGKILL at any point loses no row; two runs of one pipeline never overlap."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import carries_row, make_orders, meta_on_hold, start_run, wait_for, write_pipelines
from tests.fake_graph import FakeGraph


def test_sigkill_at_several_points_loses_no_row(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 20_000)
    write_pipelines(tmp_path, graph.url)
    graph.script = lambda _n, _b: time.sleep(0.2)  # type: ignore[func-returns-value]
    for kill_after in (1, 6, 13):
        process = start_run(tmp_path)
        wait_for(lambda k=kill_after: len(graph.requests) >= k)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
    final = start_run(tmp_path)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr

    accepted = [event["event_id"] for event in graph.accepted_events]
    assert len(set(accepted)) == 20_000, "every row's event_id accepted at least once"
    # Re-sends happen only around the kill points: at most the batches in flight (4) per kill.
    assert len(accepted) - 20_000 <= 3 * 4 * 1000


def test_two_runs_of_one_pipeline_never_overlap(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 5000)
    write_pipelines(tmp_path, graph.url)
    with meta_on_hold(graph):
        first = start_run(tmp_path)
        wait_for(lambda: graph.arrived >= 1)
        second = start_run(tmp_path)
        _, second_err = second.communicate(timeout=120)
    _, first_err = first.communicate(timeout=120)

    assert first.returncode == 0, first_err
    assert second.returncode == 1
    assert "is already running" in second_err
    ids = [event["event_id"] for event in graph.accepted_events]
    assert len(ids) == len(set(ids)) == 5000, "no event sent twice"


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 3000)
    write_pipelines(tmp_path, graph.url)
    with meta_on_hold(graph):
        process = start_run(tmp_path)
        wait_for(lambda: graph.arrived >= 1)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    graph.script = None
    again = start_run(tmp_path)
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert len({event["event_id"] for event in graph.accepted_events}) == 3000


def test_an_interrupt_never_commits_past_a_batch_still_in_flight(tmp_path: Path, graph: FakeGraph) -> None:
    """Batches 2 and 3 are accepted while batch 1 hangs, then is refused: the cursor must not move."""
    from tests.fake_graph import error_reply

    make_orders(tmp_path / "shop.duckdb", 2500)
    write_pipelines(tmp_path, graph.url)
    refused = error_reply(403, 10, "Permission denied")
    with meta_on_hold(graph, holds=lambda body: carries_row(body, 1), then=refused):
        process = start_run(tmp_path)
        wait_for(lambda: len(graph.requests) >= 2)  # batches 2 and 3 answered; batch 1 still held
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr

    from capi_sync.state import StateStore

    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        assert store.load_cursor("purchases").value is None
        (run,) = store.list_runs("purchases")
    assert (run.status, run.events_sent) == ("interrupted", 0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_waits_for_the_native_cores_requests_on_the_wire_and_commits_them(
    tmp_path: Path, graph: FakeGraph, sig: signal.Signals
) -> None:
    """With the native core building batches, Ctrl-C or SIGTERM must not abandon a request Meta is
    still answering: it is awaited, and committed in order."""
    make_orders(tmp_path / "shop.duckdb", 2500)
    write_pipelines(tmp_path, graph.url)
    held = threading.Event()

    def first_block(body: dict) -> bool:
        if carries_row(body, 1):
            held.set()
            return True
        return False

    with meta_on_hold(graph, holds=first_block):
        process = start_run(tmp_path)
        assert held.wait(60)  # the first block's request is on the wire, unanswered
        process.send_signal(sig)
        time.sleep(1.0)  # the run must still be waiting for it
        assert process.poll() is None, process.communicate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr

    from capi_sync.state import StateStore

    first_block = {
        event["event_id"] for r in graph.requests if carries_row(r.body, 1) for event in r.body["data"]
    }
    assert first_block <= {event["event_id"] for event in graph.accepted_events}
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        (run,) = store.list_runs("purchases")
        assert store.load_cursor("purchases").value is not None
    assert run.status == "interrupted"
    assert run.events_sent >= len(first_block) == 1000
