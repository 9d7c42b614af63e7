"""Building and sending on worker processes (`workers: N`), settled in read order.

Building an event is pure-Python CPU work, so on a multi-core machine a large run hands blocks of
rows (one batch's worth each) to N worker processes. A worker maps its block, sends the batch to
Meta itself (retries and bisection included) and hands back only what the commit needs: row keys,
rejections, which events Meta refused. Reading, the cursor and every commit stay in this process
and in read order, so `workers` changes how fast a run is, never what it sends or where it resumes.

Requests leave in the order `max_in_flight` allows, as on the run's own sender threads: block k's
request waits until block k - max_in_flight was answered, and none leaves once the run is
stopping (Ctrl-C, a fatal error or a dead-lettered batch). An accepted block whose commit was cut
short by a crash is sent again next run with the same `event_id`s, which Meta drops.

Each worker owns one socket pair and takes blocks round-robin, so block k's result is simply the
next message from worker k mod N. A worker killed at any moment (even halfway through writing a
result) shows up here as end of file on its socket or as its process ending, and the run stops
with `WorkerError` instead of waiting forever.
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
import time
import traceback
import types
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from capi_sync.building import mapper_for, quiet_gc
from capi_sync.delivery import Sender, Sent, event_lines
from capi_sync.errors import CapiSyncError, WorkerError

if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Condition

    from capi_sync.config import PipelineConfig
    from capi_sync.connectors.meta import MetaClient
    from capi_sync.connectors.packing import Packing
    from capi_sync.connectors.retry import RetryPolicy
    from capi_sync.mappings.mapper import EventMapper

AUTO_WORKERS_AFTER = 20_000  # `workers: auto` starts workers past this many rows (2 cores, bench rows:
# 30k rows lose 13.2k -> 12.5k events/s, 100k gain 16.5k -> 19.8k, 200k gain 17.3k -> 23k)
AUTO_MAX_WORKERS = 4
BLOCKS_AHEAD_PER_WORKER = 2  # one building, one waiting: workers never idle, memory stays bounded
WORKER_SWITCH_INTERVAL = 0.0005  # seconds
READY_POLL_EVERY = 500  # rows mapped in-process between two looks at whether the workers are up
DIED = "a worker process that builds events died (killed? out of memory?); run again, or set workers: 1"
NOT_SENT = "the run stopped before this batch was sent"


@dataclass(frozen=True)
class Delivery:
    """How workers deliver what they build (everything here crosses to a fresh process)."""

    make_client: Callable[[], MetaClient]
    retry: RetryPolicy
    in_flight: int  # the pipeline's max_in_flight, across all workers
    dry_run: bool = False  # build each request and drop it
    keep_lines: bool = False  # dry run with --output: events come back as JSON lines


@dataclass
class Settled:
    """What the commit needs from one block's rows (never the events themselves), by column.

    Most rows become an event with nothing dropped: those cost this process two list extends and
    one counter update per block, not a call per row. The rest travel whole, by position.
    """

    row_keys: list[str]  # every row's, in read order
    key_values: list[tuple[Any, ...]]  # every row's primary key values, typed
    shapes: Counter[tuple[str, ...]]  # the user_data keys of the plain rows' events
    others: dict[int, tuple[Any, ...]]  # position -> MappedRow fields (`event` None, `user_keys` set
    # where one was built): rows rejected, held back, or sent with values dropped


@dataclass
class Built:
    """One block as a worker settled it."""

    settled: Settled
    cursors: list[Any]
    sent: Sent | None  # None: not sent (the run was stopping) or a fatal error
    error: BaseException | None = None  # a fatal Meta error, raised when the block is committed
    lines: bytes = b""  # dry run with --output: the events, one JSON line each


class _SharedFlag:
    """A flag every worker sees, which a killed process can never wedge.

    `multiprocessing.Event` cannot promise that: its `set` waits until every process sleeping in
    `wait` has woken, and one killed while it slept never does, so the run's own `halt` hung (CI
    timed out on it). Waiting here is a short sleep between looks at one shared byte.
    """

    POLL_EVERY = 0.02  # seconds; only backoff pauses (seconds long) wait on it

    def __init__(self, context: Any) -> None:
        self._value: ctypes.c_byte = context.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._value.value and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(self.POLL_EVERY, left))
        return self.is_set()


class _Turns:
    """At most `in_flight` requests out across workers; none after a failed one, none on abort.

    Blocks k, k + in_flight, k + 2 in_flight ... share a lane and take turns: each waits until the
    one before it in its lane was answered. With `in_flight` 1 that is strict read order. A block
    whose request failed for good stops the blocks after it, never those before (they are still
    committed, as on the run's own sender threads); an abort (Ctrl-C, the run ending) stops them
    all and cuts short any backoff pause.

    The run's own process only ever sets the abort flag, which takes no lock: a worker killed while
    it slept on the shared condition, or while it held its lock, wedges whoever touches the
    condition next (its `notify_all` waits for the dead sleeper to wake). Only workers touch it,
    and the run's process kills them all once it sees one die. Waiters look at the flag at least
    every `LOOK_AGAIN` seconds, since nobody notifies them of it. Each lane is one shared word,
    written by the block whose turn it is: its number and whether it failed, in one store, so no
    process sees the answer without the failure.
    """

    LOOK_AGAIN = 0.1  # seconds: how late a waiting block may notice an abort

    def __init__(self, context: Any, in_flight: int) -> None:
        self.in_flight = in_flight
        unanswered = self._word(-1, failed=False)
        self._lanes: ctypes.Array[ctypes.c_longlong] = context.RawArray("q", [unanswered] * in_flight)
        self._answered: Condition = context.Condition()
        self.abort = _SharedFlag(context)

    @staticmethod
    def _word(block: int, *, failed: bool) -> int:
        return block << 1 | failed

    def wait_for(self, block: int) -> bool:
        """True when `block` may be sent; False when it must not be (an earlier failure, an abort)."""
        lane, before = block % self.in_flight, block - self.in_flight
        with self._answered:  # looked at under the lock, so no answer slips in unnoticed
            while not self._stopped(block):
                if before < 0 or self._lanes[lane] >> 1 >= before:
                    return True
                self._answered.wait(self.LOOK_AGAIN)
            return False

    def _stopped(self, block: int) -> bool:
        return self.abort.is_set() or any(word & 1 and word >> 1 < block for word in self._lanes[:])

    def answered(self, block: int, *, failed: bool = False) -> None:
        """In a worker: `block`'s request is over; `failed`: for good, so no later block may be sent."""
        self._lanes[block % self.in_flight] = self._word(block, failed=failed)
        with self._answered:
            self._answered.notify_all()

    def halt(self) -> None:
        """Never waits: the run's process calls it however its workers died."""
        self.abort.set()


def _serve(
    conn: Connection,
    pipeline: PipelineConfig,
    columns: list[str],
    delivery: Delivery,
    turns: _Turns,
    *,
    packing: Packing | None,
) -> None:
    """A worker's whole life: build the mapping and a client once, then settle blocks until hung up."""
    # Ctrl-C reaches the whole process group: the parent decides how to stop, workers just finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The thread draining blocks needs the GIL briefly per chunk; the default 5 ms wait for it
    # would stall the parent's send and cost a quarter of the throughput.
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    try:
        mapper = mapper_for(pipeline, columns)
        client = delivery.make_client()
        sender = Sender(client, delivery.retry, turns.abort, dry_run=delivery.dry_run)
        quiet_gc().__enter__()  # for the worker's whole life: it ends killed, never restored
        _send(conn, ("ready", None))
    except BaseException as exc:  # whatever it was, the parent reports it (if it still listens)
        with contextlib.suppress(OSError):
            _send(conn, ("error", _failure(exc)))
        return
    # Blocks are drained from the socket as they arrive, so the parent's send never waits on a
    # worker that is itself waiting for the parent to read its result.
    blocks: queue.SimpleQueue[tuple[int, list[tuple[Any, ...]]] | None] = queue.SimpleQueue()
    threading.Thread(target=_receive_all, args=(conn, blocks), daemon=True).start()
    # Requests wait for Meta on sender threads while this thread builds the next block; replies
    # leave in block order from a thread of their own, as each block's request is answered.
    replies: queue.SimpleQueue[Future[tuple[str, Any]]] = queue.SimpleQueue()
    threading.Thread(target=_reply_all, args=(conn, replies), daemon=True).start()
    senders = ThreadPoolExecutor(delivery.in_flight, thread_name_prefix="capi-send")
    while (block := blocks.get()) is not None:
        number, rows = block
        try:
            if packing is not None:
                rows = list(map(packing.unpack, rows))
            settled, events = _build(mapper, rows)
        except Exception as exc:  # a mapper bug stops the run with its traceback
            turns.halt()
            replies.put(_done(("error", _failure(exc))))
            continue
        if delivery.dry_run:
            replies.put(_done(("ok", _dry_run(sender, delivery, settled, events))))
        else:
            replies.put(senders.submit(_deliver, sender, turns, number, settled, events))


def _build(mapper: EventMapper, rows: list[tuple[Any, ...]]) -> tuple[Settled, list[Any]]:
    """Map one block: what the commit needs, and the events to send."""
    row_keys: list[str] = []
    key_values: list[tuple[Any, ...]] = []
    shapes: Counter[tuple[str, ...]] = Counter()
    others: dict[int, tuple[Any, ...]] = {}
    events = []
    for position, row in enumerate(rows):
        mapped = mapper.map_row(row)
        row_keys.append(mapped.row_key)
        key_values.append(mapped.key)
        if (event := mapped.event) is None:
            others[position] = mapped
            continue
        events.append(event)
        if mapped.problems:  # values dropped: the report counts them
            # A plain tuple in MappedRow's field order: a third of the cost of `_replace` and its pickle.
            others[position] = (mapped[0], None, mapped[2], mapped[3], mapped[4], tuple(event["user_data"]))
        else:
            shapes[tuple(event["user_data"])] += 1
    return Settled(row_keys, key_values, shapes, others), events


def _dry_run(sender: Sender, delivery: Delivery, settled: Settled, events: list[Any]) -> tuple[Any, ...]:
    sent = sender.send(events)  # the exact requests, built and dropped
    lines = event_lines(events) if delivery.keep_lines else b""
    return settled, sent, None, lines


def _deliver(
    sender: Sender, turns: _Turns, number: int, settled: Settled, events: list[Any]
) -> tuple[str, Any]:
    """On a sender thread: send one block's events as one batch when its turn comes."""
    if not turns.wait_for(number):
        return "ok", (settled, None, None, b"")
    failed = True  # until the request is known to be over and not dead-lettered
    try:
        sent = sender.send(events)
        failed = sent.transient is not None  # dead-lettered: the run stops, send nothing after it
    except CapiSyncError as exc:  # fatal (token, permissions): the parent raises it in read order
        return "ok", (settled, None, exc, b"")
    except Exception as exc:  # a bug: the run stops with its traceback
        turns.halt()
        return "error", _failure(exc)
    finally:
        turns.answered(number, failed=failed)
    return "ok", (settled, sent, None, b"")


def _reply_all(conn: Connection, replies: queue.SimpleQueue[Future[tuple[str, Any]]]) -> None:
    while True:
        reply = replies.get().result()
        try:
            _send(conn, reply)
        except OSError:  # the parent stopped the run and hung up
            return


def _done(reply: tuple[str, Any]) -> Future[tuple[str, Any]]:
    future: Future[tuple[str, Any]] = Future()
    future.set_result(reply)
    return future


def _send(conn: Connection, message: object) -> None:
    """Plain `pickle`, not `Connection.send`'s ForkingPickler: a third cheaper per row (no sockets
    or other process handles travel here, so its extra reducers are never needed)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(conn: Connection) -> Any:
    # Our own process at the other end of a private socket pair, as with `Connection.recv`.
    return pickle.loads(conn.recv_bytes())  # noqa: S301


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _receive_all(conn: Connection, blocks: queue.SimpleQueue[Any]) -> None:
    try:
        while True:
            blocks.put(_receive(conn))
    except (EOFError, OSError):
        blocks.put(None)


class _Worker:
    """One worker process and this process's end of its socket pair."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        columns: list[str],
        delivery: Delivery,
        turns: _Turns,
        packing: Packing | None,
    ) -> None:
        context = _context()
        self.conn, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve,
            args=(child_end, pipeline, columns, delivery, turns),
            kwargs={"packing": packing},
            name="capi-sync-worker",
            daemon=True,
        )
        with _main_module_hidden():
            self.process.start()
        child_end.close()  # only the worker holds it now: its death is end of file here
        self.ready = False  # set once the worker has built its mapping
        self.cut = False  # an answer was interrupted halfway through being read: the socket is out of step

    def send(self, number: int, rows: list[tuple[Any, ...]]) -> None:
        try:
            _send(self.conn, (number, rows))
        except OSError as exc:
            raise WorkerError(DIED) from exc

    def receive(self, everyone: list[_Worker]) -> tuple[Any, ...]:
        while True:
            # Wait on the socket and every worker's process: data (a whole message, or the end of
            # file a death leaves) or any death ends the wait; a worker may be waiting for its
            # turn behind one that died.
            wait([self.conn, *(worker.process.sentinel for worker in everyone)])
            if not self.conn.poll() and any(not worker.process.is_alive() for worker in everyone):
                raise WorkerError(DIED)
            if (result := self._message()) is not None:
                return result

    def poll_ready(self) -> bool:
        """Whether the worker has built its mapping; never waits."""
        while not self.ready and self.conn.poll():
            self._message()
        return self.ready

    def _message(self) -> tuple[Any, ...] | None:
        self.cut = True  # until the whole message is in
        try:
            status, value = _receive(self.conn)
        except (EOFError, OSError) as exc:
            raise WorkerError(DIED) from exc
        self.cut = False
        if status == "error":
            raise WorkerError(f"a worker process failed to build events: {value}")
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


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Spawn runs the parent's `__main__` again in each worker (the CLI, or the user's own script,
    which then had to guard its calls with `if __name__ == "__main__"`). A worker needs nothing
    from it: everything it runs and receives lives in capi_sync, so while the worker starts,
    `__main__` is a bare module and the worker imports only what building and sending need."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _context() -> Any:
    # spawn, not fork: this process already runs sender threads and a warehouse driver. (A fork
    # server was no faster end to end on the bench: 20.2k against 22.7-23.7k events/s.)
    return multiprocessing.get_context("spawn")


def plan_workers(setting: int | str) -> tuple[int, int]:
    """(worker processes, rows mapped before they start) for a `workers` setting."""
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cores, AUTO_MAX_WORKERS)
        return (workers, AUTO_WORKERS_AFTER) if workers > 1 else (1, 0)
    return int(setting), 0


class ParallelMapper:
    """`settle_in_order(rows)` builds and sends `(row, cursor)` pairs on `workers` processes.

    It yields one `Built` per block of `block_rows` rows, in read order. Workers take a second or
    so to start (a fresh interpreter imports capi-sync and compiles the mapping). With `after` > 0
    (`workers: auto`) they start once `after` rows were mapped and the run keeps mapping in-process
    until they are ready, so it never waits for them; with `after` = 0 (`workers: N`) every row
    goes to the workers.
    """

    def __init__(
        self,
        pipeline: PipelineConfig,
        columns: list[str],
        workers: int,
        delivery: Delivery,
        *,
        block_rows: int,
        after: int = 0,
        columns_used: tuple[int, ...] | None = None,
        packing: Packing | None = None,
    ) -> None:
        self.after = after  # rows mapped in-process before the workers start
        # Workers get only the columns the mapping reads: `select *` on a wide table would otherwise
        # pickle every unused value twice over (here, then back into objects in the worker).
        self._project: Callable[[Any], tuple[Any, ...]] = tuple
        self._packing = packing
        if packing is not None:  # the text (and values that do not pack), unpacked by the worker
            self._project = packing.for_workers
        elif columns_used is not None and 0 < len(columns_used) < len(columns):
            take = itemgetter(*columns_used)
            self._project = take if len(columns_used) > 1 else lambda row: (take(row),)
            columns = [columns[index] for index in columns_used]
        self._pipeline, self._columns, self._count = pipeline, columns, workers
        self._delivery, self._block_rows = delivery, block_rows
        self._workers: list[_Worker] = []  # a run that never reaches `after` starts none
        self._turns: _Turns | None = None
        self._asked = 0
        self._pending: deque[tuple[_Worker, list[Any]]] = deque()  # blocks out, oldest first
        self._blocks = 0  # numbered across the run's reads: the request turns continue
        if after == 0:  # they import while this process still sorts and counts: half a second saved
            self.ready()

    def ready(self) -> bool:
        """Start the workers if need be; True once all can take rows (at once when `after` is 0)."""
        if not self._workers:
            context = _context()
            self._turns = _Turns(context, self._delivery.in_flight)
            self._workers = [
                _Worker(self._pipeline, self._columns, self._delivery, self._turns, self._packing)
                for _ in range(self._count)
            ]
        if self.after == 0:
            return True  # blocks queue on the socket meanwhile
        self._asked += 1
        if self._asked % READY_POLL_EVERY != 1:  # a poll is a system call: not on every row
            return False
        return all(worker.poll_ready() for worker in self._workers)

    def settle_in_order(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[Built]:
        if not self._workers:
            self.ready()
        pending = self._pending
        block: list[tuple[Any, ...]] = []
        cursors: list[Any] = []
        # Enough blocks out that every worker builds while up to max_in_flight wait for Meta.
        ahead = BLOCKS_AHEAD_PER_WORKER * self._count + self._delivery.in_flight
        project = self._project
        for row, cursor in rows:
            block.append(project(row))
            cursors.append(cursor)
            if len(block) >= self._block_rows:
                pending.append((self._send(block), cursors))
                block, cursors = [], []
                while len(pending) > ahead or (pending and pending[0][0].conn.poll()):
                    yield self._settle_oldest()
        if block:
            pending.append((self._send(block), cursors))
        while pending:
            yield self._settle_oldest()

    def _settle_oldest(self) -> Built:
        """The oldest block's answer; the block leaves `_pending` only once its answer is whole."""
        built = self._unpack(*self._pending[0])
        self._pending.popleft()
        return built

    def drain(self) -> Iterator[Built]:
        """After `stop_sending`: the answers of the blocks still out, in order, which waits for each
        request on the wire to end; blocks not sent come back unsent. Nothing more once a worker's
        answer was cut mid-message (the interrupt landed while it was being read)."""
        while self._pending and not any(worker.cut for worker in self._workers):
            try:
                yield self._settle_oldest()
            except (CapiSyncError, OSError, EOFError):
                return

    def stop_sending(self) -> None:
        """No request leaves a worker from now on (those on the wire finish)."""
        if self._turns is not None:
            self._turns.halt()

    def _send(self, block: list[tuple[Any, ...]]) -> _Worker:
        worker = self._workers[self._blocks % self._count]
        worker.send(self._blocks, block)
        self._blocks += 1
        return worker

    def _unpack(self, worker: _Worker, cursors: list[Any]) -> Built:
        settled, sent, error, lines = worker.receive(self._workers)
        return Built(settled, cursors, sent, error, lines)

    def close(self) -> None:
        self.stop_sending()
        for worker in self._workers:
            worker.stop()
        self._workers = []
