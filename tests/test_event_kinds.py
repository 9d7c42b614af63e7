"""Business messaging, Conversion Leads from a CRM, and events that update an earlier one: a valid
and an invalid row of each kind, through the CLI, on both engines, against a fake Graph API that
refuses what Meta's pages say it refuses.

Meta's rules: "Conversions API for Business Messaging" (action_source business_messaging with
messaging_channel, and page_id + page_scoped_user_id, ig_account_id + ig_sid or
whatsapp_business_account_id + ctwa_clid), "Conversion Leads integration, payload specification"
(lead_id of 15 or 16 digits, system_generated, custom_data.event_source crm and lead_event_source,
event_time after the lead's creation), and the server event's `original_event_data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from capi_sync.mappings.mapper import derive_event_id
from capi_sync.state import StateStore
from tests.conftest import TOKEN, recent
from tests.fake_graph import FakeGraph
from tests.test_operations import capi_sync

PIPELINES = """
warehouses: {{shop: {{type: duckdb, path: shop.duckdb}}}}
destinations:
  meta: {{pixel_id: "1", access_token: "${{FB_ACCESS_TOKEN}}", graph_url: "{url}"}}
pipelines:
  chats:
    warehouse: shop
    destination: meta
    query: select * from chats
    primary_key: id
    settings: {{action_source: business_messaging}}
    mapping:
      server_event: {{event_name: name, event_time: ts, messaging_channel: channel, action_source: source}}
      customer_info: {{page_id: page, page_scoped_user_id: psid, ig_account_id: ig_account, ig_sid: igsid,
                      whatsapp_business_account_id: waba, ctwa_clid: ctwa, em: email}}
      custom_data: {{value: amount, currency: currency}}
  chats_unmapped_channel:
    warehouse: shop
    destination: meta
    query: select * from chats where id = 1
    primary_key: id
    mapping:
      server_event: {{event_name: name, event_time: ts, action_source: {{value: business_messaging}}}}
      customer_info: {{page_id: page, page_scoped_user_id: psid}}
      custom_data: {{value: amount, currency: currency}}
  leads:
    warehouse: shop
    destination: meta
    query: select * from leads
    primary_key: id
    preset: crm_leads
    preset_options: {{lead_event_source: HubSpot}}
    mapping:
      server_event: {{event_name: stage, event_time: changed_at, lead_created_at: created_at}}
      customer_info: {{lead_id: lead_id, em: email}}
  updates:
    warehouse: shop
    destination: meta
    query: select * from updates
    primary_key: id
    settings: {{action_source: system_generated}}
    mapping:
      server_event: {{event_name: name, event_time: ts}}
      customer_info: {{em: email}}
      custom_data: {{value: amount, currency: currency}}
      original_event_data: {{event_name: original_name, event_time: original_ts, order_id: order_id}}
"""

CHATS = [  # id, name, minutes ago, channel, source, page, psid, ig_account, igsid, waba, ctwa, email
    (1, "Purchase", 30, "messenger", None, "1111", "2222", None, None, None, None, None),
    (2, "Purchase", 30, "instagram", None, None, None, "3333", "4444", None, None, None),
    (3, "LeadSubmitted", 30, "whatsapp", None, None, None, None, None, "5555", "ARAkx1", None),
    (4, "Purchase", 30, "messenger", None, "1111", None, None, None, None, None, "a@example.com"),
    (5, "Purchase", 30, "telegram", None, "1111", "2222", None, None, None, None, None),
    (6, "Lead", 30, "whatsapp", None, None, None, None, None, "5555", "ARAkx1", None),
    (7, "Purchase", 30, None, None, "1111", "2222", None, None, None, None, None),
    (8, "Purchase", 30, "messenger", "website", "1111", "2222", None, None, None, None, "a@example.com"),
]
CHAT_OUTCOMES: dict[int, Any] = {
    1: "sent",
    2: "sent",
    3: "sent",
    4: ("customer_info.page_scoped_user_id", "required_for_messenger"),
    5: ("messaging_channel", "unknown_messaging_channel"),
    6: ("event_name", "not_a_business_messaging_event"),  # Meta takes LeadSubmitted, not Lead
    7: ("messaging_channel", "required_for_business_messaging"),
    8: ("messaging_channel", "requires_business_messaging"),
}
LEADS = [  # id, stage, lead_id, changed minutes ago, created minutes ago, email
    (1, "Marketing Qualified Lead", "123456789012345", 60, 600, None),
    (2, "Converted", 1234567890123456, 30, 600, "b@example.com"),
    (3, "Converted", "12345", 30, 600, None),
    (4, "Sales Opportunity", None, 30, 600, "b@example.com"),
    (5, "Converted", "123456789012345", 600, 60, None),
]
LEAD_OUTCOMES: dict[int, Any] = {
    1: "sent",
    2: "sent",
    3: ("customer_info.lead_id", "required_for_crm"),  # dropped as invalid_lead_id, then required
    4: ("customer_info.lead_id", "required_for_crm"),
    5: ("event_time", "before_lead_created"),
}
UPDATES = [  # id, name, minutes ago, email, original name, original minutes ago, order_id
    (1, "Purchase", 10, "c@example.com", "Purchase", 600, "o-1"),
    (2, "Purchase", 10, "c@example.com", None, None, None),  # updates nothing: sent without the group
    (3, "Purchase", 10, "c@example.com", "Purchase", None, "o-3"),
]
UPDATE_OUTCOMES: dict[int, Any] = {
    1: "sent",
    2: "sent",
    3: ("original_event_data.event_time", "required_in_original_event_data"),
}


def write_tables(folder: Path) -> None:
    with duckdb.connect(str(folder / "shop.duckdb")) as con:
        con.execute(
            "create table chats (id int, name varchar, ts timestamp, channel varchar, source varchar,"
            " page varchar, psid varchar, ig_account varchar, igsid varchar, waba varchar,"
            " ctwa varchar, email varchar, amount double default 9.5, currency varchar default 'EUR')"
        )
        for row in CHATS:
            con.execute(
                "insert into chats (id, name, ts, channel, source, page, psid, ig_account, igsid, waba,"
                " ctwa, email) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row[0], row[1], recent(row[2]), *row[3:]],
            )
        con.execute(
            "create table leads (id int, stage varchar, lead_id varchar, changed_at timestamp,"
            " created_at timestamp, email varchar)"
        )
        for lead in LEADS:
            number, stage, lead_id, changed, created, email = lead
            con.execute(
                "insert into leads values (?, ?, ?, ?, ?, ?)",
                [
                    number,
                    stage,
                    None if lead_id is None else str(lead_id),
                    recent(changed),
                    recent(created),
                    email,
                ],
            )
        con.execute(
            "create table updates (id int, name varchar, ts timestamp, email varchar, original_name varchar,"
            " original_ts timestamp, order_id varchar, amount double default 5, currency varchar default 'USD')"
        )
        for number, name, ago, email, original, original_ago, order in UPDATES:
            con.execute(
                "insert into updates (id, name, ts, email, original_name, original_ts, order_id)"
                " values (?, ?, ?, ?, ?, ?, ?)",
                [
                    number,
                    name,
                    recent(ago),
                    email,
                    original,
                    None if original_ago is None else recent(original_ago),
                    order,
                ],
            )


@pytest.fixture(params=["native", "python"])
def ran(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with FakeGraph(token=TOKEN) as graph:
        write_tables(tmp_path)
        (tmp_path / "pipelines.yaml").write_text(PIPELINES.format(url=graph.url))
        env = {"CAPI_SYNC_ENGINE": "python" if request.param == "python" else ""}
        done = capi_sync(tmp_path, "run", "--all", env=env)
        assert done.returncode == 0, done.stderr
        yield tmp_path, graph


def check(expected: dict[int, Any], sent: dict[int, Any], rejected: dict[int, Any]) -> None:
    for row_id, want in expected.items():
        if want == "sent":
            assert row_id in sent, (row_id, rejected.get(row_id))
            assert row_id not in rejected
        else:
            assert row_id not in sent
            assert want in {(r["field"], r["rule"]) for r in rejected[row_id]}, rejected.get(row_id)


def by_pipeline(graph: FakeGraph, pipeline: str) -> dict[int, dict[str, Any]]:
    """Accepted events of one pipeline by row id (event_id derives from pipeline and key: match it)."""
    ids = {derive_event_id(pipeline, str(number)): number for number in range(1, 20)}
    return {ids[e["event_id"]]: e for e in graph.accepted_events if e["event_id"] in ids}


def rejected_of(folder: Path, pipeline: str) -> dict[int, Any]:
    with StateStore(f"sqlite:///{folder / '.capi-sync' / 'state.db'}") as store:
        return {int(r["row_key"]): r["reasons"] for r in store.list_rejected(pipeline)}


def test_business_messaging(ran: Any) -> None:
    folder, graph = ran
    sent = by_pipeline(graph, "chats")
    check(CHAT_OUTCOMES, sent, rejected_of(folder, "chats"))
    assert sent[1]["action_source"] == "business_messaging"
    assert sent[1]["messaging_channel"] == "messenger"
    assert sent[1]["user_data"] == {"page_id": "1111", "page_scoped_user_id": "2222"}  # never hashed
    assert sent[3]["user_data"] == {"whatsapp_business_account_id": "5555", "ctwa_clid": "ARAkx1"}
    # without messaging_channel mapped, a chat's event is rejected, whichever engine reads the row
    reasons = rejected_of(folder, "chats_unmapped_channel")[1]
    assert ("messaging_channel", "required_for_business_messaging") in {
        (r["field"], r["rule"]) for r in reasons
    }


def test_conversion_leads_from_a_crm(ran: Any) -> None:
    folder, graph = ran
    sent = by_pipeline(graph, "leads")
    check(LEAD_OUTCOMES, sent, rejected_of(folder, "leads"))
    lead = sent[2]
    assert lead["action_source"] == "system_generated"
    assert lead["user_data"]["lead_id"] == "1234567890123456"  # never hashed
    assert lead["custom_data"] == {"event_source": "crm", "lead_event_source": "HubSpot"}
    assert lead["event_name"] == "Converted"  # a CRM's stage name is kept as it is
    assert "lead_created_at" not in lead
    reasons = {(r["field"], r["rule"]) for r in rejected_of(folder, "leads")[3]}
    assert ("customer_info.lead_id", "invalid_lead_id") in reasons


def test_events_that_update_an_earlier_one(ran: Any) -> None:
    folder, graph = ran
    sent = by_pipeline(graph, "updates")
    check(UPDATE_OUTCOMES, sent, rejected_of(folder, "updates"))
    original = sent[1]["original_event_data"]
    assert original["event_name"] == "Purchase"
    assert original["order_id"] == "o-1"
    assert isinstance(original["event_time"], int)
    assert original["event_time"] < sent[1]["event_time"]
    assert "original_event_data" not in sent[2]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{{lead_id: lead_id, em: email}}", "{{em: email}}", "needs mapping.customer_info.lead_id"),
        (
            "    preset_options: {{lead_event_source: HubSpot}}\n",
            "",
            "needs preset_options.lead_event_source",
        ),
        ("event_time: original_ts, ", "", "original_event_data.event_time is required"),
    ],
)
def test_what_a_kind_needs_is_a_config_error(tmp_path: Path, old: str, new: str, message: str) -> None:
    write_tables(tmp_path)
    assert old in PIPELINES
    (tmp_path / "pipelines.yaml").write_text(PIPELINES.replace(old, new).format(url="http://127.0.0.1:9"))
    done = capi_sync(tmp_path, "validate")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
