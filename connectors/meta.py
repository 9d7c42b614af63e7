"""The Conversions API client: one request per batch of at most 1,000 events.

The token travels in the `Authorization` header, never in the URL, and is scrubbed from every
message this module raises.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Any

import orjson
import requests

from capi_sync.errors import (
    MetaAuthError,
    MetaError,
    MetaFatalError,
    MetaPermissionError,
    MetaRequestError,
    MetaRetryableError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_EVENTS_PER_REQUEST = 1000
_THROTTLING_CODES = frozenset({4, 17, 32, 613, 80003, 80004})
_TRANSIENT_CODES = frozenset({1, 2, 341, 368})
_PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """Exactly what goes on the wire; `--dry-run` builds these and stops."""

    url: str
    headers: dict[str, str]
    body: bytes
    event_count: int


@dataclass(frozen=True, slots=True)
class SendResult:
    events_received: int
    fbtrace_id: str | None
    messages: tuple[str, ...] = ()


class MetaClient:
    """Usage: `MetaClient(pixel_id, token).send(events)` returns a `SendResult` or raises `MetaError`."""

    def __init__(
        self,
        pixel_id: str,
        access_token: str,
        *,
        api_version: str = "v26.0",
        graph_url: str = "https://graph.facebook.com",
        timeout: float = 30.0,
        test_event_code: str | None = None,
        partner_agent: str | None = None,
        app_secret: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.pixel_url = f"{graph_url.rstrip('/')}/{api_version}/{pixel_id}"
        self.url = f"{self.pixel_url}/events"
        self._token = access_token
        self._secrets = [secret for secret in (access_token, app_secret) if secret]
        self._timeout = timeout
        self._extra: dict[str, Any] = {}
        if test_event_code:
            self._extra["test_event_code"] = test_event_code
        if partner_agent:
            self._extra["partner_agent"] = partner_agent
        if app_secret:
            proof = hmac.new(app_secret.encode(), access_token.encode(), sha256).hexdigest()
            self._extra["appsecret_proof"] = proof
        self._session = session or requests.Session()

    def prepare(self, events: Sequence[dict[str, Any]]) -> PreparedRequest:
        if not 0 < len(events) <= MAX_EVENTS_PER_REQUEST:
            msg = f"a request carries 1 to {MAX_EVENTS_PER_REQUEST} events, not {len(events)}"
            raise ValueError(msg)
        body = orjson.dumps({"data": events, **self._extra})
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        return PreparedRequest(self.url, headers, body, len(events))

    def send(self, events: Sequence[dict[str, Any]] | PreparedRequest) -> SendResult:
        """One attempt; retrying is the caller's choice (see `retry.call_with_retry`).

        A caller that retries passes the prepared request, so a batch is serialized once, not per try.
        """
        request = events if isinstance(events, PreparedRequest) else self.prepare(events)
        try:
            response = self._session.post(
                request.url, data=request.body, headers=request.headers, timeout=self._timeout
            )
        except requests.Timeout as exc:
            raise MetaRetryableError(self._scrub(f"timed out after {self._timeout}s: {exc}")) from None
        except requests.RequestException as exc:
            raise MetaRetryableError(self._scrub(f"could not reach the Graph API: {exc}")) from None
        return self._result(response, request.event_count)

    def check(self) -> str:
        """A harmless read of the pixel: proves the token is valid and may use this pixel.

        Returns the pixel's name (or id); raises `MetaAuthError`, `MetaPermissionError` or
        `MetaRequestError` (code 100 subcode 33: no such pixel, or no access) like `send` does.
        """
        try:
            response = self._session.get(
                self.pixel_url,
                params={"fields": "id,name"},
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise MetaRetryableError(self._scrub(f"could not reach the Graph API: {exc}")) from None
        try:
            payload = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            payload = {}
        if response.status_code == 200 and isinstance(payload, dict) and "error" not in payload:
            return str(payload.get("name") or payload.get("id") or "")
        raise self._error(response.status_code, payload, response.text)

    def _result(self, response: requests.Response, sent: int) -> SendResult:
        try:
            payload = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            payload = {}
        if response.status_code == 200 and isinstance(payload, dict) and "error" not in payload:
            received = payload.get("events_received")
            if received != sent:
                msg = f"Meta acknowledged {received} of {sent} events"
                raise MetaRetryableError(msg, status=200, fbtrace_id=payload.get("fbtrace_id"))
            messages = tuple(str(message) for message in payload.get("messages") or ())
            return SendResult(received, payload.get("fbtrace_id"), messages)
        raise self._error(response.status_code, payload, response.text)

    def _error(self, status: int, payload: Any, text: str) -> MetaError:
        """Map an HTTP status and Graph error body to the exception that says what to do."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            kind = MetaRetryableError if status >= 500 or status == 429 else MetaFatalError
            return kind(self._scrub(f"HTTP {status} from the Graph API: {text[:300]}"), status=status)
        code = error.get("code")
        details = {
            "status": status,
            "code": code,
            "subcode": error.get("error_subcode"),
            "user_message": self._scrub(str(error.get("error_user_msg") or "")) or None,
            "fbtrace_id": error.get("fbtrace_id"),
        }
        message = self._scrub(str(error.get("message") or "unknown error"))
        described = f"Graph API error {code}: {message}"
        if details["user_message"]:
            described += f" ({details['user_message']})"
        if code == 190:
            hint = "the access token is invalid or expired: generate a new one in Events Manager"
            return MetaAuthError(f"{described}; {hint}", **details)
        if code in _PERMISSION_CODES:
            hint = "the token lacks a permission for this pixel: check its system user's assets"
            return MetaPermissionError(f"{described}; {hint}", **details)
        if (
            code in _THROTTLING_CODES
            or code in _TRANSIENT_CODES
            or error.get("is_transient")
            or status >= 500
            or status == 429
        ):
            return MetaRetryableError(described, **details)
        return MetaRequestError(described, **details)

    def _scrub(self, text: str) -> str:
        """Whole occurrences only: a placeholder token like `x` must not redact every letter x."""
        for secret in self._secrets:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "[redacted]", text)
        return text

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"MetaClient(url={self.url!r}, access_token='********')"
