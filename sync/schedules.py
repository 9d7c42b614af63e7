"""Schedule expressions -> APScheduler triggers: cron, `@hourly`-style aliases, and `every 15m`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from capi_sync.windows import parse_duration

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}


def make_trigger(expression: str, timezone: str) -> BaseTrigger:
    """Raise ValueError with the accepted forms when `expression` is none of them."""
    # Imported here: only pipelines with a `schedule` need APScheduler, and a run never does.
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415
    from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415

    text = expression.strip()
    every = re.fullmatch(r"every\s+(.+)", text, re.IGNORECASE)
    try:
        if every:
            interval = parse_duration(every[1])
            if interval.total_seconds() <= 0:
                raise ValueError("the interval must be positive")
            return IntervalTrigger(seconds=interval.total_seconds(), timezone=timezone)
        return CronTrigger.from_crontab(ALIASES.get(text.lower(), text), timezone=timezone)
    except ValueError as exc:
        msg = (
            f"schedule {expression!r} is not valid ({exc}); use a cron expression like '0 * * * *',"
            " @hourly, @daily, @weekly, @monthly, or 'every 15m'"
        )
        raise ValueError(msg) from None
