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

    def __reduce__(self) -> tuple[type[Problem], tuple[str, str, str | None, str | None]]:
        # Rebuilt from its fields: compiled (setup.py), a frozen class cannot be unpickled field by field.
        return Problem, (self.field, self.rule, self.value, self.detail)


def max_age_seconds(action_source: str | None) -> int:
    return MAX_AGE_SECONDS_PHYSICAL_STORE if action_source == "physical_store" else MAX_AGE_SECONDS


def validate_event(event: dict[str, Any], *, now: float, strong_key_required: bool) -> list[Problem]:
    """Every rule the event breaks; an empty list means Meta will accept it.

    Runs once per row: plain `if`s that allocate nothing for an event that passes.
    """
    problems: list[Problem] = []
    event_time = event.get("event_time")
    action_source = event.get("action_source")
    user_data = event.get("user_data") or {}
    if event_time is not None:
        age = now - event_time
        if age > MAX_AGE_SECONDS and age > max_age_seconds(action_source):
            days = max_age_seconds(action_source) // 86_400
            problems.append(Problem("event_time", "too_old", str(event_time), f"older than {days} days"))
        elif -age > MAX_FUTURE_SECONDS:
            problems.append(Problem("event_time", "in_future", str(event_time), "more than a minute ahead"))
    if action_source == "website":
        if "event_source_url" not in event:
            problems.append(Problem("event_source_url", "required_for_website"))
        if "client_user_agent" not in user_data:
            problems.append(Problem("client_user_agent", "required_for_website"))
    elif action_source == "app":
        app_data = event.get("app_data", {})
        problems += [
            Problem(f"app_data.{key}", "required_for_app")
            for key in ("advertiser_tracking_enabled", "extinfo")
            if key not in app_data
        ]
    if (floor := _match_floor(user_data, strong_key_required)) is not None:
        problems.append(floor)
    if event.get("event_name") == "Purchase":
        custom = event.get("custom_data") or {}
        if "value" not in custom:
            problems.append(Problem("custom_data.value", "required_for_purchase"))
        if "currency" not in custom:
            problems.append(Problem("custom_data.currency", "required_for_purchase"))
    return problems


def _match_floor(user_data: dict[str, Any], strong_key_required: bool) -> Problem | None:
    keys = user_data.keys()
    if not keys:
        return Problem("customer_info", "no_customer_info", detail="nothing left to match on")
    if not keys.isdisjoint(STRONG_USER_FIELDS):
        return None  # no weak set holds a strong key: the usual event stops here
    for weak in WEAK_USER_FIELD_SETS:
        if keys <= weak:
            detail = f"only {', '.join(sorted(keys))}: too weak for Meta to match"
            return Problem("customer_info", "weak_match_keys", detail=detail)
    if strong_key_required:
        detail = f"needs one of {', '.join(sorted(STRONG_USER_FIELDS))}"
        return Problem("customer_info", "no_strong_match_key", detail=detail)
    return None
