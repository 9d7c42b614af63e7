"""Sending one batch: transient errors retried, an invalid batch bisected down to the refused events.

It runs on the run's sender threads; the outcome comes back as a `Sent` and is committed in read order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from capi_sync.connectors.retry import call_with_retry
from capi_sync.errors import EventNotSerializable, MetaRequestError, MetaRetryableError, MetaTooLargeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from capi_sync.connectors.meta import MetaClient, PreparedRequest
    from capi_sync.connectors.retry import RetryPolicy, StopSignal
    from capi_sync.errors import MetaError

INVALID_PARAMETER = 100  # Graph API code for an invalid event: worth isolating by bisection
OBJECT_NOT_FOUND = 33  # code 100 subcode for a wrong pixel id or missing access: fatal


@dataclass(frozen=True)
class Sent:
    """What sending one batch came to."""

    refused: list[tuple[int, MetaRequestError]] = field(default_factory=list)  # (index, Meta's error)
    retries: int = 0
    retry_codes: Counter[str] = field(default_factory=Counter)  # per Meta error code (or HTTP status)
    transient: MetaRetryableError | None = None  # the retry budget ran out: dead-letter the batch


def retry_code(error: MetaError) -> str:
    """A low-cardinality label for a retried error: Meta's code, else the HTTP status, else
    `network` (a timeout, a refused connection)."""
    if error.code is not None:
        return str(error.code)
    if error.status is not None:
        return f"http_{error.status}"
    return "network"


class Sender:
    """`send(events)` delivers one batch; fatal errors (token, permissions) raise.

    A batch becomes as many requests as `client.max_request_bytes` needs, halved until each fits;
    an event that does not fit alone is refused (`event_too_large`) without being sent. With
    `dry_run` the requests are built the same way and nothing leaves.
    """

    def __init__(
        self, client: MetaClient, retry: RetryPolicy, stop: StopSignal | None, *, dry_run: bool = False
    ) -> None:
        self.client = client
        self.retry = retry
        self.stop = stop  # once set, a backoff pause ends at once so the run can commit and exit
        self.dry_run = dry_run

    def send(self, events: Sequence[Any]) -> Sent:
        if not events:
            return Sent()
        codes: Counter[str] = Counter()

        def count(error: MetaError, _pause: float) -> None:
            codes[retry_code(error)] += 1

        try:
            return Sent(self._deliver(events, count, 0, whole=True), codes.total(), codes)
        except MetaRetryableError as exc:
            return Sent(retries=codes.total(), retry_codes=codes, transient=exc)

    def _prepare(self, events: Sequence[Any]) -> PreparedRequest:
        """The request's bytes, refused here when JSON cannot carry an event or it is too large."""
        try:
            request = self.client.prepare(events)
        except TypeError as exc:  # orjson's JSONEncodeError: a value out of JSON's range
            raise EventNotSerializable(f"unserializable_event: {exc}") from None
        if len(request.body) > self.client.max_request_bytes:
            raise MetaTooLargeError(
                f"event_too_large: {len(request.body):,} bytes, over max_request_bytes"
                f" ({self.client.max_request_bytes:,})",
                status=413,
            )
        return request

    def _deliver(
        self, events: Sequence[Any], on_retry: Any, offset: int, *, whole: bool = False
    ) -> list[tuple[int, MetaRequestError]]:
        """Send, retrying transient errors; split what is too large or refused down to the bad events.

        Only the whole batch, each of its events refused on its own, says the request itself is
        wrong (the pixel, the test code): any smaller set of refused events is a set of bad rows.
        """
        try:
            request = self._prepare(events)
            if not self.dry_run:
                call_with_retry(
                    lambda: self.client.send(request), self.retry, on_retry=on_retry, stop=self.stop
                )
        except MetaRequestError as exc:
            if not _splittable(exc):
                raise
            if len(events) == 1:
                return [(offset, exc)]
            middle = len(events) // 2
            refused = self._deliver(events[:middle], on_retry, offset)
            refused += self._deliver(events[middle:], on_retry, offset + middle)
            if whole and len(refused) == len(events) and not isinstance(exc, _REFUSED_HERE):
                raise  # every event refused alone: the request itself is wrong, not the rows
            return refused
        return []


def event_lines(events: Sequence[Any]) -> bytes:
    """`--output`'s JSON lines: each event as Meta would receive it (one JSON cannot carry is not)."""
    lines = []
    for event in events:
        if event.__class__ is bytes:  # written by the native core
            lines.append(event + b"\n")
            continue
        try:
            lines.append(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        except TypeError:
            continue  # refused as unserializable_event by the send beside it
    return b"".join(lines)


_REFUSED_HERE = (MetaTooLargeError, EventNotSerializable)  # per event, so never "the request is wrong"


def _splittable(error: MetaRequestError) -> bool:
    """Too large, unserializable, or an invalid parameter in some event (not a wrong pixel):
    halving isolates it."""
    if isinstance(error, _REFUSED_HERE):
        return True
    return error.code == INVALID_PARAMETER and error.subcode != OBJECT_NOT_FOUND
