"""Match quality from both sides: Meta's Event Match Quality beside what capi-sync sent.

Meta's side comes from its Dataset Quality API
(https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api):
`GET /{version}/dataset_quality?dataset_id=...&fields=web{...}` answers `{"web": [...]}`, one entry
per event name, with the composite score (out of 10), each match key's coverage, diagnostics, the
event coverage against the pixel, deduplication keys and data freshness. Meta computes these over
its own recent window; `agent_name` keeps them to the events sent with capi-sync's `partner_agent`.

capi-sync's side is the results documents of the pipeline's runs in the period: events sent per
event name and the share of them carrying each customer-information key.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capi_sync.errors import MetaAuthError, MetaPermissionError
from capi_sync.mappings.fields import HASHED_USER_FIELDS, UNHASHED_USER_FIELDS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from capi_sync.connectors.meta import MetaClient

# What `quality` asks for, field names as Meta's page shows them in its requests.
FIELDS = (
    "web{event_name,"
    "event_match_quality{composite_score,match_key_feedback{identifier,coverage{percentage}},"
    "diagnostics{name,description,solution,percentage,affected_event_count,total_event_count}},"
    "event_coverage{percentage,goal_percentage},"
    "dedupe_key_feedback{dedupe_key,server_events_with_dedupe_key{percentage},"
    "browser_events_with_dedupe_key{percentage},overall_browser_coverage_from_dedupe_key{percentage}},"
    "data_freshness{upload_frequency}}"
)
PERMISSION_HINT = (
    "Meta's Dataset Quality API needs a token whose user or system user has at least 'Partial"
    " access -> Use events dataset' on this dataset, from an app with the ads_read permission and"
    " ads_management or business_management"
)

# Meta's names for match keys (`match_key_feedback[].identifier`) against capi-sync's keys.
# "email", "phone", "external_id", "ip_address" and "user_agent" are in Meta's examples; the
# others follow the names Meta gives the parameters ("Click ID" for fbc, "Browser ID" for fbp).
_IDENTIFIERS = {
    "email": "em",
    "phone": "ph",
    "phone_number": "ph",
    "first_name": "fn",
    "last_name": "ln",
    "gender": "ge",
    "date_of_birth": "db",
    "birthday": "db",
    "city": "ct",
    "state": "st",
    "zip": "zp",
    "zip_code": "zp",
    "postal_code": "zp",
    "country": "country",
    "external_id": "external_id",
    "ip_address": "client_ip_address",
    "client_ip_address": "client_ip_address",
    "user_agent": "client_user_agent",
    "client_user_agent": "client_user_agent",
    "click_id": "fbc",
    "fbc": "fbc",
    "browser_id": "fbp",
    "fbp": "fbp",
    "login_id": "fb_login_id",
    "fb_login_id": "fb_login_id",
    "facebook_login_id": "fb_login_id",
    "lead_id": "lead_id",
    "subscription_id": "subscription_id",
}


def our_key(identifier: str) -> str:
    """capi-sync's key for one of Meta's match-key identifiers (unknown ones keep Meta's name)."""
    name = re.sub(r"[^a-z0-9]+", "_", identifier.strip().lower()).strip("_")
    return _IDENTIFIERS.get(name, name)


@dataclass(frozen=True)
class Diagnostic:
    """An issue Meta found with the events of one name, and what it suggests."""

    name: str
    description: str | None
    solution: str | None
    percentage: float | None
    affected_events: int | None
    total_events: int | None


@dataclass(frozen=True)
class MetaEventQuality:
    """Meta's figures for one event name; None where Meta left a field out."""

    event_name: str
    composite_score: float | None = None
    match_keys: dict[str, float | None] = field(default_factory=dict)  # Meta's identifier: coverage %
    diagnostics: tuple[Diagnostic, ...] = ()
    event_coverage: float | None = None
    event_coverage_goal: float | None = None
    dedupe_keys: dict[str, float | None] = field(default_factory=dict)  # key: % of server events with it
    upload_frequency: str | None = None


def parse(payload: Any) -> list[MetaEventQuality]:
    """Meta's answer as figures per event name. Meta leaves out what it has no data for, and its
    shape changes between versions: anything missing or of another type reads as None."""
    entries = payload.get("web") if isinstance(payload, dict) else None
    if isinstance(entries, dict):  # a Graph API edge wraps lists in {"data": [...]}
        entries = entries.get("data")
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("event_name"), str):
            continue
        emq = _object(entry.get("event_match_quality"))
        coverage = _object(entry.get("event_coverage"))
        found.append(
            MetaEventQuality(
                event_name=entry["event_name"],
                composite_score=_number(emq.get("composite_score")),
                match_keys={
                    str(item["identifier"]): _number(_object(item.get("coverage")).get("percentage"))
                    for item in _objects(emq.get("match_key_feedback"))
                    if isinstance(item.get("identifier"), str)
                },
                diagnostics=tuple(
                    Diagnostic(
                        name=str(item.get("name") or "unnamed diagnostic"),
                        description=_text(item.get("description")),
                        solution=_text(item.get("solution")),
                        percentage=_number(item.get("percentage")),
                        affected_events=_integer(item.get("affected_event_count")),
                        total_events=_integer(item.get("total_event_count")),
                    )
                    for item in _objects(emq.get("diagnostics"))
                ),
                event_coverage=_number(coverage.get("percentage")),
                event_coverage_goal=_number(coverage.get("goal_percentage")),
                dedupe_keys={
                    str(item["dedupe_key"]): _number(
                        _object(item.get("server_events_with_dedupe_key")).get("percentage")
                    )
                    for item in _objects(entry.get("dedupe_key_feedback"))
                    if isinstance(item.get("dedupe_key"), str)
                },
                upload_frequency=_text(_object(entry.get("data_freshness")).get("upload_frequency")),
            )
        )
    return found


def fetch(client: MetaClient, agent_name: str | None) -> list[MetaEventQuality]:
    """Meta's figures for the client's dataset; a refusal for want of permission says which."""
    try:
        return parse(client.dataset_quality(FIELDS, agent_name))
    except (MetaAuthError, MetaPermissionError) as exc:
        exc.args = (f"{exc}. {PERMISSION_HINT}", *exc.args[1:])
        raise


@dataclass
class SentQuality:
    """capi-sync's side for one event name over a period: events sent and events per key."""

    events: int = 0
    keys: Counter[str] = field(default_factory=Counter)

    def share(self, key: str) -> float | None:
        return self.keys[key] / self.events if self.events else None


def sent_quality(documents: Iterable[dict[str, Any]]) -> tuple[dict[str, SentQuality], int]:
    """Per event name, what the runs' results documents say was sent; and how many documents
    counted no event names (written before capi-sync counted them, or by a dry run)."""
    sent: dict[str, SentQuality] = {}
    without_names = 0
    for document in documents:
        if document.get("dry_run"):
            continue
        quality = document.get("match_quality") or {}
        by_event = quality.get("by_event")
        if by_event is None:
            without_names += bool(quality.get("events"))
            continue
        for name, figures in by_event.items():
            totals = sent.setdefault(name, SentQuality())
            totals.events += int(figures.get("events") or 0)
            for key, carrying in (figures.get("keys") or {}).items():
                totals.keys[key] += int(carrying.get("events") or 0)
    return sent, without_names


def comparison(meta: list[MetaEventQuality], sent: dict[str, SentQuality]) -> list[dict[str, Any]]:
    """Per event name (Meta's first, then those only capi-sync sent), both sides' figures, with
    match keys under capi-sync's names: `meta_coverage` and `sent_share` in percent."""
    rows = []
    names = [entry.event_name for entry in meta] + sorted(set(sent) - {entry.event_name for entry in meta})
    by_name = {entry.event_name: entry for entry in meta}
    for name in names:
        theirs = by_name.get(name)
        ours = sent.get(name, SentQuality())
        coverage = theirs.match_keys if theirs else {}
        meta_keys = {our_key(identifier): value for identifier, value in coverage.items()}
        keys = sorted(set(meta_keys) | set(ours.keys), key=_key_order)
        rows.append(
            {
                "event_name": name,
                "meta": None
                if theirs is None
                else {
                    "composite_score": theirs.composite_score,
                    "event_coverage": theirs.event_coverage,
                    "event_coverage_goal": theirs.event_coverage_goal,
                    "dedupe_keys": theirs.dedupe_keys,
                    "upload_frequency": theirs.upload_frequency,
                    "diagnostics": [vars(item) for item in theirs.diagnostics],
                },
                "events_sent": ours.events,
                "keys": {
                    key: {
                        "meta_coverage": meta_keys.get(key),
                        "sent_share": None if (share := ours.share(key)) is None else round(100 * share, 2),
                    }
                    for key in keys
                },
            }
        )
    return rows


def parse_since(text: str) -> dt.timedelta:
    """`7d`, `36h`, `90m` or `2w` as a length of time."""
    match = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text.lower())
    if not match or int(match[1]) == 0:
        msg = f"--since {text!r}: use a whole number and a unit, m, h, d or w (7d, 36h)"
        raise ValueError(msg)
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return dt.timedelta(**{unit: int(match[1])})


_KEY_ORDER = (*HASHED_USER_FIELDS, *UNHASHED_USER_FIELDS)


def _key_order(key: str) -> tuple[int, str]:
    """capi-sync's keys in the order its own tables list them, then Meta's others by name."""
    return (_KEY_ORDER.index(key), key) if key in _KEY_ORDER else (len(_KEY_ORDER), key)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):  # a Graph API edge
        value = value.get("data")
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _text(value: Any) -> str | None:
    return value[:2000] if isinstance(value, str) else None
