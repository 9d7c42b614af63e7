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

Workers send each event back already serialized (orjson bytes, which the runner wraps in
`orjson.Fragment`): the dict never crosses the process boundary and is never serialized twice.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
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
    from collections.abc import Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from capi_sync.config import PipelineConfig
    from capi_sync.mappings.mapper import EventMapper, MappedRow

BLOCK_ROWS = 500  # rows per task: large enough to amortize the hand-off, small enough to stay lean
AUTO_WORKERS_AFTER = 200_000  # `workers: auto` starts workers past this many rows: below, they cost more
# than they bring (2 cores: 100k rows tie at 13.9k events/s, 30k rows lose 11.9k -> 9.5k)
AUTO_MAX_WORKERS = 4
BLOCKS_AHEAD_PER_WORKER = 2  # one mapping, one waiting: workers never idle, memory stays bounded
WORKER_SWITCH_INTERVAL = 0.0005  # seconds
READY_POLL_EVERY = 500  # rows mapped in-process between two looks at whether the workers are up
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
        _send(conn, ("ready", None))
    except BaseException as exc:  # whatever it was, the parent reports it (if it still listens)
        with contextlib.suppress(OSError):
            _send(conn, ("error", _failure(exc)))
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
            _send(conn, reply)
        except OSError:  # the parent stopped the run and hung up
            return


def _send(conn: Connection, message: object) -> None:
    """Plain `pickle`, not `Connection.send`'s ForkingPickler: a third cheaper per row (no sockets
    or other process handles travel here, so its extra reducers are never needed)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(conn: Connection) -> Any:
    # Our own process at the other end of a private socket pair, as with `Connection.recv`.
    return pickle.loads(conn.recv_bytes())  # noqa: S301


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _receive_all(conn: Connection, blocks: queue.SimpleQueue[list[tuple[Any, ...]] | None]) -> None:
    try:
        while True:
            blocks.put(_receive(conn))
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
        self.ready = False  # set once the worker has built its mapping

    def send(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            _send(self.conn, rows)
        except OSError as exc:
            raise WorkerError(DIED) from exc

    def receive(self) -> list[MappedRow]:
        while True:
            # Wait on the socket and the process together: either data (a whole message, or the
            # end of file a death leaves) or the death itself ends the wait.
            wait([self.conn, self.process.sentinel])
            if (result := self._message()) is not None:
                return result

    def poll_ready(self) -> bool:
        """Whether the worker has built its mapping; never waits."""
        while not self.ready and self.conn.poll():
            self._message()
        return self.ready

    def _message(self) -> list[MappedRow] | None:
        try:
            status, value = _receive(self.conn)
        except (EOFError, OSError) as exc:
            raise WorkerError(DIED) from exc
        if status == "error":
            raise WorkerError(f"a worker process failed to map rows: {value}")
        if status == "ready":
            self.ready = True
            return None
        return value

    def stop(self) -> None:
        # Killed, not asked: whatever it still holds was not wanted (the run is over or stopping),
        # and a worker still importing would otherwise keep the run waiting.
        self.conn.close()
        self.process.kill()
        self.process.join()


def plan_workers(setting: int | str) -> tuple[int, int]:
    """(worker processes, rows mapped before they start) for a `workers` setting."""
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cores, AUTO_MAX_WORKERS)
        return (workers, AUTO_WORKERS_AFTER) if workers > 1 else (1, 0)
    return int(setting), 0


class ParallelMapper:
    """`map_in_order(rows)` maps `(row, cursor)` pairs on `workers` processes, in read order.

    Workers take a second or so to start (a fresh interpreter imports capi-sync and compiles the
    mapping). With `after` > 0 (`workers: auto`) they start once `after` rows were mapped and the
    run keeps mapping in-process until they are ready, so it never waits for them; with `after`
    = 0 (`workers: N`) every row is mapped on the workers.
    """

    def __init__(self, pipeline: PipelineConfig, columns: list[str], workers: int, *, after: int = 0) -> None:
        self.after = after  # rows mapped in-process before the workers start
        self._pipeline, self._columns, self._count = pipeline, columns, workers
        self._workers: list[_Worker] = []  # a run that never reaches `after` starts none
        self._asked = 0

    def ready(self) -> bool:
        """Start the workers if need be; True once all can take rows (at once when `after` is 0)."""
        if not self._workers:
            self._workers = [_Worker(self._pipeline, self._columns) for _ in range(self._count)]
        if self.after == 0:
            return True  # blocks queue on the socket meanwhile
        self._asked += 1
        if self._asked % READY_POLL_EVERY != 1:  # a poll is a system call: not on every row
            return False
        return all(worker.poll_ready() for worker in self._workers)

    def map_in_order(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[tuple[MappedRow, Any]]:
        if not self._workers:
            self.ready()
        pending: deque[tuple[_Worker, list[Any]]] = deque()
        block: list[tuple[Any, ...]] = []
        cursors: list[Any] = []
        ahead = BLOCKS_AHEAD_PER_WORKER * self._count
        sent = 0
        for row, cursor in rows:
            block.append(tuple(row))
            cursors.append(cursor)
            if len(block) >= BLOCK_ROWS:
                pending.append((self._send(sent, block), cursors))
                sent += 1
                block, cursors = [], []
                while len(pending) > ahead or (pending and pending[0][0].conn.poll()):
                    yield from _unpack(*pending.popleft())
        if block:
            pending.append((self._send(sent, block), cursors))
        while pending:
            yield from _unpack(*pending.popleft())

    def _send(self, number: int, block: list[tuple[Any, ...]]) -> _Worker:
        worker = self._workers[number % self._count]
        worker.send(block)
        return worker

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []


def _unpack(worker: _Worker, cursors: list[Any]) -> Iterator[tuple[MappedRow, Any]]:
    return zip(worker.receive(), cursors, strict=True)
