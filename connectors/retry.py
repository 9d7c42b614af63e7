"""Exponential backoff with full jitter, bounded by total time; only retryable Meta errors retry."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from capi_sync.errors import MetaRetryableError

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_elapsed` caps the time spent waiting for one request, so a run cannot hang on throttling."""

    base_delay: float = 1.0
    max_delay: float = 60.0
    max_elapsed: float = 300.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.max_delay, self.base_delay * 2.0**attempt)


class StopSignal(Protocol):
    """What ends a backoff pause early: a `threading.Event`, or a flag shared with other processes."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[MetaRetryableError, float], None] | None = None,
    stop: StopSignal | None = None,
) -> T:
    """Call `fn` until it succeeds, raises a non-retryable error, or the time budget runs out.

    When Meta says how long its throttle lasts (`retry_after`), the pause is at least that long:
    asking again earlier only counts against the closed budget. A throttle longer than the budget
    left ends the retrying at once (the rows stay pending for the next run).
    Setting `stop` ends the waiting at once with the last error: a run being stopped does not sit
    out minutes of backoff before it can commit and exit.
    """
    deadline = clock() + policy.max_elapsed
    attempt = 0
    while True:
        try:
            return fn()
        except MetaRetryableError as exc:
            pause = max(policy.delay(attempt), exc.retry_after or 0.0)
            if clock() + pause > deadline:
                raise
            if stop is not None and stop.is_set():
                raise
            if on_retry is not None:
                on_retry(exc, pause)
            if stop is not None:
                if stop.wait(pause):
                    raise
            else:
                sleep(pause)
            attempt += 1
