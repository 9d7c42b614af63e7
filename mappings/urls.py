"""URL helpers for the server event: read a query parameter, redact what may carry personal data."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit, urlunsplit

REDACTED_PATH = "/url-redacted-by-capi-sync"


def query_value(url: str, name: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(name)
    return values[0] if values else None


def redact(url: str, mode: str) -> str:
    """`query`: drop ?query and #fragment. `path`: keep only scheme and host (Freshpaint's HIPAA mode)."""
    parts = urlsplit(url)
    if mode == "path":
        return urlunsplit((parts.scheme, parts.netloc, REDACTED_PATH, "", ""))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
