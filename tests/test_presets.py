"""The seeds' automation: the commanders_act preset on the seed's own example, standard event names,
consent, offline conversions, fbclid -> fbc and URL redaction."""

from __future__ import annotations

import json
import textwrap
from hashlib import sha256
from pathlib import Path
from typing import Any

import duckdb
import pytest

from capi_sync.building import mapper_for
from capi_sync.config import load_config
from capi_sync.connectors import open_source
from capi_sync.mappings.events import COMMANDERS_ACT_EVENTS, FRESHPAINT_ALIASES, build_renames, rename
from capi_sync.preparing import prepare
from tests.conftest import TOKEN, cli
from tests.fake_graph import FakeGraph

# The seed's example event (000_*: "Mappings to Facebook Standard Events"), as collected.
SEED_EVENT: dict[str, Any] = {
    "event_name": "purchase",
    "id": "purchase_id_1234",
    "type": "online",
    "user": {
        "email": "user@example.com",
        "id": "user_example_id",
        "tcId": "202205231352367212315156",
        "consistent_anonymous_id": "202205231352367212315156",
        "consent_categories": ["1", "2", "3", "4"],
    },
    "value": 246.9,
    "currency": "EUR",
    "items": [
        {"product": {"id": "product123"}, "price": "123.45", "id": "ET", "item_category": "Car", "item_quantity": 2}
    ],
    "context": {
        "event_id": "1a01c3e940f150eb9b8c542587f1abfd8f0e1cc1f",
        "event_timestamp": 1707830130234,
        "page": {
            "location": {"href": "https://site.com/path?s=2", "hostname": "site.com", "pathname": "/path",
                         "search": "?s=2"},
            "url": "https://site.com/path?s=2",
        },
        "device": {
            "ip": "123.123.123.123",
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/121.0.0.0 Safari/537.36",
        },
        "cookie": "_fbp=fb.1.1653472342558.832801021; some_other=cookie;",
    },
    "integrations": {
        "facebook": {
            "custom_data": {"category": "category1"},
            "user_data": {"fbp": "fb.1.1558571054389.1098115397"},
        }
    },
}  # fmt: skip

PIPELINE = """
warehouses:
  events: {{type: duckdb, path: events.duckdb}}
destinations:
  meta: {{pixel_id: "123456789", access_token: "${{FB_ACCESS_TOKEN}}", graph_url: "{graph_url}",
          retry_base_seconds: 0.01}}
pipelines:
  cact:
    warehouse: events
    destination: meta
    query: select * from events
    primary_key: id
    preset: commanders_act
    preset_options: {options}
    settings: {settings}
"""


def load_events(folder: Path, events: list[dict[str, Any]]) -> None:
    """A table of collected events as a warehouse holds them: nested parts as JSON columns."""
    with duckdb.connect(str(folder / "events.duckdb")) as con:
        con.execute(
            "create table events (event_name varchar, id varchar, type varchar, user json, value double,"
            " currency varchar, items json, context json, integrations json, search_term varchar)"
        )
        for event in events:
            con.execute(
                "insert into events values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [event.get("event_name"), event.get("id"), event.get("type"), json.dumps(event.get("user")),
                 event.get("value"), event.get("currency"), json.dumps(event.get("items")),
                 json.dumps(event.get("context")), json.dumps(event.get("integrations")),
                 event.get("search_term")],
            )  # fmt: skip


def write(
    folder: Path, graph_url: str = "http://127.0.0.1:9", options: str = "{}", settings: str = "{}"
) -> Path:
    path = folder / "pipelines.yaml"
    path.write_text(textwrap.dedent(PIPELINE.format(graph_url=graph_url, options=options, settings=settings)))
    return path


def map_events(folder: Path, now: float, **pipeline: str) -> list[Any]:
    project = load_config(write(folder, **pipeline), env={"FB_ACCESS_TOKEN": TOKEN})
    config = project.pipeline("cact")
    with open_source(project.warehouse_of(config)) as source:
        prepared = prepare(config, source)
        mapper = mapper_for(config, prepared.columns, clock=lambda: now)
        from capi_sync.connectors import Window

        rows = [row for chunk in source.stream(config.query, Window(order_by=("id",)), 100) for row in chunk]
    return [mapper.map_row(row) for row in rows]


def test_the_seed_example_becomes_the_seeds_facebook_event(tmp_path: Path) -> None:
    load_events(tmp_path, [SEED_EVENT])
    (mapped,) = map_events(tmp_path, now=1707830200)
    assert mapped.problems == ()
    event = mapped.event
    assert event["event_name"] == "Purchase"
    assert event["event_time"] == 1707830130
    assert event["event_source_url"] == "https://site.com/path?s=2"
    assert event["action_source"] == "website"
    user = event["user_data"]
    assert user["em"] == "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514"
    assert user["client_ip_address"] == "123.123.123.123"
    assert user["client_user_agent"] == SEED_EVENT["context"]["device"]["user_agent"]
    assert user["fbp"] == "fb.1.1558571054389.1098115397", (
        "integrations.facebook.user_data wins over the cookie"
    )
    custom = event["custom_data"]
    assert custom["currency"] == "EUR"
    assert custom["value"] == 246.9
    assert custom["contents"] == [{"id": "product123", "quantity": 2, "item_price": 123.45}]
    assert "content_ids" not in custom
    # Where the seed's example disagrees with its own tables, the tables win (documented):
    assert event["event_id"] == "1a01c3e940f150eb9b8c542587f1abfd8f0e1cc1f"  # context.event_id
    assert user["external_id"] == [
        sha256(b"user_example_id").hexdigest(),
        sha256(b"202205231352367212315156").hexdigest(),
    ]
    assert custom["order_id"] == "purchase_id_1234"
    assert custom["category"] == "category1", "integrations.facebook.custom_data overrides"
    assert "fbc" not in user, "nothing in the input carries an fbc"


def test_incomplete_items_send_content_ids_and_the_cookie_gives_fbp(tmp_path: Path) -> None:
    event = json.loads(json.dumps(SEED_EVENT))
    event["items"] = [{"product": {"id": "a"}, "price": "1"}, {"id": "b", "quantity": 1}]
    del event["integrations"]
    load_events(tmp_path, [event])
    (mapped,) = map_events(tmp_path, now=1707830200)
    assert mapped.event["custom_data"]["content_ids"] == ["a", "b"]
    assert "contents" not in mapped.event["custom_data"]
    assert mapped.event["user_data"]["fbp"] == "fb.1.1653472342558.832801021"


def test_offline_events_go_to_physical_store_with_its_62_day_window(tmp_path: Path) -> None:
    offline = json.loads(json.dumps(SEED_EVENT)) | {"id": "store-1", "type": "offline"}
    online = json.loads(json.dumps(SEED_EVENT)) | {"id": "web-1"}
    load_events(tmp_path, [offline, online])
    thirty_days_later = 1707830130 + 30 * 86400
    by_id = {m.row_key: m for m in map_events(tmp_path, now=thirty_days_later)}
    assert by_id["store-1"].event["action_source"] == "physical_store"
    assert by_id["web-1"].event is None
    assert [p.rule for p in by_id["web-1"].problems] == ["too_old"]


def test_app_tracking_builds_app_data_and_extinfo(tmp_path: Path) -> None:
    event = json.loads(json.dumps(SEED_EVENT))
    event["context"]["device"] |= {
        "type": "Android", "ad_tracking_enabled": True, "application_tracking_enabled": True,
        "app": {"namespace": "com.shop", "version": "5.1"}, "model": "Pixel 8", "timezone": "CET",
    }  # fmt: skip
    load_events(tmp_path, [event])
    (mapped,) = map_events(tmp_path, now=1707830200, options="{app_tracking: true}")
    assert mapped.event["action_source"] == "app"
    app = mapped.event["app_data"]
    assert app["advertiser_tracking_enabled"] == 1
    assert app["extinfo"][:2] == ["a2", "com.shop"]
    assert app["extinfo"][3] == "5.1"
    assert app["extinfo"][5] == "Pixel 8"
    assert app["extinfo"][15] == "CET"
    assert len(app["extinfo"]) == 16


def test_send_all_properties_copies_scalar_root_properties(tmp_path: Path) -> None:
    event = json.loads(json.dumps(SEED_EVENT)) | {"search_term": "red shoes"}
    load_events(tmp_path, [event])
    (mapped,) = map_events(tmp_path, now=1707830200, options="{send_all_properties: true}")
    custom = mapped.event["custom_data"]
    assert custom["id"] == "purchase_id_1234"
    assert custom["search_term"] == "red shoes"
    assert custom["search_string"] == "red shoes"
    assert "user" not in custom
    assert "context" not in custom


@pytest.mark.parametrize(("name", "expected"), sorted(COMMANDERS_ACT_EVENTS.items()))
def test_commanders_act_event_names(name: str, expected: str) -> None:
    assert rename(name, build_renames()) == expected


@pytest.mark.parametrize(("alias", "expected"), sorted(FRESHPAINT_ALIASES.items()))
def test_freshpaint_aliases_in_every_spelling(alias: str, expected: str) -> None:
    table = build_renames()
    words = alias.split()
    spellings = {
        alias,
        alias.upper(),
        "_".join(words).capitalize(),
        words[0] + "".join(w.capitalize() for w in words[1:]),
    }
    assert {rename(spelling, table) for spelling in spellings} == {expected}


def test_other_names_stay_custom_and_user_renames_win() -> None:
    table = build_renames({"checkout_done": "Purchase", "search": "FindLocation"})
    assert rename("newsletter_open", table) == "newsletter_open"
    assert rename("CheckoutDone", table) == "Purchase"
    assert rename("search", table) == "FindLocation"
    assert rename("purchase", build_renames(standard=False)) == "purchase", "opt-in"


def test_consent_fbclid_and_url_redaction_end_to_end(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    import time

    now_ms = int(time.time() * 1000) - 3_600_000
    events = []
    for number, consents in enumerate((["1", "4"], ["1", "2"], [], ["4"]), 1):
        event = json.loads(json.dumps(SEED_EVENT))
        event["id"] = f"order-{number}"
        event["user"]["consent_categories"] = consents
        event["context"]["event_timestamp"] = now_ms
        event["context"]["page"]["url"] = f"https://site.com/landing?fbclid=IwAR{number}&email=a@b.c#top"
        events.append(event)
    load_events(tmp_path, events)
    settings = "{consent_column: user.consent_categories, consent_category: '4', url_redaction: query}"
    write(tmp_path, graph.url, settings=settings)
    assert cli("run", "cact") == 0
    assert "+ 2 skipped (2 without consent)" in capsys.readouterr().out
    sent = {e["custom_data"]["order_id"]: e for e in graph.accepted_events}
    assert sorted(sent) == ["order-1", "order-4"], "only rows whose consent holds category 4"
    for order, event in sent.items():
        assert event["event_source_url"] == "https://site.com/landing", "query and fragment stripped"
        fbclid = "IwAR" + order[-1]
        assert event["user_data"]["fbc"] == f"fb.1.{(now_ms // 1000) * 1000}.{fbclid}"


def test_path_redaction_keeps_only_the_host(tmp_path: Path) -> None:
    load_events(tmp_path, [SEED_EVENT])
    (mapped,) = map_events(tmp_path, now=1707830200, settings="{url_redaction: path}")
    assert mapped.event["event_source_url"] == "https://site.com/url-redacted-by-capi-sync"
