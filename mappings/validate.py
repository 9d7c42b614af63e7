"""Rules an event must pass before it may join a batch: one bad event makes Meta reject all 1,000."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from capi_sync.mappings.fields import (
    BUSINESS_MESSAGING_EVENTS,
    CRM_EVENT_SOURCE,
    MESSAGING_CHANNEL_KEYS,
    STRONG_USER_FIELDS,
    WEAK_USER_FIELD_SETS,
)

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
    if action_source == "business_messaging" or "messaging_channel" in event:
        problems += _business_messaging(event, action_source, user_data)
    custom = event.get("custom_data") or {}
    if custom.get("event_source") == CRM_EVENT_SOURCE:
        problems += _conversion_lead(action_source, user_data, custom)
    if (floor := _match_floor(user_data, strong_key_required)) is not None:
        problems.append(floor)
    if event.get("event_name") == "Purchase":
        if "value" not in custom:
            problems.append(Problem("custom_data.value", "required_for_purchase"))
        if "currency" not in custom:
            problems.append(Problem("custom_data.currency", "required_for_purchase"))
    return problems


def _business_messaging(
    event: dict[str, Any], action_source: Any, user_data: dict[str, Any]
) -> list[Problem]:
    """A chat's event: its channel, that channel's ids, and an event name Meta takes from chats."""
    channel = event.get("messaging_channel")
    channels = ", ".join(MESSAGING_CHANNEL_KEYS)
    if action_source != "business_messaging":
        return [
            Problem(
                "messaging_channel",
                "requires_business_messaging",
                detail="action_source is not business_messaging",
            )
        ]
    problems = []
    if channel is None:
        problems.append(
            Problem("messaging_channel", "required_for_business_messaging", detail=f"one of {channels}")
        )
    elif channel not in MESSAGING_CHANNEL_KEYS:
        problems.append(
            Problem("messaging_channel", "unknown_messaging_channel", str(channel)[:64], f"one of {channels}")
        )
    else:
        problems += [
            Problem(f"customer_info.{key}", f"required_for_{channel}")
            for key in MESSAGING_CHANNEL_KEYS[channel]
            if key not in user_data
        ]
    if (name := event.get("event_name")) is not None and name not in BUSINESS_MESSAGING_EVENTS:
        detail = f"Meta takes {', '.join(sorted(BUSINESS_MESSAGING_EVENTS))} from business messaging"
        problems.append(Problem("event_name", "not_a_business_messaging_event", str(name)[:64], detail))
    return problems


def _conversion_lead(action_source: Any, user_data: dict[str, Any], custom: dict[str, Any]) -> list[Problem]:
    """A CRM lead-stage event (`custom_data.event_source: crm`): Meta matches it on the lead id alone."""
    problems = []
    if "lead_id" not in user_data:
        problems.append(
            Problem("customer_info.lead_id", "required_for_crm", detail="Meta's 15 or 16-digit lead id")
        )
    if action_source != "system_generated":
        problems.append(Problem("action_source", "crm_requires_system_generated", str(action_source)[:64]))
    if not custom.get("lead_event_source"):
        problems.append(Problem("custom_data.lead_event_source", "required_for_crm", detail="the CRM's name"))
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
