"""What a run did, in numbers a user can check: read = sent + rejected + pending + skipped.

Every figure counts rows settled by a committed batch (or skipped as already handled), so the
console, `capi-sync runs` and the run's results agree, also for a run that failed halfway.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capi_sync.mappings.fields import HASHED_USER_FIELDS, UNHASHED_USER_FIELDS
from capi_sync.state import RunStatus

if TYPE_CHECKING:
    from collections.abc import Iterable

    from capi_sync.mappings.mapper import Rejection

SAMPLE_REJECTIONS = 20


@dataclass
class MatchQuality:
    """Per customer-information key: how many sent events carry it, and why values were dropped.

    Events are counted per event name too, so that `capi-sync quality` can set them beside Meta's
    score for the same event name.
    """

    events: int = 0
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Events counted by their name and set of keys: rows share a handful of shapes, so counting one
    # costs a dict update instead of one per key (this runs once per event).
    shapes: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # how the pipeline's settings read values

    def add_event(self, user_keys: Iterable[str], event_name: str = "") -> None:
        """Count one sent event and the customer-information keys it carried."""
        self.events += 1
        self.shapes[event_name, user_keys if user_keys.__class__ is tuple else tuple(user_keys)] += 1

    def remove_event(self, user_keys: Iterable[str], event_name: str = "") -> None:
        """Take back an event counted by `add_event` (Meta refused it): its key set may be
        counted under another order, so counts per key stay right even where a set goes below 0."""
        self.events -= 1
        self.shapes[event_name, tuple(user_keys)] -= 1

    def merge(self, other: MatchQuality) -> None:
        self.events += other.events
        self.shapes.update(other.shapes)
        self.dropped.update(other.dropped)

    @property
    def present(self) -> Counter[str]:
        """Per key, how many counted events carry it."""
        present: Counter[str] = Counter()
        for (_name, shape), count in self.shapes.items():
            for key in shape:
                present[key] += count
        return present

    def rows(self) -> list[tuple[str, int, float, int]]:
        """(key, events carrying it, share, values dropped) for every key seen or dropped."""
        dropped_by_key: Counter[str] = Counter()
        for (name, _rule), count in self.dropped.items():
            dropped_by_key[name.removeprefix("customer_info.")] += count
        return _key_rows(self.events, self.present, dropped_by_key)

    def by_event(self) -> dict[str, tuple[int, list[tuple[str, int, float, int]]]]:
        """Per event name, most events first: (events, rows as `rows` gives them, without drops).

        Past `MAX_EVENT_NAMES` names (a name mapped from a column of ids, say), the rest are
        counted together under `OTHER_EVENT_NAMES`, so a results document stays small.
        """
        events: Counter[str] = Counter()
        present: dict[str, Counter[str]] = {}
        for (name, shape), count in self.shapes.items():
            events[name] += count
            keys = present.setdefault(name, Counter())
            for key in shape:
                keys[key] += count
        named = [name for name, count in events.most_common() if count > 0]
        kept, rest = named[:MAX_EVENT_NAMES], named[MAX_EVENT_NAMES:]
        if rest:
            other: Counter[str] = Counter()
            for name in rest:
                other.update(present[name])
            events[OTHER_EVENT_NAMES] = sum(events[name] for name in rest)
            present[OTHER_EVENT_NAMES] = other
            kept.append(OTHER_EVENT_NAMES)
        empty: Counter[str] = Counter()
        return {name: (events[name], _key_rows(events[name], present[name], empty)) for name in kept}


MAX_EVENT_NAMES = 50
OTHER_EVENT_NAMES = "(other event names)"


def _key_rows(events: int, present: Counter[str], dropped: Counter[str]) -> list[tuple[str, int, float, int]]:
    keys = [k for k in (*HASHED_USER_FIELDS, *UNHASHED_USER_FIELDS) if present[k] or dropped[k]]
    return [(k, present[k], present[k] / (events or 1), dropped[k]) for k in keys]


@dataclass
class RunReport:
    pipeline: str
    dry_run: bool = False
    kind: str = "run"  # run | backfill | retry
    timezone: str = "UTC"  # the pipeline's: naive cursor values are wall times there
    run_id: int | None = None  # the state store's row for the run (None in a dry run)
    run_uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # `run_id` in logs and results
    meta_quality: list[dict[str, Any]] | None = None  # Meta's scores after the run (`fetch_quality`)
    status: RunStatus = RunStatus.RUNNING
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    ended_at: dt.datetime | None = None
    rows_read: int = 0  # settled by a committed batch, or skipped: the sum of the four below
    events_sent: int = 0
    rows_rejected: int = 0  # for their data, or refused by Meta: kept with the reason
    rows_pending: int = 0  # Meta could not take them (outage): kept, retried by every run
    rows_skipped: int = 0  # already delivered at the cursor value (ties), not sent again
    rows_fetched: int = 0  # taken from the warehouse so far, settled or not (progress, --limit)
    pending_total: int = 0  # rows of this pipeline still pending after the run, from every run
    rows_lost: int = 0  # pending rows that aged out of Meta's window this run: never delivered
    duplicate_keys: int = 0  # rows whose primary key an earlier row of this run already had
    rows_retried: int = 0  # rejected rows looked up again by key to retry them
    rows_no_consent: int = 0  # skipped: the consent column lacks `consent_category`; never sent
    rows_null_key: int = 0  # rows whose primary key has a NULL: cannot be named or found again
    rows_null_cursor: int = 0  # rows whose cursor is NULL: never read, reported every run
    notes: list[str] = field(default_factory=list)  # what the run decided on the user's behalf
    batches: int = 0
    retries: int = 0
    retry_codes: Counter[str] = field(default_factory=Counter)  # retries per Meta code / HTTP status
    cursor_before: Any = None
    cursor_after: Any = None
    error: str | None = None
    fbtrace_ids: list[str] = field(default_factory=list)
    rejected_by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)
    sample_rejections: list[Rejection] = field(default_factory=list)
    quality: MatchQuality = field(default_factory=MatchQuality)

    def reject(self, rejection: Rejection, *, pending: bool = False) -> None:
        if pending:
            self.rows_pending += 1
        else:
            self.rows_rejected += 1
        self.rejected_by_rule.update((p.field, p.rule) for p in rejection.problems)
        if len(self.sample_rejections) < SAMPLE_REJECTIONS:
            self.sample_rejections.append(rejection)

    @property
    def seconds(self) -> float:
        end = self.ended_at or dt.datetime.now(dt.UTC)
        return (end - self.started_at).total_seconds()

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED
