"""Rows breaking each rule, mixed with valid rows in one chunk: the bad ones are rejected or cleaned
with their stated reason, the valid ones are delivered, and no batch carries an invalid event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, recent
from tests.fake_graph import FakeGraph

EXT = json.dumps(["i2", "com.shop", "1.0", "1.0", "17.5", "iPhone15,2", "en_US", "GMT", "", "390",
                  "844", "3", "6", "256", "128", "Europe/Paris"])  # fmt: skip
GOOD: dict[str, Any] = {
    "name": "Purchase", "ts": 60, "source": "website", "url": "https://x.example/p",
    "email": "a@example.com", "phone": None, "city": None, "zip": None, "country": None,
    "ua": "Mozilla/5.0", "amount": 10.0, "currency": "EUR", "content_type": None,
    "att": None, "extinfo": None, "external_id": None,
}  # fmt: skip
# row id -> (changes to a valid row, expected outcome: "sent", or the (field, rule) rejecting it).
# `ts` is in minutes before the run, made a timestamp when the table is written: one computed at
# import went stale while earlier tests ran (5 minutes "in the future" was past by then).
CASES: dict[int, tuple[dict[str, Any], Any]] = {
    1: ({}, "sent"),
    2: ({"ts": 8 * 1440}, ("event_time", "too_old")),
    3: ({"ts": -5}, ("event_time", "in_future")),
    4: ({"ts": None}, ("event_time", "required")),
    5: ({"source": "shop"}, ("action_source", "unknown_action_source")),
    6: ({"url": None}, ("event_source_url", "required_for_website")),
    7: ({"ua": None}, ("client_user_agent", "required_for_website")),
    8: ({"source": "app", "url": None, "att": True}, ("app_data.extinfo", "required_for_app")),
    9: (
        {"source": "app", "att": 1, "extinfo": json.dumps(["i2"] * 15)},
        ("app_data.extinfo", "extinfo_needs_16_slots"),
    ),
    10: ({"source": "app", "url": None, "att": 0, "extinfo": EXT}, "sent"),
    11: ({"currency": None}, ("custom_data.currency", "required_for_purchase")),
    12: ({"currency": "EURO"}, ("custom_data.currency", "required_for_purchase")),
    13: ({"amount": None}, ("custom_data.value", "required_for_purchase")),
    14: ({"phone": "12ab", "country": "US"}, "sent"),  # bad phone dropped, the rest goes
    15: (
        {"email": "not-an-email", "city": "Paris", "zip": "75001", "country": "France"},
        ("customer_info", "weak_match_keys"),
    ),
    16: ({"email": None}, ("customer_info", "weak_match_keys")),
    17: ({"source": "physical_store", "url": None, "ts": 30 * 1440}, "sent"),
    18: ({"source": "physical_store", "ts": 63 * 1440}, ("event_time", "too_old")),
    19: ({"content_type": "bundle"}, "sent"),  # unknown content_type dropped
    20: ({"name": None}, ("event_name", "required")),
    21: ({"email": None, "external_id": "CUST-9"}, "sent"),
}

PIPELINE = """
warehouses: {{shop: {{type: duckdb, path: shop.duckdb}}}}
destinations:
  meta: {{pixel_id: "1", access_token: "{token}", graph_url: "{url}"}}
pipelines:
  rules:
    warehouse: shop
    destination: meta
    query: select * from events
    primary_key: id
    cursor: id
    settings: {{hash_external_id: false}}
    mapping:
      server_event: {{event_name: name, event_time: ts, event_id: id, action_source: source, event_source_url: url}}
      customer_info: {{em: email, ph: phone, ct: city, zp: zip, country: country,
                      client_user_agent: ua, external_id: external_id}}
      custom_data: {{value: amount, currency: currency, content_type: content_type}}
      app_data: {{advertiser_tracking_enabled: att, extinfo: extinfo}}
"""


def _with_timestamp(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "ts": None if row["ts"] is None else recent(row["ts"])}


@pytest.fixture
def outcome(tmp_path: Path, graph: FakeGraph) -> dict[str, Any]:
    columns = ["id", *GOOD]
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute(
            "create table events (id integer, name varchar, ts timestamp, source varchar, url varchar,"
            " email varchar, phone varchar, city varchar, zip varchar, country varchar, ua varchar,"
            " amount double, currency varchar, content_type varchar, att varchar, extinfo json,"
            " external_id varchar)"
        )
        rows = [[i, *_with_timestamp({**GOOD, **changes}).values()] for i, (changes, _) in CASES.items()]
        con.executemany(
            f"insert into events ({', '.join(columns)}) values ({', '.join('?' * len(columns))})", rows
        )
    (tmp_path / "pipelines.yaml").write_text(PIPELINE.format(token=TOKEN, url=graph.url))
    assert cli("run", "rules") == 0
    with StateStore(f"sqlite:///{tmp_path / '.capi-sync' / 'state.db'}") as store:
        rejected = {int(r["row_key"]): r["reasons"] for r in store.list_rejected("rules")}
    return {"sent": {e["event_id"]: e for e in graph.accepted_events}, "rejected": rejected, "graph": graph}


@pytest.mark.parametrize("row_id", list(CASES))
def test_each_rule(outcome: dict[str, Any], row_id: int) -> None:
    expected = CASES[row_id][1]
    if expected == "sent":
        assert str(row_id) in outcome["sent"]
        assert row_id not in outcome["rejected"]
    else:
        assert str(row_id) not in outcome["sent"]
        reasons = {(r["field"], r["rule"]) for r in outcome["rejected"][row_id]}
        assert expected in reasons


def test_valid_rows_share_one_accepted_batch(outcome: dict[str, Any]) -> None:
    graph = outcome["graph"]
    assert len(graph.requests) == 1
    assert graph.requests[0].status == 200
    assert len(outcome["sent"]) == sum(1 for _, want in CASES.values() if want == "sent")


def test_cleaned_values_are_dropped_not_sent(outcome: dict[str, Any]) -> None:
    sent = outcome["sent"]
    assert "ph" not in sent["14"]["user_data"]
    assert "content_type" not in sent["19"].get("custom_data", {})
    assert sent["21"]["user_data"]["external_id"] == "CUST-9", "hash_external_id: false sends it raw"
    app = sent["10"]["app_data"]
    assert app["advertiser_tracking_enabled"] == 0
    assert len(app["extinfo"]) == 16
    assert sent["17"]["action_source"] == "physical_store"


def test_rejection_values_are_redacted(outcome: dict[str, Any]) -> None:
    text = json.dumps(outcome["rejected"])
    assert "not-an-email" not in text
    assert "n***l" in text
