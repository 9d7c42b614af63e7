"""Rows in stream order, grouped into batches of at most 1,000 events, with the rows they settle.

A batch owns every row read since the previous batch, including rows rejected on the way, so
accepting the batch settles all of them and the cursor can move past each one in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capi_sync.report import MatchQuality

if TYPE_CHECKING:
    from capi_sync.mappings.mapper import Rejection


@dataclass
class Batch:
    events: list[dict[str, Any] | bytes] = field(default_factory=list)  # bytes: JSON the core wrote
    delivered_keys: list[str] = field(default_factory=list)
    key_values: list[tuple[Any, ...]] = field(default_factory=list)  # per event, typed
    rejections: list[Rejection] = field(default_factory=list)
    rows: int = 0
    last_cursor: Any = None
    handled: list[tuple[str, Any]] = field(default_factory=list)  # (row key, cursor value), read order
    committed: bool = False  # set once its transaction is written; a second commit is a no-op
    advances_cursor: bool = True  # False for rows re-read by key to retry them
    # Counted into the run's report when the batch commits, never before: a run that fails
    # reports only what it settled, the same figures `capi-sync runs` shows.
    quality: MatchQuality = field(default_factory=MatchQuality)
    no_consent: int = 0  # rows held back by consent: settled with the batch, never sent

    @property
    def event_count(self) -> int:
        return len(self.delivered_keys)

    def add_row(self, row_key: str, cursor: Any) -> None:
        self.rows += 1
        self.last_cursor = cursor
        self.handled.append((row_key, cursor))

    def add_event(
        self, row_key: str, cursor: Any, event: dict[str, Any] | bytes, key_values: tuple[Any, ...]
    ) -> None:
        self.events.append(event)
        self.add_sent_event(row_key, cursor, key_values)

    def add_sent_event(self, row_key: str, cursor: Any, key_values: tuple[Any, ...]) -> None:
        """An event whose row is settled with the batch (`add_event` adds the event itself)."""
        self.add_row(row_key, cursor)
        self.delivered_keys.append(row_key)
        self.key_values.append(key_values)

    def add_events(
        self, row_keys: list[str], cursors: list[Any], events: list[Any], key_values: list[tuple[Any, ...]]
    ) -> None:
        """A block of rows that all became events (the native core's), in bulk."""
        if not row_keys:
            return
        self.events.extend(events)
        self.add_sent_events(row_keys, cursors, key_values)

    def add_sent_events(
        self, row_keys: list[str], cursors: list[Any], key_values: list[tuple[Any, ...]]
    ) -> None:
        """`add_sent_event` for each of a block of rows, none rejected, in bulk."""
        if not row_keys:
            return
        self.rows += len(row_keys)
        self.last_cursor = cursors[-1]
        self.handled.extend(zip(row_keys, cursors, strict=True))
        self.delivered_keys.extend(row_keys)
        self.key_values.extend(key_values)

    def add_rejection(self, cursor: Any, rejection: Rejection) -> None:
        self.add_row(rejection.row_key, cursor)
        self.rejections.append(rejection)
