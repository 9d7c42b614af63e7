"""Sending one batch: transient errors retried, an invalid batch bisected down to the refused events.

It runs on the run's sender threads, or inside a worker process that built the batch itself
(`workers`); either way the outcome comes back as a `Sent` and is committed in read order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capi_sync.connectors.retry import call_with_retry
from capi_sync.errors import MetaRequestError, MetaRetryableError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from capi_sync.connectors.meta import MetaClient
    from capi_sync.connectors.retry import RetryPolicy, StopSignal
    from capi_sync.errors import MetaError

INVALID_PARAMETER = 100  # Graph API code for an invalid event: worth isolating by bisection
OBJECT_NOT_FOUND = 33  # code 100 subcode for a wrong pixel id or missing access: fatal


@dataclass(frozen=True)
class Sent:
    """What sending one batch came to."""

    refused: list[tuple[int, MetaRequestError]] = field(default_factory=list)  # (index, Meta's error)
    retries: int = 0
    transient: MetaRetryableError | None = None  # the retry budget ran out: dead-letter the batch


class Sender:
    """`send(events)` delivers one batch; fatal errors (token, permissions) raise."""

    def __init__(self, client: MetaClient, retry: RetryPolicy, stop: StopSignal | None) -> None:
        self.client = client
        self.retry = retry
        self.stop = stop  # once set, a backoff pause ends at once so the run can commit and exit

    def send(self, events: Sequence[Any]) -> Sent:
        if not events:
            return Sent()
        retries = 0

        def count(_error: MetaError, _pause: float) -> None:
            nonlocal retries
            retries += 1

        try:
            return Sent(self._deliver(events, count), retries)
        except MetaRetryableError as exc:
            return Sent(retries=retries, transient=exc)

    def _deliver(
        self, events: Sequence[Any], on_retry: Any, offset: int = 0
    ) -> list[tuple[int, MetaRequestError]]:
        """Send, retrying transient errors; on an invalid-parameter error, bisect to the bad events."""
        try:
            request = self.client.prepare(events)
            call_with_retry(lambda: self.client.send(request), self.retry, on_retry=on_retry, stop=self.stop)
        except MetaRequestError as exc:
            if exc.code != INVALID_PARAMETER or exc.subcode == OBJECT_NOT_FOUND:
                raise
            if len(events) == 1:
                return [(offset, exc)]
            middle = len(events) // 2
            refused = self._deliver(events[:middle], on_retry, offset)
            refused += self._deliver(events[middle:], on_retry, offset + middle)
            if len(refused) == len(events):
                raise  # every event refused alone: the request itself is wrong, not the rows
            return refused
        return []
