"""The client against the local fake Graph API over real HTTP: errors classified, token never leaked."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from capi_sync.connectors.meta import MetaClient, PreparedRequest
from capi_sync.connectors.retry import RetryPolicy, call_with_retry
from capi_sync.delivery import Sender
from capi_sync.errors import (
    MetaAuthError,
    MetaError,
    MetaPermissionError,
    MetaRequestError,
    MetaRetryableError,
)
from tests.conftest import TOKEN
from tests.fake_graph import FakeGraph, error_reply

EVENT: dict[str, Any] = {
    "event_name": "Lead", "event_time": 1_790_000_000, "action_source": "system_generated",
    "user_data": {"external_id": "a" * 64},
}  # fmt: skip


def client(graph: FakeGraph, **kwargs: Any) -> MetaClient:
    return MetaClient("123", TOKEN, graph_url=graph.url, **kwargs)


def test_success_is_parsed(graph: FakeGraph) -> None:
    result = client(graph, test_event_code="TEST123").send([EVENT, EVENT])
    assert (result.events_received, result.fbtrace_id) == (2, "trace1")
    request = graph.requests[0]
    assert request.path == "/v26.0/123/events"
    assert request.body["test_event_code"] == "TEST123"


def test_appsecret_proof_is_the_hmac_of_the_token(graph: FakeGraph) -> None:
    import hashlib
    import hmac

    client(graph, app_secret="s3cret").send([EVENT])
    expected = hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert graph.requests[0].body["appsecret_proof"] == expected


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 190, MetaAuthError),
        (400, 10, MetaPermissionError),
        (403, 200, MetaPermissionError),
        (400, 100, MetaRequestError),
        (400, 4, MetaRetryableError),
        (400, 17, MetaRetryableError),
        (400, 613, MetaRetryableError),
        (400, 80004, MetaRetryableError),
        (500, 1, MetaRetryableError),
        (503, 2, MetaRetryableError),
        (400, 368, MetaRetryableError),
    ],
)
def test_graph_errors_are_classified_by_code(
    graph: FakeGraph, status: int, code: int, kind: type[MetaError]
) -> None:
    graph.script = lambda _n, _body: error_reply(status, code, f"failed for {TOKEN}")
    with pytest.raises(kind) as caught:
        client(graph).send([EVENT])
    assert caught.value.code == code
    assert caught.value.fbtrace_id == "AbCfake"
    assert TOKEN not in str(caught.value), "the token must be scrubbed from Meta's echo"


def test_is_transient_flag_makes_any_code_retryable(graph: FakeGraph) -> None:
    graph.script = lambda _n, _body: error_reply(400, 999, transient=True)
    with pytest.raises(MetaRetryableError):
        client(graph).send([EVENT])


def test_wrong_token_tells_the_user_what_to_do(graph: FakeGraph) -> None:
    with pytest.raises(MetaAuthError, match="generate a new one"):
        MetaClient("123", "wrong", graph_url=graph.url).send([EVENT])


def test_timeouts_and_refused_connections_are_retryable(graph: FakeGraph) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MetaRetryableError) as caught:
        MetaClient("123", TOKEN, graph_url=f"http://127.0.0.1:{port}").send([EVENT])
    assert TOKEN not in str(caught.value)

    import time

    graph.script = lambda _n, _body: time.sleep(0.5)  # type: ignore[func-returns-value]
    with pytest.raises(MetaRetryableError, match="timed out"):
        client(graph, timeout=0.1).send([EVENT])


def test_batches_over_1000_are_refused_before_sending(graph: FakeGraph) -> None:
    with pytest.raises(ValueError, match="1 to 1000"):
        client(graph).send([EVENT] * 1001)
    assert graph.requests == []


def test_repr_hides_the_token(graph: FakeGraph) -> None:
    assert TOKEN not in repr(client(graph))


def test_retry_backs_off_then_succeeds(graph: FakeGraph) -> None:
    graph.script = lambda n, _body: error_reply(400, 17) if n <= 2 else None
    pauses: list[float] = []
    result = call_with_retry(
        lambda: client(graph).send([EVENT]), RetryPolicy(base_delay=1), sleep=pauses.append
    )
    assert result.events_received == 1
    assert len(pauses) == 2
    assert 0 <= pauses[1] <= 2


def test_a_retried_batch_is_serialized_once(graph: FakeGraph) -> None:
    class Counting(MetaClient):
        prepared = 0

        def prepare(self, events: Any) -> PreparedRequest:
            Counting.prepared += 1
            return super().prepare(events)

    graph.script = lambda n, _body: error_reply(503, 2, transient=True) if n <= 2 else None
    sender = Sender(Counting("123", TOKEN, graph_url=graph.url), RetryPolicy(base_delay=0.001), None)
    sent = sender.send([EVENT, EVENT])
    assert (sent.retries, sent.transient, graph.arrived) == (2, None, 3)
    assert Counting.prepared == 1
    assert graph.requests[0].body == graph.requests[2].body


def test_retry_gives_up_after_its_time_budget() -> None:
    now = [0.0]

    def failing() -> None:
        raise MetaRetryableError("throttled", code=4)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(MetaRetryableError):
        call_with_retry(
            failing,
            RetryPolicy(base_delay=1, max_delay=4, max_elapsed=30),
            sleep=sleep,
            clock=lambda: now[0],
        )
    assert now[0] <= 30


def test_a_throttle_meta_times_is_waited_out_not_hammered(graph: FakeGraph) -> None:
    """Meta's usage header says the budget reopens in 2 minutes: the retry waits at least that
    long, where the bare backoff would have asked again within a second or two."""
    import orjson

    from capi_sync.connectors.meta import regain_seconds
    from tests.fake_graph import Raw

    usage = '{"1234": [{"type": "ads_management", "call_count": 100, "estimated_time_to_regain_access": 2}]}'
    throttled = orjson.dumps({"error": {"message": "User request limit reached", "code": 17}})

    def script(number: int, _body: dict[str, Any]) -> Raw | None:
        if number == 1:
            return Raw(
                400, throttled, {"X-Business-Use-Case-Usage": usage, "Content-Type": "application/json"}
            )
        return None

    graph.script = script
    pauses: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(base_delay=1, max_delay=2, max_elapsed=300)
    result = call_with_retry(lambda: client(graph).send([EVENT]), policy, sleep=sleep, clock=lambda: now[0])
    assert result.events_received == 1
    assert pauses == [120.0]
    # A throttle longer than the budget left ends the retrying at once: one request, no pause.
    graph.script, pauses[:] = (lambda _n, _b: script(1, _b)), []
    with pytest.raises(MetaRetryableError) as caught:
        call_with_retry(
            lambda: client(graph).send([EVENT]),
            RetryPolicy(base_delay=1, max_delay=2, max_elapsed=60),
            sleep=sleep,
            clock=lambda: now[0],
        )
    assert caught.value.retry_after == 120.0
    assert pauses == []
    assert regain_seconds({"X-Ad-Account-Usage": '{"acc_id_util_pct": 100, "reset_time_duration": 45}'}) == 45
    assert regain_seconds({"X-Ad-Account-Usage": '{"reset_time_duration": 0}'}) is None
    assert regain_seconds({"X-App-Usage": "{broken"}) is None


def test_fatal_errors_are_not_retried() -> None:
    calls = []

    def fatal() -> None:
        calls.append(1)
        raise MetaAuthError("expired", code=190)

    with pytest.raises(MetaAuthError):
        call_with_retry(fatal, RetryPolicy(), sleep=lambda _s: None)
    assert len(calls) == 1


def test_metas_version_warning_is_logged_once(graph: FakeGraph) -> None:
    import logging

    import orjson

    from tests.fake_graph import Raw

    warning = "API version v26.0 will be deprecated on 2027-09-12. Please upgrade to v27.0"
    graph.script = lambda _n, body: Raw(
        200,
        orjson.dumps({"events_received": len(body["data"]), "fbtrace_id": "t"}),
        {"X-Ad-Api-Version-Warning": warning, "Content-Type": "application/json"},
    )
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger, keep = logging.getLogger("capi_sync.meta"), Keep()
    logger.addHandler(keep)
    try:
        meta = client(graph)
        meta.send([EVENT])
        meta.send([EVENT])
    finally:
        logger.removeHandler(keep)
    (record,) = records
    assert warning in record.getMessage()
    assert record.event == "api_version_warning"  # type: ignore[attr-defined]


def test_usage_headers_give_the_tightest_budget() -> None:
    from capi_sync.connectors.meta import usage_percent

    headers = {
        "X-App-Usage": '{"call_count": 12, "total_cputime": 30, "total_time": 41}',
        "X-Ad-Account-Usage": '{"acc_id_util_pct": 9.5, "reset_time_duration": 0}',
        "X-Business-Use-Case-Usage": (
            '{"1234": [{"type": "ads_management", "call_count": 88, "total_cputime": 2,'
            ' "total_time": 3, "estimated_time_to_regain_access": 0}]}'
        ),
    }
    assert usage_percent(headers) == 88
    assert usage_percent({"X-App-Usage": "not json"}) is None
    assert usage_percent({}) is None


def test_requests_in_flight_shrink_as_usage_nears_the_limit(
    graph: FakeGraph, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta reports 95% of the app's budget from the first answer on: after the requests already
    on the wire, the run sends one at a time; at 10% it would keep four in flight."""
    import threading
    import time

    import orjson

    from capi_sync.runner import allowed_in_flight
    from tests.conftest import cli, make_orders, write_pipelines
    from tests.fake_graph import Raw

    assert [allowed_in_flight(u, 4) for u in (None, 10, 80, 95, 120)] == [4, 4, 2, 1, 1]
    active, overlaps, answered = [0], [], [0]
    lock = threading.Lock()

    def busy(_number: int, body: dict[str, Any]) -> Raw:
        with lock:
            active[0] += 1
            if answered[0] >= 4:  # the first wave was sent before Meta's first answer
                overlaps.append(active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
            answered[0] += 1
        usage = orjson.dumps({"call_count": 95, "total_cputime": 20, "total_time": 20}).decode()
        reply = orjson.dumps({"events_received": len(body["data"]), "fbtrace_id": "t"})
        return Raw(200, reply, {"X-App-Usage": usage, "Content-Type": "application/json"})

    graph.script = busy
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 1200)
    path = write_pipelines(tmp_path, graph.url)
    path.write_text(
        path.read_text().replace("default_phone_region: US", "default_phone_region: US, batch_size: 100")
    )
    assert cli("run", "purchases") == 0
    assert graph.arrived == 12  # 1,200 rows in batches of 100
    assert overlaps
    assert max(overlaps) == 1
