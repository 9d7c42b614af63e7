"""Mapping on worker processes (`workers: N`), results handed back in read order.

Building an event is pure-Python CPU work, so on a multi-core machine a large run maps rows in N
worker processes while this process reads the warehouse, sends and commits. Reading, the cursor
and every commit stay in this process and in read order, so `workers` changes how fast a run is,
never what it sends or where it resumes.

Workers send each event back already serialized (orjson bytes, wrapped in `orjson.Fragment`
here): the dict never crosses the process boundary and is never serialized twice.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

import orjson

from capi_sync.errors import WorkerError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from capi_sync.config import PipelineConfig
    from capi_sync.mappings.mapper import EventMapper, MappedRow

BLOCK_ROWS = 500  # rows per task: large enough to amortize the hand-off, small enough to stay lean
AUTO_WORKERS_AFTER = 20_000  # `workers: auto` maps this many rows in-process before starting workers
AUTO_MAX_WORKERS = 4
_mapper: EventMapper | None = None  # the worker's own compiled mapping


def _start_worker(pipeline: PipelineConfig, columns: list[str]) -> None:
    # Ctrl-C reaches the whole process group: the parent decides how to stop, workers just finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from capi_sync.runner import mapper_for  # noqa: PLC0415 (the runner imports this module)

    global _mapper  # noqa: PLW0603 (one mapper per worker process, built once)
    _mapper = mapper_for(pipeline, columns)


def _map_block(rows: list[tuple[Any, ...]]) -> list[MappedRow]:
    assert _mapper is not None
    out = []
    dumps = orjson.dumps
    for row in rows:
        mapped = _mapper.map_row(row)
        if mapped.event is not None:
            # Only the user_data keys travel with the bytes: they feed the match-quality report.
            keys = tuple(mapped.event["user_data"])
            mapped = mapped._replace(event=dumps(mapped.event), user_keys=keys)
        out.append(mapped)
    return out


def plan_workers(setting: int | str) -> tuple[int, int]:
    """(worker processes, rows to map in-process first) for a `workers` setting."""
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cores, AUTO_MAX_WORKERS)
        return (workers, AUTO_WORKERS_AFTER) if workers > 1 else (1, 0)
    return int(setting), 0


class ParallelMapper:
    """`map_in_order(rows)` maps `(row, cursor)` pairs on `workers` processes, in read order."""

    def __init__(self, pipeline: PipelineConfig, columns: list[str], workers: int, *, after: int = 0) -> None:
        self.after = after  # rows mapped in-process before the first worker starts
        # spawn, not fork: this process already runs sender threads and a warehouse driver.
        # Workers start on the first block submitted, so a run that never reaches `after` has none.
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(pipeline, columns)
        )
        self._ahead = workers * 2  # blocks queued per worker: keeps them busy, memory bounded

    def map_in_order(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[tuple[MappedRow, Any]]:
        try:
            yield from self._map_in_order(rows)
        except BrokenProcessPool as exc:
            msg = "a worker process that builds events died (killed? out of memory?)"
            msg += "; run again, or set workers: 1"
            raise WorkerError(msg) from exc

    def _map_in_order(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[tuple[MappedRow, Any]]:
        pending: deque[tuple[Future[list[MappedRow]], list[Any]]] = deque()
        block: list[tuple[Any, ...]] = []
        cursors: list[Any] = []
        for row, cursor in rows:
            block.append(tuple(row))
            cursors.append(cursor)
            if len(block) >= BLOCK_ROWS:
                pending.append((self._pool.submit(_map_block, block), cursors))
                block, cursors = [], []
                while len(pending) > self._ahead or (pending and pending[0][0].done()):
                    yield from _unpack(*pending.popleft())
        if block:
            pending.append((self._pool.submit(_map_block, block), cursors))
        while pending:
            yield from _unpack(*pending.popleft())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _unpack(future: Future[list[MappedRow]], cursors: list[Any]) -> Iterator[tuple[MappedRow, Any]]:
    fragment: Callable[[bytes], Any] = orjson.Fragment
    for mapped, cursor in zip(future.result(), cursors, strict=True):
        yield (mapped if mapped.event is None else mapped._replace(event=fragment(mapped.event))), cursor
