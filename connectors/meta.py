"""The Conversions API client: one request per batch of at most 1,000 events.

The token travels in the `Authorization` header, never in the URL, and is scrubbed from every
message this module raises. `timeout` bounds a whole request, answer included (a server that
trickles its answer a byte at a time is cut off), and the events POST never follows a redirect:
a 3xx would deliver the events to another host and count them as sent.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import threading
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Any, TypedDict

import orjson
import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from capi_sync.errors import (
    MetaAuthError,
    MetaError,
    MetaFatalError,
    MetaPermissionError,
    MetaRequestError,
    MetaRetryableError,
    MetaTooLargeError,
)
from capi_sync.secrets import scrub

if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_EVENTS_PER_REQUEST = 1000
VERSION_WARNING_HEADER = "X-Ad-Api-Version-Warning"
# Meta's rate-limit usage headers: JSON with percentages of the budget used (Graph API docs,
# "Rate Limiting"): the app's, the ad account's, and per business use case.
USAGE_HEADERS = ("X-App-Usage", "X-Ad-Account-Usage", "X-Business-Use-Case-Usage")
_USAGE_FIELDS = frozenset({"call_count", "total_cputime", "total_time", "acc_id_util_pct"})
log = logging.getLogger("capi_sync.meta")
_THROTTLING_CODES = frozenset({4, 17, 32, 613, 80003, 80004})
_TRANSIENT_CODES = frozenset({1, 2, 341, 368})
_PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})


class _ErrorDetails(TypedDict):
    """What a Graph API error tells, as `MetaError` keeps it."""

    status: int
    code: int | None
    subcode: int | None
    user_message: str | None
    fbtrace_id: str | None


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


# The connection each thread's current request runs on, so a `_Deadline` timer can cut it.
_connection_of_thread: dict[int, urllib3.connection.HTTPConnection] = {}


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _connection_of_thread[threading.get_ident()] = self
        super().request(*args, **kwargs)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _connection_of_thread[threading.get_ident()] = self
        super().request(*args, **kwargs)


class _TrackedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections a `_Deadline` can find and cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _TRACKED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        """Through an HTTP(S) proxy too (`HTTPS_PROXY`); a SOCKS proxy keeps its own connections,
        and there the deadline still reports the timeout once the request returns."""
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _TRACKED_POOLS
        return manager


_TRACKED_POOLS = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class _Deadline:
    """Bounds a whole request, answer included.

    requests' `timeout` bounds each socket read, so a server answering a byte a second never
    times out. When the deadline passes, a timer shuts the request's socket down, which ends the
    blocked read at once; `expired` says that is why the request failed.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _connection_of_thread.pop(self._thread, None)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        _connection_of_thread.pop(self._thread, None)

    def _cut(self) -> None:
        with self._lock:  # never cuts a connection that went back to the pool after its answer
            if self._done:
                return
            self.expired = True
            connection = _connection_of_thread.get(self._thread)
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


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
        max_request_bytes: int = 4 * 1024 * 1024,
        test_event_code: str | None = None,
        partner_agent: str | None = None,
        app_secret: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.pixel_id = pixel_id
        self.version_url = f"{graph_url.rstrip('/')}/{api_version}"
        self.pixel_url = f"{self.version_url}/{pixel_id}"
        self.url = f"{self.pixel_url}/events"
        self._token = access_token
        self._secrets = tuple(secret for secret in (access_token, app_secret) if secret)
        self._timeout = timeout
        self.max_request_bytes = max_request_bytes  # the sender splits requests to stay under it
        self._extra: dict[str, Any] = {}
        if test_event_code:
            self._extra["test_event_code"] = test_event_code
        if partner_agent:
            self._extra["partner_agent"] = partner_agent
        if app_secret:
            proof = hmac.new(app_secret.encode(), access_token.encode(), sha256).hexdigest()
            self._extra["appsecret_proof"] = proof
        # What follows the events in a body, as orjson writes `{"data": [...], **extra}`.
        self._extra_json = (b"," + orjson.dumps(self._extra)[1:]) if self._extra else b"}"
        self._version_warned = False  # Meta's deprecation warning is logged once per client
        self.usage: float | None = None  # the highest share (%) of a rate-limit budget Meta reported last
        self._session = session or requests.Session()
        adapter = _DeadlineAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def prepare(self, events: Sequence[dict[str, Any] | bytes]) -> PreparedRequest:
        """The request for `events`: dicts, or JSON bytes the native core wrote (the same body)."""
        if not 0 < len(events) <= MAX_EVENTS_PER_REQUEST:
            msg = f"a request carries 1 to {MAX_EVENTS_PER_REQUEST} events, not {len(events)}"
            raise ValueError(msg)
        if any(event.__class__ is bytes for event in events):  # written by the native core
            parts = [event if event.__class__ is bytes else orjson.dumps(event) for event in events]
            body = b'{"data":[' + b",".join(parts) + b"]" + self._extra_json
        else:
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
        with _Deadline(self._timeout) as deadline:
            try:
                response = self._session.post(
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    stream=True,
                )
                body = _read_capped(response)  # inside the deadline
            except requests.Timeout:
                deadline.expired = True
            except requests.RequestException as exc:
                if not deadline.expired:
                    raise MetaRetryableError(self._scrub(f"could not reach the Graph API: {exc}")) from None
        if deadline.expired:  # a cut answer may even look complete: it is not to be trusted
            msg = f"timed out: no complete answer within timeout: {self._timeout}s"
            raise MetaRetryableError(msg)
        return self._result(response, body, request.event_count)

    def check(self) -> str:
        """A harmless read of the pixel: proves the token is valid and may use this pixel.

        Returns the pixel's name (or id); raises `MetaAuthError`, `MetaPermissionError` or
        `MetaRequestError` (code 100 subcode 33: no such pixel, or no access) like `send` does.
        """
        payload = self._get(self.pixel_url, {"fields": "id,name"})
        return str(payload.get("name") or payload.get("id") or "")

    def dataset_quality(self, fields: str, agent_name: str | None = None) -> dict[str, Any]:
        """Meta's Dataset Quality API for this pixel: `GET /{version}/dataset_quality`.

        `agent_name` keeps to the events sent with that `partner_agent` (Meta normalizes the agent
        to the lowercase name before its first `_`); without it, all the dataset's server events.
        """
        params = {"dataset_id": self.pixel_id, "fields": fields}
        if agent_name:
            params["agent_name"] = agent_name
        return self._get(f"{self.version_url}/dataset_quality", params)

    def _get(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        """A Graph API read, the token in the header; the answer's JSON object, or `MetaError`."""
        try:
            with _Deadline(self._timeout):
                response = self._session.get(
                    url,
                    params=params,
                    headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                    timeout=self._timeout,
                    allow_redirects=False,
                    stream=True,
                )
                body = _read_capped(response)  # inside the deadline
        except requests.RequestException as exc:
            raise MetaRetryableError(self._scrub(f"could not reach the Graph API: {exc}")) from None
        self._note_version_warning(response)
        payload = _json(body)
        if response.status_code == 200 and isinstance(payload, dict) and "error" not in payload:
            return payload
        raise self._error(response.status_code, payload, _as_text(body), response.headers.get("location"))

    def _result(self, response: requests.Response, body: bytes, sent: int) -> SendResult:
        self._note_version_warning(response)
        if (usage := usage_percent(response.headers)) is not None:
            self.usage = usage
        payload = _json(body)
        if response.status_code == 200 and isinstance(payload, dict) and "error" not in payload:
            received = payload.get("events_received")
            trace = _text_or_none(payload.get("fbtrace_id"), self._secrets)
            if received != sent or isinstance(received, bool):
                msg = self._scrub(f"Meta acknowledged {str(received)[:40]} of {sent} events")
                raise MetaRetryableError(msg, status=200, fbtrace_id=trace)
            listed = payload.get("messages")
            messages = tuple(self._scrub(str(m)[:500]) for m in listed) if isinstance(listed, list) else ()
            return SendResult(received, trace, messages)
        error = self._error(response.status_code, payload, _as_text(body), response.headers.get("location"))
        if isinstance(error, MetaRetryableError):
            error.retry_after = regain_seconds(response.headers)
        raise error

    def _note_version_warning(self, response: requests.Response) -> None:
        """Meta names the API version it will retire in `X-Ad-Api-Version-Warning`: say so, once."""
        warning = response.headers.get(VERSION_WARNING_HEADER)
        if warning and not self._version_warned:
            self._version_warned = True
            log.warning(
                "Meta warns about this pipeline's api_version: %s",
                self._scrub(warning[:500]),
                extra={"event": "api_version_warning"},
            )

    def _error(self, status: int, payload: Any, text: str, location: str | None = None) -> MetaError:
        """Map an HTTP status and Graph error body to the exception that says what to do."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if 300 <= status < 400:
            location = self._scrub(location or "no Location header")
            msg = (
                f"HTTP {status} from the Graph API redirects to {location}: capi-sync never follows a"
                " redirect with events (they would go to another host); check graph_url"
            )
            return MetaFatalError(msg, status=status)
        if status == 413:
            return MetaTooLargeError(self._scrub(f"HTTP 413 from the Graph API: {text[:300]}"), status=413)
        if not isinstance(error, dict):
            kind = MetaRetryableError if status >= 500 or status == 429 else MetaFatalError
            return kind(self._scrub(f"HTTP {status} from the Graph API: {text[:300]}"), status=status)
        code = _integer(error.get("code"))
        details: _ErrorDetails = {
            "status": status,
            "code": code,
            "subcode": _integer(error.get("error_subcode")),
            "user_message": _text_or_none(error.get("error_user_msg"), self._secrets),
            "fbtrace_id": _text_or_none(error.get("fbtrace_id"), self._secrets),
        }
        message = _text_or_none(error.get("message"), self._secrets) or "unknown error"
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
        return scrub(text, self._secrets)

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"MetaClient(url={self.url!r}, access_token='********')"


MAX_MESSAGE_CHARS = 1000  # of a text Meta (or whatever answers in its place) sends back: stored per row


def _integer(value: Any) -> int | None:
    """An error code as an int, whatever type the answer used; None when it is no number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _text_or_none(value: Any, secrets: tuple[str, ...]) -> str | None:
    """A text from the answer, scrubbed and cut to `MAX_MESSAGE_CHARS`, or None when empty."""
    if value is None or value == "":
        return None
    return scrub(str(value)[:MAX_MESSAGE_CHARS], secrets) or None


MAX_ANSWER_BYTES = 1024 * 1024  # a Graph API answer is a few hundred bytes; more is not Meta talking


def _read_capped(response: requests.Response) -> bytes:
    """The answer's body, refusing to hold more than `MAX_ANSWER_BYTES` of it in memory."""
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                msg = f"the Graph API's answer is larger than {MAX_ANSWER_BYTES:,} bytes: not Meta's"
                raise MetaRetryableError(msg, status=response.status_code)
            chunks.append(chunk)
    finally:
        response.close()
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {}


def _as_text(body: bytes) -> str:
    return body[:2000].decode("utf-8", errors="replace")


def usage_percent(headers: Any) -> float | None:
    """The highest share (%) of any rate-limit budget in Meta's usage headers, or None without
    them. Malformed headers are ignored: they must never fail a delivery."""
    found: list[float] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _USAGE_FIELDS and isinstance(value, int | float) and not isinstance(value, bool):
                    found.append(float(value))
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    for name in USAGE_HEADERS:
        text = headers.get(name)
        if text:
            try:
                collect(orjson.loads(text))
            except orjson.JSONDecodeError:
                continue
    return max(found) if found else None


def regain_seconds(headers: Any) -> float | None:
    """How long Meta says a throttled budget stays closed: the largest
    `estimated_time_to_regain_access` (minutes, per business use case) or `reset_time_duration`
    (seconds, per ad account) in its usage headers; None when none is above 0 or they are unreadable."""
    found: list[float] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    collect(value)
                elif key == "estimated_time_to_regain_access":
                    found.append(float(value) * 60)
                elif key == "reset_time_duration":
                    found.append(float(value))
        elif isinstance(node, list):
            for item in node:
                collect(item)

    for name in USAGE_HEADERS:
        if text := headers.get(name):
            try:
                collect(orjson.loads(text))
            except orjson.JSONDecodeError:
                continue
    longest = max(found, default=0.0)
    return longest if 0 < longest < 86_400 * 7 else None
