"""A hostile Graph API: poisoned neighbours, plain-text 413s, trickled answers, redirects and a
token echoed inside Meta's message. None of them may lose a row, strand a batch or leak the token."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from capi_sync.connectors.meta import MetaClient
from capi_sync.errors import MetaFatalError, MetaRetryableError
from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph, Raw


def _order(event: dict) -> int:
    return int(event["event_source_url"].rsplit("/", 1)[1])


def _setup(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, rows: int, extra: str = ""
) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", rows)
    path = write_pipelines(tmp_path, graph.url)
    path.write_text(path.read_text().replace("retry_base_seconds: 0.01", f"retry_base_seconds: 0.01{extra}"))
    return path


def test_adjacent_bad_events_reject_those_rows_and_deliver_the_rest(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = {500, 501, 502, 503}  # four neighbours: bisection meets a sub-batch of nothing but them
    graph.poisoned = lambda event: _order(event) in bad
    path = _setup(tmp_path, graph, monkeypatch, 1200)
    assert cli("run", "purchases", "-f", str(path), "--workers", "1") == 0
    delivered = {_order(event) for event in graph.accepted_events}
    assert delivered == set(range(1, 1201)) - bad
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        rejected = store.list_rejected("purchases")
        assert sorted(row["row_key"] for row in rejected) == sorted(str(i) for i in bad)
        assert {row["reasons"][0]["rule"] for row in rejected} == {"meta_100_2804019"}
        assert store.list_runs("purchases")[0].status == "succeeded"
    requests_before = len(graph.requests)
    assert cli("run", "purchases", "-f", str(path), "--workers", "1") == 0
    assert len(graph.requests) == requests_before  # nothing left to send: the next run is quiet


def test_a_whole_batch_refused_event_by_event_still_fails_the_run(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph.poisoned = lambda _event: True  # the request itself is wrong, whatever it carries
    path = _setup(tmp_path, graph, monkeypatch, 8)
    assert cli("run", "purchases", "-f", str(path), "--workers", "1") == 1
    assert graph.accepted_events == []


def test_a_413_splits_the_batch_and_an_event_too_large_alone_is_rejected(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph.max_body = 300_000  # a proxy in front of Meta refuses bodies over this, in plain text
    path = _setup(tmp_path, graph, monkeypatch, 400)
    import duckdb

    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:  # 100 KB tiers: 400 rows make 40 MB
        con.execute("update orders set tier = repeat('x', 100000) where order_id % 2 = 0")
        con.execute("update orders set tier = repeat('y', 400000) where order_id = 7")
    assert cli("run", "purchases", "-f", str(path), "--workers", "1") == 0
    delivered = {_order(event) for event in graph.accepted_events}
    assert delivered == set(range(1, 401)) - {7}
    assert all(r.status in (200, 413) for r in graph.requests)
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        (row,) = store.list_rejected("purchases")
    assert row["row_key"] == "7"
    assert row["reasons"][0]["rule"] == "event_too_large"


def test_requests_stay_under_max_request_bytes(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _setup(tmp_path, graph, monkeypatch, 300, "\n    max_request_bytes: 64KB")
    assert cli("run", "purchases", "-f", str(path), "--workers", "1") == 0
    assert len(graph.accepted_events) == 300
    assert len(graph.requests) > 1
    sizes = [len(__import__("json").dumps(r.body)) for r in graph.requests]
    assert max(sizes) <= 64 * 1024


@pytest.mark.parametrize("status", [403, 502])
def test_plain_text_errors_are_named_not_parsed(graph: FakeGraph, status: int) -> None:
    graph.script = lambda _n, _b: Raw(
        status, b"<html>Forbidden by proxy</html>", {"content-type": "text/html"}
    )
    client = MetaClient(graph.pixel_id, TOKEN, graph_url=graph.url, timeout=5)
    expected = MetaRetryableError if status >= 500 else MetaFatalError
    with pytest.raises(expected, match=f"HTTP {status}.*Forbidden by proxy"):
        client.send([{"event_name": "x"}])


def test_timeout_bounds_the_whole_request_against_a_trickling_server(graph: FakeGraph) -> None:
    answer = b'{"events_received": 1, "messages": [], "fbtrace_id": "slow"}'
    graph.script = lambda _n, _b: Raw(200, answer, {"content-type": "application/json"}, trickle=0.05)
    client = MetaClient(graph.pixel_id, TOKEN, graph_url=graph.url, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(MetaRetryableError, match="timed out"):
        client.send([{"event_name": "x"}])
    assert time.monotonic() - started < 3  # each byte came within the read timeout: 9 s in all


def test_the_deadline_holds_through_an_http_proxy(graph: FakeGraph) -> None:
    import requests

    answer = b'{"events_received": 1, "messages": [], "fbtrace_id": "slow"}'
    graph.script = lambda _n, _b: Raw(200, answer, {"content-type": "application/json"}, trickle=0.05)
    session = requests.Session()
    session.trust_env = False  # this proxy and no other, whatever NO_PROXY says
    session.proxies = {"http": graph.url}
    client = MetaClient(graph.pixel_id, TOKEN, graph_url="http://graph.invalid", timeout=1.0, session=session)
    started = time.monotonic()
    with pytest.raises(MetaRetryableError, match="timed out"):
        client.send([{"event_name": "x"}])
    assert time.monotonic() - started < 3
    assert graph.requests, "the request went through the proxy"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_never_followed_with_events(graph: FakeGraph, status: int) -> None:
    with FakeGraph(token=TOKEN) as elsewhere:
        target = f"{elsewhere.url}/v26.0/{elsewhere.pixel_id}/events"
        graph.script = lambda _n, _b: Raw(status, b"", {"location": target})
        client = MetaClient(graph.pixel_id, TOKEN, graph_url=graph.url, timeout=5)
        with pytest.raises(MetaFatalError, match=f"HTTP {status}.*{elsewhere.url}"):
            client.send([{"event_name": "x"}])
        assert elsewhere.requests == []


def test_a_redirect_fails_the_run_and_keeps_the_cursor(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeGraph(token=TOKEN) as elsewhere:
        graph.script = lambda _n, _b: Raw(307, b"", {"location": f"{elsewhere.url}/v26.0/123456789/events"})
        path = _setup(tmp_path, graph, monkeypatch, 10)
        assert cli("run", "purchases", "-f", str(path)) == 1
        assert elsewhere.requests == []
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        assert store.load_cursor("purchases").value is None


def test_a_token_echoed_inside_a_word_is_scrubbed_everywhere(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def echo(_n: int, body: dict) -> object:
        if any(_order(event) == 3 for event in body["data"]):
            error = {"message": f"bad x{TOKEN}x", "code": 100, "error_user_msg": f"value x{TOKEN}x refused"}
            return 400, {"error": error}
        return None

    graph.script = echo
    path = _setup(tmp_path, graph, monkeypatch, 10)
    assert cli("run", "purchases", "-f", str(path), "--workers", "1") == 0
    assert cli("rejected", "purchases", "-f", str(path)) == 0
    assert cli("rejected", "purchases", "-f", str(path), "--json") == 0
    assert cli("runs", "-f", str(path), "--json") == 0
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    assert "[redacted]" in printed.out
    database = (tmp_path / ".capi-sync" / "state.db").read_bytes()
    assert TOKEN.encode() not in database


def test_an_endless_answer_is_cut_off_not_held_in_memory(graph: FakeGraph) -> None:
    graph.script = lambda _n, _b: Raw(200, b"[" * (8 * 1024 * 1024), {"content-type": "application/json"})
    client = MetaClient(graph.pixel_id, TOKEN, graph_url=graph.url, timeout=10)
    with pytest.raises(MetaRetryableError, match="larger than"):
        client.send([{"event_name": "x"}])


@pytest.mark.parametrize(
    "answer",
    [
        b'{"events_received": 1, "messages": 5, "fbtrace_id": {"x": 1}}',
        b'{"error": {"code": "190", "message": ["x"], "fbtrace_id": 7, "error_user_msg": {"a": 1}}}',
        b'{"error": {"code": {"nested": true}, "error_subcode": "abc"}}',
        b'{"events_received": "1"}',
        b"\\xff\\xfe not json",
    ],
)
def test_malformed_answers_become_errors_never_crashes(graph: FakeGraph, answer: bytes) -> None:
    from capi_sync.errors import MetaError

    graph.script = lambda _n, _b: Raw(
        400 if b"error" in answer else 200, answer, {"content-type": "application/json"}
    )
    client = MetaClient(graph.pixel_id, TOKEN, graph_url=graph.url, timeout=5)
    if answer.startswith(b'{"events_received": 1,'):
        assert client.send([{"event_name": "x"}]).events_received == 1
        return
    with pytest.raises(MetaError) as caught:
        client.send([{"event_name": "x"}])
    assert isinstance(caught.value.fbtrace_id, str | None)
    assert isinstance(caught.value.code, int | None)
