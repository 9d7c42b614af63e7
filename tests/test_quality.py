"""`capi-sync quality`: Meta's Event Match Quality beside what capi-sync sent, end to end.

The fake answers `GET /{version}/dataset_quality` in the shape Meta's page documents, examples
included: https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api
(`{"web": [{"event_name", "event_match_quality": {"composite_score", "match_key_feedback":
[{"identifier", "coverage": {"percentage"}}], "diagnostics": [...]}, "event_coverage": {...},
"dedupe_key_feedback": [...], "data_freshness": {...}}]}`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from capi_sync import quality
from capi_sync.report import OTHER_EVENT_NAMES, MatchQuality
from tests.conftest import PIPELINES, TOKEN, make_orders, write_pipelines
from tests.fake_graph import FakeGraph, error_reply
from tests.test_alerts import Receiver
from tests.test_operations import capi_sync, json_lines

# Meta's documented examples, put together for two event names.
PURCHASE = {
    "event_name": "Purchase",
    "event_match_quality": {
        "composite_score": 7.2,
        "match_key_feedback": [
            {"identifier": "email", "coverage": {"percentage": 100}},
            {"identifier": "ip_address", "coverage": {"percentage": 99.9}},
            {"identifier": "phone", "coverage": {"percentage": 88}},
        ],
        "diagnostics": [
            {
                "name": "Server sending mismatched IP addresses",
                "description": "Your server is sending client IP addresses that do not match those from Meta Pixel.",
                "solution": "In your server payload, send the client_ip_address retrieved from customer interactions.",
                "percentage": 61.5,
                "affected_event_count": 19567,
                "total_event_count": 31830,
            }
        ],
    },
    "event_coverage": {"percentage": 34.1, "goal_percentage": 75},
    "dedupe_key_feedback": [{"dedupe_key": "event_id", "server_events_with_dedupe_key": {"percentage": 100}}],
    "data_freshness": {"upload_frequency": "hourly"},
}
LEAD = {
    "event_name": "Lead",
    "event_match_quality": {
        "composite_score": 6.2,
        "match_key_feedback": [{"identifier": "user_agent", "coverage": {"percentage": 100}}],
    },
}


@pytest.fixture
def graph() -> Any:
    with FakeGraph(token=TOKEN) as fake:
        yield fake


def ran_purchases(folder: Path, graph: FakeGraph, rows: int = 30) -> None:
    make_orders(folder / "shop.duckdb", rows)
    write_pipelines(folder, graph.url)
    done = capi_sync(folder, "run", "purchases")
    assert done.returncode == 0, done.stderr


def test_quality_sets_metas_score_beside_what_capi_sync_sent(tmp_path: Path, graph: FakeGraph) -> None:
    ran_purchases(tmp_path, graph)
    graph.quality["capisync"] = {"web": [PURCHASE, LEAD]}
    done = capi_sync(tmp_path, "quality", "purchases", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["event_name"]: row for row in json_lines(done.stdout)}
    assert set(rows) == {"Purchase", "Lead"}
    purchase = rows["Purchase"]
    assert purchase["meta"]["composite_score"] == 7.2
    assert purchase["meta"]["event_coverage"] == 34.1
    assert purchase["meta"]["dedupe_keys"] == {"event_id": 100}
    assert purchase["meta"]["diagnostics"][0]["affected_events"] == 19567
    assert purchase["events_sent"] == 30
    keys = purchase["keys"]
    assert keys["em"] == {"meta_coverage": 100, "sent_share": 100}  # "email" is capi-sync's em
    assert keys["ph"] == {"meta_coverage": 88, "sent_share": 100}
    assert keys["client_ip_address"] == {"meta_coverage": 99.9, "sent_share": 100}
    assert keys["client_user_agent"] == {"meta_coverage": None, "sent_share": 100}  # only our side
    assert rows["Lead"]["events_sent"] == 0
    assert rows["Lead"]["keys"]["client_user_agent"] == {"meta_coverage": 100, "sent_share": None}
    # The request as Meta documents it; the token in the header, never in the URL.
    (asked,) = graph.quality_requests
    assert asked["dataset_id"] == "123456789"
    assert asked["agent_name"] == "capisync"
    assert asked["fields"].startswith("web{event_name,event_match_quality{composite_score,")
    assert "access_token" not in asked
    assert TOKEN not in done.stdout + done.stderr


def test_quality_as_a_table_with_metas_diagnostics(tmp_path: Path, graph: FakeGraph) -> None:
    ran_purchases(tmp_path, graph, rows=5)
    graph.quality["capisync"] = {"web": [PURCHASE]}
    done = capi_sync(tmp_path, "quality", "purchases")
    assert done.returncode == 0, done.stderr
    assert "7.2/10" in done.stdout
    assert "34.1%" in done.stdout
    assert "Server sending mismatched IP addresses (61.5% of events)" in done.stdout


def test_all_agents_asks_meta_without_an_agent_name(tmp_path: Path, graph: FakeGraph) -> None:
    ran_purchases(tmp_path, graph, rows=3)
    graph.quality[None] = {"web": [LEAD]}
    done = capi_sync(tmp_path, "quality", "purchases", "--all-agents", "--json")
    assert done.returncode == 0, done.stderr
    assert "agent_name" not in graph.quality_requests[0]
    names = [row["event_name"] for row in json_lines(done.stdout)]
    assert names == ["Lead", "Purchase"]  # Meta's, then those only capi-sync sent


def test_since_keeps_to_the_runs_of_the_period(tmp_path: Path, graph: FakeGraph) -> None:
    ran_purchases(tmp_path, graph, rows=4)
    done = capi_sync(tmp_path, "quality", "purchases", "--since", "1m", "--json")
    assert [row["events_sent"] for row in json_lines(done.stdout)] == [4]
    done = capi_sync(tmp_path, "quality", "purchases", "--since", "soon")
    assert done.returncode == 2
    assert "--since" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_refusal_for_permissions_says_which_permissions(tmp_path: Path, graph: FakeGraph) -> None:
    ran_purchases(tmp_path, graph, rows=2)
    graph.quality_reply = error_reply(403, 200, "Requires ads_read permission")  # type: ignore[assignment]
    done = capi_sync(tmp_path, "quality", "purchases")
    assert done.returncode == 1
    assert "Use events dataset" in done.stderr
    assert "ads_read" in done.stderr
    assert TOKEN not in done.stderr
    assert "Traceback" not in done.stderr


def test_an_expired_token_says_so(tmp_path: Path, graph: FakeGraph) -> None:
    ran_purchases(tmp_path, graph, rows=2)
    graph.token = "another-token"
    done = capi_sync(tmp_path, "quality", "purchases")
    assert done.returncode == 1
    assert "190" in done.stderr
    assert TOKEN not in done.stderr


def test_missing_and_odd_fields_read_as_unknown_and_never_crash() -> None:
    payload = {
        "web": [
            "not an object",
            {"event_match_quality": {"composite_score": 9}},  # no event_name: skipped
            {"event_name": "ViewContent"},
            {
                "event_name": "Purchase",
                "event_match_quality": {
                    "composite_score": "NaN",
                    "match_key_feedback": [
                        {"identifier": "Email"},
                        {"coverage": {"percentage": 3}},
                        {"identifier": "click_id", "coverage": {"percentage": True}},
                    ],
                    "diagnostics": [{"percentage": "12.5"}, 7],
                },
                "event_coverage": [],
                "data_freshness": {"upload_frequency": 5},
            },
        ]
    }
    view, purchase = quality.parse(payload)
    assert view == quality.MetaEventQuality("ViewContent")
    assert purchase.composite_score is None
    assert purchase.match_keys == {"Email": None, "click_id": None}
    assert purchase.diagnostics[0].name == "unnamed diagnostic"
    assert purchase.diagnostics[0].percentage == 12.5
    assert purchase.event_coverage is None
    assert purchase.upload_frequency is None
    assert quality.parse({"error": {"code": 1}}) == []
    assert quality.parse({"web": {"data": [LEAD]}})[0].composite_score == 6.2
    rows = quality.comparison([purchase], {})
    assert rows[0]["keys"] == {
        "em": {"meta_coverage": None, "sent_share": None},
        "fbc": {"meta_coverage": None, "sent_share": None},
    }


@pytest.mark.parametrize(
    ("identifier", "key"),
    [
        ("email", "em"),
        ("Phone Number", "ph"),
        ("ip_address", "client_ip_address"),
        ("browser_id", "fbp"),
        ("new_key", "new_key"),
    ],
)
def test_metas_identifiers_name_capi_syncs_keys(identifier: str, key: str) -> None:
    assert quality.our_key(identifier) == key


@pytest.mark.parametrize("engine", ["native", "python"])
def test_results_count_events_per_event_name_on_both_engines(
    tmp_path: Path, graph: FakeGraph, engine: str
) -> None:
    make_orders(tmp_path / "shop.duckdb", 30)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("update orders set tier = case when order_id % 3 = 0 then 'Lead' else 'Purchase' end")
        con.execute("update orders set email = null where order_id % 5 = 0")
    write_pipelines(tmp_path, graph.url, text=PIPELINES.replace("{{value: Purchase}}", "tier"))
    env = {"CAPI_SYNC_ENGINE": "python" if engine == "python" else ""}
    done = capi_sync(tmp_path, "run", "purchases", "--results", "results.json", env=env)
    assert done.returncode == 0, done.stderr
    by_event = orjson.loads((tmp_path / "results.json").read_bytes())["match_quality"]["by_event"]
    assert by_event["Purchase"]["events"] == 20
    assert by_event["Lead"]["events"] == 10
    # orders 5, 10, 20, 25 are Purchases without email; 15 and 30 are Leads without
    assert by_event["Purchase"]["keys"]["em"] == {"events": 16, "share": 0.8}
    assert by_event["Lead"]["keys"]["em"] == {"events": 8, "share": 0.8}
    assert {event["event_name"] for event in graph.accepted_events} == {"Purchase", "Lead"}


def test_past_fifty_event_names_the_rest_count_together() -> None:
    counted = MatchQuality()
    for number in range(60):
        for _ in range(100 - number):
            counted.add_event(("em",), f"Event{number}")
    by_event = counted.by_event()
    assert len(by_event) == 51
    assert next(iter(by_event)) == "Event0"
    assert by_event[OTHER_EVENT_NAMES][0] == sum(100 - number for number in range(50, 60))


def fetching(folder: Path, graph: FakeGraph, alerts: str = "") -> None:
    path = write_pipelines(folder, graph.url)
    text = path.read_text().replace(
        "default_phone_region: US}", "default_phone_region: US, fetch_quality: true}"
    )
    path.write_text(alerts + text)


def scored(score: float) -> dict[str, Any]:
    return {
        "web": [
            {**PURCHASE, "event_match_quality": {**PURCHASE["event_match_quality"], "composite_score": score}}
        ]
    }


def test_fetch_quality_keeps_metas_scores_in_the_runs_results(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 5)
    fetching(tmp_path, graph)
    graph.quality["capisync"] = {"web": [PURCHASE]}
    done = capi_sync(tmp_path, "run", "purchases", "--results", "results.json")
    assert done.returncode == 0, done.stderr
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["meta_quality"] == [
        {
            "event_name": "Purchase",
            "composite_score": 7.2,
            "match_keys": {"em": 100, "client_ip_address": 99.9, "ph": 88},
        }
    ]
    assert graph.quality_requests[0]["agent_name"] == "capisync"
    runs = json_lines(capi_sync(tmp_path, "runs", "--json").stdout)
    assert runs[0]["meta_quality"] == document["meta_quality"]


def test_a_refused_fetch_is_a_note_and_the_run_still_succeeds(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 5)
    fetching(tmp_path, graph)
    graph.quality_reply = error_reply(403, 10, "Permission denied")  # type: ignore[assignment]
    done = capi_sync(tmp_path, "run", "purchases", "--results", "results.json")
    assert done.returncode == 0, done.stderr
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["events_sent"] == 5
    assert document["meta_quality"] is None
    assert any(
        "Event Match Quality was not fetched" in note and "ads_read" in note for note in document["notes"]
    )


def test_metas_score_falling_raises_a_quality_drop_alert(tmp_path: Path, graph: FakeGraph) -> None:
    hook = Receiver()
    try:
        alerts = f"alerts:\n  ops:\n    webhook: {hook.url}\n    on: [quality_drop]\n    quality_drop: 1.5\n"
        make_orders(tmp_path / "shop.duckdb", 3)
        fetching(tmp_path, graph, alerts)
        graph.quality["capisync"] = scored(8.0)
        assert capi_sync(tmp_path, "run", "purchases").returncode == 0
        make_orders(tmp_path / "shop.duckdb", 3, start_id=100, minutes_ago=300)
        graph.quality["capisync"] = scored(7.0)  # within 1.5 of the median (8.0)
        assert capi_sync(tmp_path, "run", "purchases").returncode == 0
        assert hook.bodies == []
        make_orders(tmp_path / "shop.duckdb", 3, start_id=200, minutes_ago=200)
        graph.quality["capisync"] = scored(5.5)  # median of 8.0 and 7.0 is 7.5
        assert capi_sync(tmp_path, "run", "purchases").returncode == 0
        (sent,) = hook.bodies
        assert sent["json"]["trigger"] == "quality_drop"
        assert "Purchase 5.5 (median 7.5)" in sent["json"]["message"]
    finally:
        hook.close()
