"""A local stand-in for the Graph API's `/{version}/{pixel}/events` endpoint, over real HTTP.

It checks requests the way Meta does (batch size, required fields, types) so that a bug in
capi-sync shows up as a rejected request, and it can be scripted to fail.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

PATH = re.compile(r"^/(v\d+\.\d+)/(\d+)/events$")
PIXEL = re.compile(r"^/(v\d+\.\d+)/(\d+)$")
QUALITY = re.compile(r"^/(v\d+\.\d+)/dataset_quality$")
DROP = (0, {})  # a script returning this closes the connection without answering


@dataclass(frozen=True)
class Raw:
    """A reply as a hostile server sends it: any status, any body, any headers, maybe trickled."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0  # seconds between bytes of the whole answer, status line included


Reply = tuple[int, dict[str, Any]] | Raw


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class FakeGraph:
    """Start with `with FakeGraph() as graph:`; point `graph_url` at `graph.url`."""

    token: str = "test-token"
    pixel_id: str = "123456789"  # the only pixel GET answers for
    requests: list[Received] = field(default_factory=list)
    # Called before the built-in checks; return a reply to override, or None to go on.
    script: Callable[[int, dict[str, Any]], Reply | None] | None = None
    # Meta refuses a whole request (code 100) when it holds an event this says is poisoned.
    poisoned: Callable[[dict[str, Any]], bool] | None = None
    # Bodies larger than this get a plain-text 413, as a proxy in front of the Graph API answers.
    max_body: int | None = None
    # The Dataset Quality API's answers by `agent_name` (None: asked without one); a key missing
    # answers `{"web": []}`, as Meta does for a dataset without scores. A reply here replaces it.
    quality: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    quality_reply: Reply | None = None
    quality_requests: list[dict[str, str]] = field(default_factory=list)  # each one's query

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def arrived(self) -> int:
        """Requests received so far, including those not answered yet."""
        return self._count

    @property
    def accepted_events(self) -> list[dict[str, Any]]:
        return [event for r in self.requests if r.status == 200 for event in r.body["data"]]

    def __enter__(self) -> FakeGraph:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(self, number: int, path: str, headers: dict[str, str], body: dict[str, Any]) -> Reply:
        if not PATH.match(path):
            return 404, _error(803, "Unknown path")
        if headers.get("authorization") != f"Bearer {self.token}" and body.get("access_token") != self.token:
            return 400, _error(190, "Invalid OAuth access token - Cannot parse access token")
        if self.script is not None and (scripted := self.script(number, body)) is not None:
            return scripted
        data = body.get("data")
        if self.poisoned is not None and isinstance(data, list):
            for index, event in enumerate(data):
                if isinstance(event, dict) and self.poisoned(event):
                    message = f"event {index}: invalid custom_data"
                    return 400, _error(100, "Invalid parameter", message, 2804019)
        if not isinstance(data, list) or not 1 <= len(data) <= 1000:
            return 400, _error(100, "Invalid parameter", "data must hold 1 to 1000 events")
        for index, event in enumerate(data):
            if problem := _check_event(event):
                return 400, _error(100, "Invalid parameter", f"event {index}: {problem}", 2804050)
        return 200, {"events_received": len(data), "messages": [], "fbtrace_id": f"trace{number}"}

    def quality_answer(self, headers: dict[str, str], query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """`GET /{version}/dataset_quality` as Meta's page documents it: `dataset_id` and
        `fields` (with `web`) required, `agent_name` optional, the answer `{"web": [...]}`."""
        with self._lock:
            self.quality_requests.append(query)
        if headers.get("authorization") != f"Bearer {self.token}" and query.get("access_token") != self.token:
            return 400, _error(190, "Invalid OAuth access token - Cannot parse access token")
        if isinstance(self.quality_reply, tuple):
            return self.quality_reply
        if "web" not in query.get("fields", ""):
            return 400, _error(100, "Invalid parameter", "fields must name web")
        if query.get("dataset_id") != self.pixel_id:
            return 400, _error(100, "Unsupported get request. Object does not exist", None, 33)
        return 200, self.quality.get(query.get("agent_name"), {"web": []})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        graph = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.startswith("http"):  # asked as a proxy: absolute-form request line
                    self.path = "/" + self.path.split("/", 3)[3]
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                with graph._lock:
                    graph._count += 1
                    number = graph._count
                if graph.max_body is not None and length > graph.max_body:
                    reply: Reply = Raw(413, b"413 Request Entity Too Large", {"content-type": "text/plain"})
                    body: dict[str, Any] = {"data": [], "size": length}
                else:
                    body = json.loads(raw or b"{}")
                    reply = graph.reply(number, self.path, headers, body)
                if isinstance(reply, Raw):
                    with graph._lock:
                        graph.requests.append(Received(self.path, headers, body, reply.status))
                    self._raw(reply)
                    return
                status, payload = reply
                with graph._lock:
                    graph.requests.append(Received(self.path, headers, body, status))
                if (status, payload) == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def _raw(self, reply: Raw) -> None:
                lines = [f"HTTP/1.1 {reply.status} Hostile".encode()]
                answer = {"content-length": str(len(reply.body)), **reply.headers}
                lines += [f"{key}: {value}".encode() for key, value in answer.items()]
                data = b"\r\n".join(lines) + b"\r\n\r\n" + reply.body
                self.close_connection = True
                try:
                    if not reply.trickle:
                        self.wfile.write(data)
                        return
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(reply.trickle)
                except OSError:
                    pass  # the client gave up on us

            def do_GET(self) -> None:  # the pixel itself (`capi-sync check`), or dataset quality
                headers = {key.lower(): value for key, value in self.headers.items()}
                path, _, query = self.path.partition("?")
                match = PIXEL.match(path)
                if QUALITY.match(path):
                    status, payload = graph.quality_answer(headers, dict(parse_qsl(query)))
                elif headers.get("authorization") != f"Bearer {graph.token}":
                    status, payload = (
                        400,
                        _error(190, "Invalid OAuth access token - Cannot parse access token"),
                    )
                elif match is None or match[2] != graph.pixel_id:
                    status, payload = (
                        400,
                        _error(100, "Unsupported get request. Object does not exist", None, 33),
                    )
                else:
                    status, payload = 200, {"id": graph.pixel_id, "name": "Test pixel"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _error(
    code: int,
    message: str,
    user_message: str | None = None,
    subcode: int | None = None,
    *,
    transient: bool = False,
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "is_transient": transient,
        "fbtrace_id": "AbCfake",
    }
    if user_message:
        error["error_user_msg"] = user_message
    if subcode:
        error["error_subcode"] = subcode
    return {"error": error}


def error_reply(status: int, code: int, message: str = "error", *, transient: bool = False) -> Reply:
    return status, _error(code, message, transient=transient)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HASHED = {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"}  # external_id may be raw


def _check_event(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "not an object"
    if not isinstance(event.get("event_name"), str) or not event["event_name"]:
        return "event_name missing"
    if not isinstance(event.get("event_time"), int):
        return "event_time must be an integer"
    if event.get("action_source") not in {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }:
        return "invalid action_source"
    user = event.get("user_data")
    if not isinstance(user, dict) or not user:
        return "user_data missing"
    for key in _HASHED & user.keys():
        values = user[key] if isinstance(user[key], list) else [user[key]]
        if not all(isinstance(v, str) and _HEX64.match(v) for v in values):
            return f"user_data.{key} must be SHA-256 hex"
    if event["action_source"] == "business_messaging":  # Conversions API for Business Messaging
        channel = event.get("messaging_channel")
        if channel not in _CHANNEL_IDS:
            return "messaging_channel must be messenger, instagram or whatsapp"
        if missing := [key for key in _CHANNEL_IDS[channel] if not user.get(key)]:
            return f"user_data.{missing[0]} is required for {channel}"
    custom = event.get("custom_data") or {}
    if custom.get("event_source") == "crm":  # Conversion Leads payload specification
        if not re.fullmatch(r"\d{15,16}", str(user.get("lead_id", ""))):
            return "user_data.lead_id must be a 15 or 16-digit lead id"
        if event["action_source"] != "system_generated" or not custom.get("lead_event_source"):
            return "a CRM event needs action_source system_generated and lead_event_source"
    original = event.get("original_event_data")
    if original is not None and not (
        isinstance(original, dict)
        and isinstance(original.get("event_name"), str)
        and isinstance(original.get("event_time"), int)
    ):
        return "original_event_data needs event_name and an integer event_time"
    return None


_CHANNEL_IDS = {
    "messenger": ("page_id", "page_scoped_user_id"),
    "instagram": ("ig_account_id", "ig_sid"),
    "whatsapp": ("whatsapp_business_account_id", "ctwa_clid"),
}
