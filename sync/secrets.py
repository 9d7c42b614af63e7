"""Scrubbing secrets out of every string capi-sync stores or prints.

A secret is removed wherever it occurs, also glued to other text: Meta's `error_user_msg` can echo
a token inside a word (`xTOKENx`), and a driver can quote a password inside a URL. Loading a
pipelines file registers its secrets for the whole process, so the state store, the console and
error messages scrub with one call and no caller has to pass them around.

A value shorter than `MIN_SUBSTRING` characters cannot be removed from inside words without
shredding every message (a password `ab` would erase each "ab"); such a value is scrubbed where
it stands alone. Real tokens and passwords are far longer.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SUBSTRING = 4

_lock = threading.Lock()
_registered: tuple[str, ...] = ()


def register(secrets: Iterable[str]) -> None:
    """Add secrets (a loaded config's tokens, passwords, URL passwords) to the process-wide set."""
    global _registered  # noqa: PLW0603 -- one set for the whole process, by design (see the module)
    with _lock:
        _registered = tuple(sorted({*_registered, *(s for s in secrets if s)}, key=len, reverse=True))


def registered() -> tuple[str, ...]:
    return _registered


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret (registered ones, plus `secrets`) replaced by `[redacted]`."""
    every = _registered if secrets is None else tuple(sorted({*_registered, *secrets}, key=len, reverse=True))
    if not every or not text:
        return text
    return _pattern(every).sub(REDACTED, text)


class ScrubbingFilter(logging.Filter):
    """For a log handler: each record leaves with the secrets scrubbed out of its final text."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def scrub_any(value: Any) -> Any:
    """Scrub the strings inside a JSON-like value (the reasons stored with a rejected row)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: scrub_any(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_any(item) for item in value]
    return value


def contains_secret(text: str) -> str | None:
    """The first registered secret found in `text` (to refuse it in a query or constant), else None."""
    for secret in _registered:
        if len(secret) >= MIN_SUBSTRING and secret in text:
            return secret
    return None


@lru_cache(maxsize=64)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str]:
    forms = {f for secret in secrets for f in (secret, quote(secret, safe=""), quote(secret, safe="/:@"))}
    alternatives = []
    for form in sorted(forms, key=len, reverse=True):  # the longest first: no half-redacted secret
        escaped = re.escape(form)
        short = len(form) < MIN_SUBSTRING
        alternatives.append(rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])" if short else escaped)
    return re.compile("|".join(alternatives))
