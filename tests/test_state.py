"""The state store from nothing: cursor types, ties, atomic batch commits, locks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from capi_sync.errors import PipelineLocked, StateError
from capi_sync.state import (
    BatchCommit,
    CursorState,
    RejectedRow,
    RunStatus,
    StateStore,
    decode_value,
    encode_value,
    locks,
)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every state-store test runs on SQLite (the default) and on a real PostgreSQL server."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    with StateStore(store_url) as opened:
        yield opened


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 3, 29, 1, 30),
        dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC),
        dt.date(2026, 3, 29),
        42,
        1.5,
        Decimal("10.25"),
        "2026-03-29#7",
    ],
)
def test_cursor_values_keep_their_type(value: Any) -> None:
    assert decode_value(*encode_value(value)) == value
    assert type(decode_value(*encode_value(value))) is type(value)


def test_aware_timestamps_are_stored_in_utc() -> None:
    paris = dt.datetime(2026, 7, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert encode_value(paris) == ("timestamptz", "2026-07-01T10:00:00+00:00")


def test_cursor_never_moves_backwards() -> None:
    state = CursorState().advance(5, [("a", 5)])
    assert state.advance(5, [("b", 5)]).keys == {"a", "b"}
    assert state.advance(6, [("x", 5), ("c", 6)]).keys == {"c"}, "only keys at the value itself"
    with pytest.raises(StateError, match="backwards"):
        state.advance(4, [("d", 4)])


def test_lookback_keeps_the_keys_of_rows_handled_since_the_floor() -> None:
    state = CursorState().advance(10, [("a", 7), ("b", 9), ("c", 10)], floor=8)
    assert state.keys == {"b", "c"}
    later = state.advance(12, [("d", 11), ("e", 12)], floor=10)
    assert later.settled == {"c": 10, "d": 11, "e": 12}


def test_settled_keys_and_their_cursor_values_survive_a_reload(store: StateStore) -> None:
    run_id = store.start_run("p")
    noon = dt.datetime(2026, 11, 20, 12)
    first = CursorState().advance(
        noon, [("a", noon - dt.timedelta(hours=2)), ("b", noon)], floor=noon - dt.timedelta(hours=3)
    )
    store.commit_batch("p", BatchCommit(run_id, first), CursorState())
    later = noon + dt.timedelta(hours=2)
    second = first.advance(later, [("c", later)], floor=noon - dt.timedelta(minutes=1))
    store.commit_batch("p", BatchCommit(run_id, second), first)
    assert store.load_cursor("p") == CursorState(later, {"b": noon, "c": later})


def test_batch_commit_writes_cursor_ties_rejections_and_counters(store: StateStore) -> None:
    run_id = store.start_run("p")
    first = CursorState().advance(10, [("1", 10), ("2", 10)])
    store.commit_batch(
        "p",
        BatchCommit(
            run_id,
            first,
            rows_read=3,
            events_sent=2,
            rejections=[RejectedRow("3", [{"field": "em", "rule": "r"}])],
        ),
        CursorState(),
    )
    second = first.advance(10, [("4", 10)])
    store.commit_batch(
        "p", BatchCommit(run_id, second, rows_read=1, events_sent=1, delivered_keys=["3"]), first
    )
    store.finish_run(run_id, RunStatus.SUCCEEDED)

    assert store.load_cursor("p") == CursorState(10, {"1": 10, "2": 10, "4": 10})
    assert store.list_rejected("p") == [], "a row delivered later leaves the rejected list"
    (run,) = store.list_runs("p")
    assert (run.status, run.rows_read, run.events_sent, run.rows_rejected) == ("succeeded", 4, 3, 1)

    store.reset("p")
    assert store.load_cursor("p") == CursorState()


def test_a_second_owner_cannot_take_a_live_lock(store: StateStore, store_url: str) -> None:
    with StateStore(store_url) as other:
        with store.lock("p"):
            with pytest.raises(PipelineLocked, match="already running"):
                other._acquire("p")
            with other.lock("q"):
                pass
        with other.lock("p"):
            pass


def _lock_held_by(store: StateStore, owner: str, pid: int) -> None:
    import socket

    now = dt.datetime.now(dt.UTC)
    with store.engine.begin() as conn:
        conn.execute(
            locks.insert().values(
                pipeline="p",
                owner=owner,
                host=socket.gethostname(),
                pid=pid,
                acquired_at=now,
                heartbeat_at=now,
            )
        )


def test_a_dead_owners_lock_is_taken_over(store: StateStore) -> None:
    """Same boot, same PID namespace, pid gone: the owner is dead for sure."""
    import socket

    from capi_sync.state import _LIVENESS_SCOPE

    dead = 2**22 + 7
    _lock_held_by(store, f"{_LIVENESS_SCOPE}/{socket.gethostname()}:{dead}:ghost", dead)
    with store.lock("p"), store.engine.connect() as conn:
        assert conn.execute(sa.select(locks.c.owner)).scalar() == store.owner


@pytest.mark.parametrize("owner", ["otherboot:4026531836/{host}:{pid}:ctr", "{host}:{pid}:ghost"])
def test_a_lock_from_another_pid_namespace_holds_while_its_heartbeat_is_fresh(
    store: StateStore, owner: str
) -> None:
    """A container on the same hostname: its pid means nothing here, so only the heartbeat counts
    (the second form is a lock written before owners carried their scope)."""
    import socket

    from capi_sync.errors import PipelineLocked

    pid = 2**22 + 7  # no such process in this namespace
    _lock_held_by(store, owner.format(host=socket.gethostname(), pid=pid), pid)
    with pytest.raises(PipelineLocked, match="already running"), store.lock("p"):
        pass


def test_a_lock_without_heartbeat_goes_stale(store: StateStore) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with store.engine.begin() as conn:
        conn.execute(
            locks.insert().values(
                pipeline="p",
                owner="ghost",
                host="elsewhere",
                pid=1,
                acquired_at=old,
                heartbeat_at=old,
            )
        )
    with store.lock("p"):
        pass


def test_a_held_lock_keeps_its_heartbeat_fresh(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from capi_sync import state

    monkeypatch.setattr(state, "HEARTBEAT_EVERY", dt.timedelta(seconds=0.05))
    with store.lock("p"):
        with store.engine.connect() as conn:
            first = conn.execute(sa.select(locks.c.heartbeat_at)).scalar()
        time.sleep(0.3)
        with store.engine.connect() as conn:
            later = conn.execute(sa.select(locks.c.heartbeat_at)).scalar()
    assert later > first
