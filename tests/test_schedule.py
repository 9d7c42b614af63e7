"""`capi-sync schedule` as a real process: runs on its schedule, picks up new rows, and stops cleanly
on SIGTERM after committing the run in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capi_sync.state import StateStore
from tests.conftest import TOKEN, meta_on_hold, wait_for
from tests.fake_graph import FakeGraph
from tests.test_incremental import Warehouse, configure, delivered, minutes_ago


@pytest.fixture
def warehouse(postgres_url: str) -> Warehouse:
    wh = Warehouse("postgres", postgres_url, "timestamptz")
    wh.create()
    return wh


def start_scheduler(folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "capi-sync"), "schedule", *args],
        cwd=folder,
        env={**os.environ, "FB_ACCESS_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_scheduled_runs_deliver_new_rows_and_sigterm_stops_cleanly(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path
) -> None:
    configure(tmp_path, graph, warehouse, settle="0", schedule="every 2s")
    warehouse.insert({1: minutes_ago(30), 2: minutes_ago(20)})
    scheduler = start_scheduler(tmp_path, "events")
    try:
        wait_for(lambda: set(delivered(graph)) == {1, 2}, timeout=30)
        warehouse.insert({3: minutes_ago(1), 4: minutes_ago(0.5)})
        wait_for(lambda: set(delivered(graph)) == {1, 2, 3, 4}, timeout=30)
        time.sleep(2.5)  # at least one more run that finds nothing new
    finally:
        scheduler.send_signal(signal.SIGTERM)
        _, stderr = scheduler.communicate(timeout=30)
    assert scheduler.returncode == 0, stderr
    assert delivered(graph) == dict.fromkeys([1, 2, 3, 4], 1)
    assert "events: succeeded" in stderr
    assert "scheduler stopped" in stderr
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        assert len(store.list_runs("events")) >= 3


def test_sigterm_waits_for_the_batch_on_the_wire(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path
) -> None:
    configure(tmp_path, graph, warehouse, settle="0", schedule="@hourly")
    warehouse.insert({1: minutes_ago(30)})
    with meta_on_hold(graph, lambda _body: True):
        scheduler = start_scheduler(tmp_path, "--run-now")
        wait_for(lambda: graph.arrived == 1, timeout=30)
        scheduler.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert scheduler.poll() is None, "the scheduler waits for Meta's answer before exiting"
    _, stderr = scheduler.communicate(timeout=30)
    assert scheduler.returncode == 0, stderr
    assert delivered(graph) == {1: 1}
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        assert store.load_cursor("events").value is not None, "the accepted batch was committed"
        (run,) = store.list_runs("events")
        assert run.events_sent == 1


def test_schedule_refuses_pipelines_without_a_schedule(
    warehouse: Warehouse, graph: FakeGraph, tmp_path: Path
) -> None:
    path = configure(tmp_path, graph, warehouse)
    path.write_text(path.read_text().replace('    schedule: "@hourly"\n', ""))
    scheduler = start_scheduler(tmp_path)
    _, stderr = scheduler.communicate(timeout=30)
    assert scheduler.returncode == 2
    assert "no pipeline has a schedule" in stderr


def test_schedule_refuses_to_start_on_a_broken_pipeline(tmp_path: Path, graph: FakeGraph) -> None:
    """A missing database file would otherwise log the same error every interval, forever."""
    from tests.conftest import write_pipelines

    path = write_pipelines(tmp_path, graph.url)
    path.write_text(
        path.read_text().replace("cursor: updated_at", 'cursor: updated_at\n    schedule: "every 1m"')
    )
    scheduler = start_scheduler(tmp_path)
    _, stderr = scheduler.communicate(timeout=60)
    assert scheduler.returncode == 2
    assert "shop.duckdb" in stderr
    assert "Traceback" not in stderr
