"""Mapping on worker processes (`workers: N`), results handed back in read order.

Building an event is pure-Python CPU work, so on a multi-core machine a large run maps rows in N
worker processes while this process reads the warehouse, sends and commits. Reading, the cursor
and every commit stay in this process and in read order, so `workers` changes how fast a run is,
never what it sends or where it resumes.

Each worker owns one socket pair and takes blocks round-robin, so block k's result is simply the
next message from worker k mod N. There is no shared queue, lock or helper thread in this process:
a worker killed at any moment (even halfway through writing a result) shows up here as end of file
on its own socket, and the run stops with `WorkerError` instead of waiting forever, which is what
`concurrent.futures.ProcessPoolExecutor` could do when a worker died mid-write.

Workers send each event back already serialized (orjson bytes, wrapped in `orjson.Fragment`
here): the dict never crosses the process boundary and is never serialized twice.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import orjson

from capi_sync.errors import WorkerError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from capi_sync.config import PipelineConfig
    from capi_sync.mappings.mapper import EventMapper, MappedRow

BLOCK_ROWS = 500  # rows per task: large enough to amortize the hand-off, small enough to stay lean
AUTO_WORKERS_AFTER = 20_000  # `workers: auto` maps this many rows in-process before starting workers
AUTO_MAX_WORKERS = 4
BLOCKS_AHEAD_PER_WORKER = 2  # one mapping, one waiting: workers never idle, memory stays bounded
STOP_GRACE_SECONDS = 5.0
WORKER_SWITCH_INTERVAL = 0.0005  # seconds
DIED = "a worker process that builds events died (killed? out of memory?); run again, or set workers: 1"


def _serve(conn: Connection, pipeline: PipelineConfig, columns: list[str]) -> None:
    """A worker's whole life: build the mapping once, then map blocks until the parent hangs up."""
    # Ctrl-C reaches the whole process group: the parent decides how to stop, workers just finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The thread draining blocks needs the GIL briefly per chunk; the default 5 ms wait for it
    # would stall the parent's send and cost a quarter of the throughput.
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    try:
        from capi_sync.runner import mapper_for  # noqa: PLC0415 (the runner imports this module)

        mapper = mapper_for(pipeline, columns)
    except BaseException as exc:  # whatever it was, the parent reports it
        conn.send(("error", _failure(exc)))
        return
    # Blocks are drained from the socket as they arrive, so the parent's send never waits on a
    # worker that is itself waiting for the parent to read its result.
    blocks: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()
    threading.Thread(target=_receive_all, args=(conn, blocks), daemon=True).start()
    while (rows := blocks.get()) is not None:
        try:
            reply: tuple[str, Any] = ("ok", _map_block(mapper, rows))
        except Exception as exc:  # a mapper bug stops the run with its traceback
            reply = ("error", _failure(exc))
        try:
            conn.send(reply)
        except OSError:  # the parent stopped the run and hung up
            return


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _receive_all(conn: Connection, blocks: queue.SimpleQueue[list[tuple[Any, ...]] | None]) -> None:
    try:
        while True:
            blocks.put(conn.recv())
    except (EOFError, OSError):
        blocks.put(None)


def _map_block(mapper: EventMapper, rows: list[tuple[Any, ...]]) -> list[MappedRow]:
    out = []
    dumps = orjson.dumps
    for row in rows:
        mapped = mapper.map_row(row)
        if mapped.event is not None:
            # Only the user_data keys travel with the bytes: they feed the match-quality report.
            keys = tuple(mapped.event["user_data"])
            mapped = mapped._replace(event=dumps(mapped.event), user_keys=keys)
        out.append(mapped)
    return out


class _Worker:
    """One worker process and this process's end of its socket pair."""

    def __init__(self, pipeline: PipelineConfig, columns: list[str]) -> None:
        # spawn, not fork: this process already runs sender threads and a warehouse driver.
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child_end, pipeline, columns), name="capi-sync-mapper", daemon=True
        )
        self.process.start()
        child_end.close()  # only the worker holds it now: its death is end of file here

    def send(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            self.conn.send(rows)
        except OSError as exc:
            raise WorkerError(DIED) from exc

    def receive(self) -> list[MappedRow]:
        # Wait on the socket and the process together: either data (a whole result, or the end of
        # file a death leaves) or the death itself ends the wait.
        wait([self.conn, self.process.sentinel])
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerError(DIED) from exc
        if status == "error":
            raise WorkerError(f"a worker process failed to map rows: {value}")
        return value

    def stop(self, *, kill: bool) -> None:
        self.conn.close()  # a healthy worker reads end of file and returns
        if kill:
            self.process.kill()
        self.process.join(STOP_GRACE_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


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
        self._pipeline, self._columns, self._count = pipeline, columns, workers
        # Workers start on the first block, so a run that never reaches `after` starts none.
        self._workers: list[_Worker] = []
        self._outstanding = 0  # blocks sent and not yet received back
        self._sent = 0

    def map_in_order(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[tuple[MappedRow, Any]]:
        pending: deque[tuple[_Worker, list[Any]]] = deque()
        block: list[tuple[Any, ...]] = []
        cursors: list[Any] = []
        for row, cursor in rows:
            block.append(tuple(row))
            cursors.append(cursor)
            if len(block) >= BLOCK_ROWS:
                pending.append((self._send(block), cursors))
                block, cursors = [], []
                ahead = BLOCKS_AHEAD_PER_WORKER * self._count
                while len(pending) > ahead or (pending and pending[0][0].conn.poll()):
                    yield from self._receive(*pending.popleft())
        if block:
            pending.append((self._send(block), cursors))
        while pending:
            yield from self._receive(*pending.popleft())

    def _send(self, block: list[tuple[Any, ...]]) -> _Worker:
        if not self._workers:
            self._workers = [_Worker(self._pipeline, self._columns) for _ in range(self._count)]
        worker = self._workers[self._sent % self._count]
        self._sent += 1
        self._outstanding += 1
        worker.send(block)
        return worker

    def _receive(self, worker: _Worker, cursors: list[Any]) -> Iterator[tuple[MappedRow, Any]]:
        mapped_rows = worker.receive()
        self._outstanding -= 1
        fragment: Callable[[bytes], Any] = orjson.Fragment
        for mapped, cursor in zip(mapped_rows, cursors, strict=True):
            yield (mapped if mapped.event is None else mapped._replace(event=fragment(mapped.event))), cursor

    def close(self) -> None:
        """Stop every worker; one still holding blocks (the run stopped early) is killed, not awaited."""
        kill = self._outstanding > 0
        for worker in self._workers:
            worker.stop(kill=kill)
        self._workers = []
