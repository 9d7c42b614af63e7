"""Rules an event must pass before it may join a batch: one bad event makes Meta reject all 1,000."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from capi_sync.mappings.fields import STRONG_USER_FIELDS, WEAK_USER_FIELD_SETS

MAX_AGE_SECONDS: Final = 7 * 86_400
MAX_AGE_SECONDS_PHYSICAL_STORE: Final = 62 * 86_400
MAX_FUTURE_SECONDS: Final = 60


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a field was dropped or a row rejected: the field, a stable rule id, and a redacted value."""

    field: str
    rule: str
    value: str | None = None
    detail: str | None = None

    def __str__(self) -> str:
        text = f"{self.field}: {self.rule}"
        if self.detail:
            text += f" ({self.detail})"
        if self.value is not None:
            text += f" [value {self.value}]"
        return text


def max_age_seconds(action_source: str | None) -> int:
    return MAX_AGE_SECONDS_PHYSICAL_STORE if action_source == "physical_store" else MAX_AGE_SECONDS


def validate_event(event: dict[str, Any], *, now: float, strong_key_required: bool) -> list[Problem]:
    """Every rule the event breaks; an empty list means Meta will accept it."""
    problems = []
    event_time = event.get("event_time")
    action_source = event.get("action_source")
    if event_time is not None:
        age = now - event_time
        if age > max_age_seconds(action_source):
            days = max_age_seconds(action_source) // 86_400
            problems.append(Problem("event_time", "too_old", str(event_time), f"older than {days} days"))
        elif -age > MAX_FUTURE_SECONDS:
            problems.append(Problem("event_time", "in_future", str(event_time), "more than a minute ahead"))
    if action_source == "website":
        problems += [
            Problem(field, "required_for_website")
            for field, present in (
                ("event_source_url", "event_source_url" in event),
                ("client_user_agent", "client_user_agent" in event.get("user_data", {})),
            )
            if not present
        ]
    elif action_source == "app":
        app_data = event.get("app_data", {})
        problems += [
            Problem(f"app_data.{key}", "required_for_app")
            for key in ("advertiser_tracking_enabled", "extinfo")
            if key not in app_data
        ]
    problems += _match_floor(event.get("user_data", {}), strong_key_required)
    custom = event.get("custom_data", {})
    if event.get("event_name") == "Purchase":
        problems += [
            Problem(f"custom_data.{key}", "required_for_purchase")
            for key in ("value", "currency")
            if key not in custom
        ]
    return problems


def _match_floor(user_data: dict[str, Any], strong_key_required: bool) -> list[Problem]:
    keys = user_data.keys()
    if not keys:
        return [Problem("customer_info", "no_customer_info", detail="nothing left to match on")]
    for weak in WEAK_USER_FIELD_SETS:
        if keys <= weak:
            detail = f"only {', '.join(sorted(keys))}: too weak for Meta to match"
            return [Problem("customer_info", "weak_match_keys", detail=detail)]
    if strong_key_required and not keys & STRONG_USER_FIELDS:
        detail = f"needs one of {', '.join(sorted(STRONG_USER_FIELDS))}"
        return [Problem("customer_info", "no_strong_match_key", detail=detail)]
    return []
