"""The run's raised GC thresholds must not keep cyclic garbage for the whole run."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from capi_sync.building import quiet_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _promoted_cycle() -> weakref.ref[_Node]:
    """A cycle that survived young collections, as a retried request's exception chain does."""
    node = _Node()
    gc.collect(1)  # node is alive: it moves to the oldest generation
    return weakref.ref(node)


def test_a_full_collection_frees_old_cycles_on_a_clock() -> None:
    with quiet_gc(full_every=0.05):
        ref = _promoted_cycle()
        gc.collect(1)  # young collections alone never reach it
        assert ref() is not None
        deadline = time.monotonic() + 5
        while ref() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ref() is None


def test_leaving_restores_thresholds_and_stops_the_collector() -> None:
    before = gc.get_threshold()
    with quiet_gc(full_every=0.05):
        assert gc.get_threshold() != before
        assert any(thread.name == "capi-gc" for thread in threading.enumerate())
    assert gc.get_threshold() == before
    assert not any(thread.name == "capi-gc" for thread in threading.enumerate())


def test_overlapping_runs_restore_the_collector_only_when_the_last_one_ends() -> None:
    before = gc.get_threshold()
    first, second = quiet_gc(), quiet_gc()
    first.__enter__()
    raised = gc.get_threshold()
    second.__enter__()
    first.__exit__(None, None, None)  # the scheduler's runs end in any order
    assert gc.get_threshold() == raised
    assert any(thread.name == "capi-gc" for thread in threading.enumerate())
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    assert not any(thread.name == "capi-gc" for thread in threading.enumerate())
