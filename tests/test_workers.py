"""`--workers N` builds and sends on N processes: what is sent, rejected and committed must not change."""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from capi_sync import parallel
from capi_sync.building import make_client
from capi_sync.config import load_config
from capi_sync.connectors import open_source
from capi_sync.connectors.retry import RetryPolicy
from capi_sync.errors import WorkerError
from capi_sync.runner import prepare
from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph, error_reply

if TYPE_CHECKING:
    from pathlib import Path

    from capi_sync.config import ProjectConfig


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 2600)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("update orders set email = null, phone = null, ip = null where order_id = 7")
        con.execute("update orders set currency = 'XYZ' where order_id = 1501")
        con.execute("update orders set phone = 'call me' where order_id = 2222")
    return write_pipelines(tmp_path, graph.url)


def outcome(project: Path, graph: FakeGraph) -> dict[str, Any]:
    with StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}") as store:
        rejected = {row["row_key"]: row["reasons"] for row in store.list_rejected("purchases")}
        cursor = store.load_cursor("purchases").value
    return {
        "requests": [[event["event_id"] for event in r.body["data"]] for r in graph.requests],
        "events": graph.accepted_events,
        "rejected": rejected,
        "cursor": cursor,
    }


@pytest.fixture(autouse=True)
def _pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes map rows only on the pure-Python path; the native core maps in-process."""
    monkeypatch.setenv("CAPI_SYNC_ENGINE", "python")


def dry_delivery(config: ProjectConfig) -> parallel.Delivery:
    """Workers that build each request and send nothing."""
    pipeline = config.pipeline("purchases")
    return parallel.Delivery(partial(make_client, config, pipeline), RetryPolicy(), 1, dry_run=True)


def flat(requests: list[list[str]]) -> list[str]:
    return [event_id for ids in requests for event_id in ids]


def one_request_at_a_time(project: Path) -> None:
    with_settings(project, "max_in_flight: 1")


def with_settings(project: Path, settings: str) -> None:
    text = project.read_text().replace("default_phone_region: US", f"default_phone_region: US, {settings}")
    project.write_text(text)


def orders_project(
    folder: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, rows: int, settings: str
) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(folder / "shop.duckdb", rows)
    project = write_pipelines(folder, graph.url)
    with_settings(project, settings)
    return project


def reset(project: Path, graph: FakeGraph) -> None:
    (project.parent / ".capi-sync" / "state.db").unlink()
    graph.requests.clear()


def test_workers_send_the_same_events_in_the_same_order(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    one_request_at_a_time(project)  # concurrent requests may reach the fake server in any order
    assert cli("run", "purchases") == 0
    serial, serial_out = outcome(project, graph), capsys.readouterr().out
    reset(project, graph)

    assert cli("run", "purchases", "--workers", "2") == 0
    parallel, parallel_out = outcome(project, graph), capsys.readouterr().out

    assert len(serial["events"]) == 2598
    # A worker sends the events of one batch's worth of rows (batch_size rows, less what was
    # rejected), so the requests split differently; with one in flight they leave in read order.
    assert [len(ids) for ids in parallel["requests"]] == [999, 999, 600]  # 2 rejected in the first 2,000
    assert flat(parallel.pop("requests")) == flat(serial.pop("requests"))
    assert parallel == serial
    assert set(serial["rejected"]) == {"7", "1501"}
    assert "customer_info.ph" in parallel_out, "dropped values still reach the quality report"
    assert parallel_out.split("match quality")[1] == serial_out.split("match quality")[1]


def test_workers_from_the_pipeline_file_and_dry_run_output(project: Path, tmp_path: Path) -> None:
    assert cli("run", "purchases", "--dry-run", "--output", str(tmp_path / "serial.jsonl")) == 0
    project.write_text(
        project.read_text().replace("    cursor: updated_at", "    cursor: updated_at\n    workers: 2")
    )
    assert cli("run", "purchases", "--dry-run", "--output", str(tmp_path / "parallel.jsonl")) == 0
    serial = (tmp_path / "serial.jsonl").read_bytes()
    assert serial.count(b"\n") == 2598
    assert (tmp_path / "parallel.jsonl").read_bytes() == serial


def test_workers_get_only_the_columns_the_mapping_reads(project: Path, tmp_path: Path) -> None:
    project.write_text(
        project.read_text().replace(
            "query: select * from orders",
            "query: select order_id + 1000 as spare_id, *, repeat('x', 2000) as unused_blob from orders",
        )
    )
    config = load_config(project)
    with open_source(config.warehouse_of(config.pipeline("purchases"))) as source:
        prepared = prepare(config.pipeline("purchases"), source)
    used = [prepared.columns[index] for index in prepared.mapper.columns_used]
    assert {"order_id", "tier"} <= set(used)
    assert not {"spare_id", "unused_blob", "updated_at"} & set(used)  # the cursor is read here, not there
    serial, parallel = tmp_path / "serial.jsonl", tmp_path / "parallel.jsonl"
    assert cli("run", "purchases", "--dry-run", "--output", str(serial)) == 0
    assert cli("run", "purchases", "--dry-run", "--workers", "2", "--output", str(parallel)) == 0
    assert serial.read_bytes().count(b"\n") == 2598
    assert parallel.read_bytes() == serial.read_bytes()


def test_a_failed_parallel_run_resumes_exactly(project: Path, graph: FakeGraph) -> None:
    def token_expires_on_second_request(number: int, _body: dict[str, Any]) -> object:
        return error_reply(401, 190, "Error validating access token") if number == 2 else None

    # One request at a time: with more in flight, accepted batches after the failed one are re-sent
    # next run (same event_ids, so Meta drops them) and "exactly once" would count them twice.
    one_request_at_a_time(project)
    graph.script = token_expires_on_second_request
    assert cli("run", "purchases", "--workers", "2") == 1
    graph.script = None
    assert cli("run", "purchases", "--workers", "2") == 0
    ids = Counter(event["event_id"] for event in graph.accepted_events)
    assert len(ids) == 2598
    assert set(ids.values()) == {1}, "every event accepted exactly once across the two runs"


def test_auto_maps_in_process_until_the_workers_are_ready(
    project: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_request_at_a_time(project)  # concurrent requests may reach the fake server in any order
    assert cli("run", "purchases", "--workers", "1") == 0
    serial = outcome(project, graph)
    serial["requests"] = flat(serial["requests"])

    submitted: list[int] = []
    original_send = parallel._Worker.send

    def counting_send(self: Any, number: int, rows: list[Any]) -> None:
        submitted.append(len(rows))
        original_send(self, number, rows)

    def ready_once_started(self: Any) -> bool:  # as if the workers started instantly
        multiprocessing.connection.wait([self.conn])
        return original_poll_ready(self)

    original_poll_ready = parallel._Worker.poll_ready
    monkeypatch.setattr(parallel, "AUTO_WORKERS_AFTER", 1000)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(parallel._Worker, "send", counting_send)

    monkeypatch.setattr(parallel._Worker, "poll_ready", ready_once_started)
    reset(project, graph)
    assert cli("run", "purchases") == 0  # workers: auto is the default
    on_workers = outcome(project, graph)
    on_workers["requests"] = flat(on_workers["requests"])
    assert on_workers == serial
    assert sum(submitted) == 2600 - 1000, "1,000 rows in-process, the rest on workers"

    monkeypatch.setattr(parallel._Worker, "poll_ready", lambda _self: False)  # workers never come up
    reset(project, graph)
    submitted.clear()
    assert cli("run", "purchases") == 0, "the run never waits for its workers"
    in_process = outcome(project, graph)
    in_process["requests"] = flat(in_process["requests"])
    assert in_process == serial
    assert submitted == []
    assert not multiprocessing.active_children(), "workers that were never used are stopped too"


def test_plan_workers() -> None:
    assert parallel.plan_workers(3) == (3, 0)
    assert parallel.plan_workers(1) == (1, 0)
    workers, after = parallel.plan_workers("auto")
    assert 1 <= workers <= parallel.AUTO_MAX_WORKERS
    assert after == (parallel.AUTO_WORKERS_AFTER if workers > 1 else 0)


def test_a_worker_killed_mid_run_fails_the_run_cleanly_and_nothing_is_lost(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    orders_project(tmp_path, graph, monkeypatch, 20_000, "max_in_flight: 1")

    def kill_workers_on_third_request(number: int, _body: dict[str, Any]) -> object:
        if number == 3:  # a worker dies with its request on the wire
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, signal.SIGKILL)
        return None

    graph.script = kill_workers_on_third_request
    assert cli("run", "purchases", "--workers", "2") == 1
    printed = capsys.readouterr()
    assert "a worker process that builds events died" in printed.out + printed.err
    first, second, third = ({event["event_id"] for event in r.body["data"]} for r in graph.requests)
    graph.script = None
    assert cli("run", "purchases", "--workers", "1") == 0
    ids = Counter(event["event_id"] for event in graph.accepted_events)
    assert len(ids) == 20_000
    # Meta took the third batch, but its worker died before saying so: the next run sends it again
    # with the same event_ids (Meta drops them). The first batch's result was with this process
    # before the third request left, so it was committed and never re-sent; the second's may not.
    sent_twice = {event_id for event_id, count in ids.items() if count > 1}
    assert third <= sent_twice <= third | second
    assert not first & sent_twice


def test_a_worker_killed_at_any_moment_stops_the_mapping_and_never_hangs(project: Path) -> None:
    """Kills land at random moments, some halfway through a worker writing a result to this process.

    Each must end the mapping with WorkerError and leave no process behind; a kill that left a
    half-written message (or a lock) behind once hung `ProcessPoolExecutor` until CI gave up.
    """
    config = load_config(project)
    pipeline = config.pipeline("purchases")
    with open_source(config.warehouse_of(pipeline)) as source:
        columns = prepare(pipeline, source).columns
    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:
        rows = con.execute("select * from orders order by order_id").fetchall()
    assert len(rows[0]) == len(columns)
    chance = random.Random(8)
    for delay in [0.0, *(chance.uniform(0.0, 0.05) for _ in range(3))]:
        mapper = parallel.ParallelMapper(pipeline, columns, 2, dry_delivery(config), block_rows=500)
        mapped = mapper.settle_in_order((row, None) for row in itertools.cycle(rows))
        next(mapped)  # both workers are up and mapping
        victim = mapper._workers[chance.randrange(2)].process
        killer = threading.Timer(delay, os.kill, (victim.pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        with pytest.raises(WorkerError, match="died"):
            for _ in mapped:
                pass
        killer.join()
        mapper.close()
        assert time.monotonic() - started < 30
        assert not [worker for worker in multiprocessing.active_children() if worker.is_alive()]


def test_a_worker_that_cannot_build_the_mapping_says_why(project: Path) -> None:
    config = load_config(project)
    pipeline = config.pipeline("purchases")
    mapper = parallel.ParallelMapper(
        pipeline, ["not_the_query_columns"], 1, dry_delivery(config), block_rows=500
    )
    try:
        with pytest.raises(WorkerError, match=r"failed to build events: .*ConfigError"):
            list(mapper.settle_in_order(iter([(("x",), None)])))
    finally:
        mapper.close()
    assert not multiprocessing.active_children()


def test_requests_take_turns_at_most_max_in_flight_out_and_none_once_stopping() -> None:
    turns = parallel._Turns(multiprocessing.get_context("spawn"), 2)
    assert turns.wait_for(0)
    assert turns.wait_for(1), "the first max_in_flight blocks go at once"
    went: list[bool] = []
    third = threading.Thread(target=lambda: went.append(turns.wait_for(2)))
    third.start()
    third.join(0.2)
    assert third.is_alive(), "block 2 waits for block 0's answer"
    turns.answered(1)
    third.join(0.2)
    assert third.is_alive(), "block 1 answered is another lane"
    turns.answered(0)
    third.join(5)
    assert went == [True]
    turns.answered(
        3, failed=True
    )  # block 3's request failed for good: nothing after it leaves, all before it does
    assert not turns.wait_for(4)
    assert turns.wait_for(2)
    fifth = threading.Thread(target=lambda: went.append(turns.wait_for(4)))
    sixth = threading.Thread(target=lambda: went.append(turns.wait_for(6)))  # behind block 4
    fourth_again = threading.Thread(target=lambda: went.append(turns.wait_for(3)))
    turns.halt()
    for thread in (fifth, sixth, fourth_again):
        thread.start()
        thread.join(5)
    assert went == [True, False, False, False], "once the run aborts, no waiting block is sent"


def _wait_for_turn(turns: parallel._Turns, block: int) -> None:
    turns.wait_for(block)


def test_a_worker_killed_while_waiting_for_its_turn_never_wedges_the_run() -> None:
    """Killed in the middle of waiting (as SIGKILL or the OOM killer can), a worker leaves the
    shared condition counting a sleeper that will never wake, and whoever notifies next waits for
    it forever. The run's own `halt` once did, and CI timed out: now it touches no lock, and the
    other waiters still see it."""
    context = multiprocessing.get_context("spawn")
    turns = parallel._Turns(context, 1)
    assert turns.wait_for(0)
    waiters = [context.Process(target=_wait_for_turn, args=(turns, block), daemon=True) for block in (1, 2)]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 60
    while turns._answered._sleeping_count.get_value() < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "both waiters sleep on the condition (start-up is slow on CI)"
        time.sleep(0.05)
    os.kill(waiters[0].pid, signal.SIGKILL)
    waiters[0].join()
    halting = threading.Thread(target=turns.halt, daemon=True)
    halting.start()
    halting.join(10)
    assert not halting.is_alive(), "halting never waits on a dead process"
    waiters[1].join(10)
    assert waiters[1].exitcode == 0, "the surviving waiter saw the abort"


def test_a_script_without_a_main_guard_runs_workers_through_the_python_api(
    project: Path, graph: FakeGraph
) -> None:
    """Spawn would run the script again in each worker (and fail there); workers never import it."""
    script = project.parent / "sync_now.py"
    script.write_text(
        "from capi_sync import RunOptions, StateStore, load_config, run_pipeline\n"
        "project = load_config('pipelines.yaml')\n"
        "with StateStore('sqlite:///state.db') as store:\n"
        "    report = run_pipeline(project, 'purchases', store, RunOptions(workers=2))\n"
        "print('sent', report.events_sent, report.status.value)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=project.parent,
        env={**os.environ, "FB_ACCESS_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sent 2598 succeeded"
    assert len({event["event_id"] for event in graph.accepted_events}) == 2598


def test_workers_keep_max_in_flight_requests_waiting_for_meta(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a distant Graph API a worker must not idle while its request is answered."""
    orders_project(tmp_path, graph, monkeypatch, 6000, "batch_size: 500")
    waiting, most = 0, 0
    lock = threading.Lock()

    def slow(_number: int, _body: dict[str, Any]) -> None:
        nonlocal waiting, most
        with lock:
            waiting += 1
            most = max(most, waiting)
        time.sleep(0.3)
        with lock:
            waiting -= 1

    graph.script = slow
    assert cli("run", "purchases", "--workers", "2") == 0
    assert len(graph.accepted_events) == 6000
    assert most == 4, "max_in_flight (4) requests wait at once, not one per worker"
