"""No value of any type in any mapped column makes the mapper raise: every row becomes an event
whose request body serializes, or a rejection with reasons. Hypothesis feeds every field kind and
source form (columns, JSON paths, cookies, first_of, all_of, lookup, consent) the values warehouses
really return, and the ones that broke runs before."""

from __future__ import annotations

import datetime as dt
import math
import os
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from capi_sync.connectors.meta import MetaClient
from capi_sync.mappings.mapper import MappedRow, MapperOptions, compile_mapping
from capi_sync.mappings.spec import MappingSpec

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
COLUMNS = [
    "id", "name", "ts", "url", "source", "user", "phone", "first", "last", "gender", "birth", "city",
    "state", "zip", "country", "ext", "ip", "ua", "context", "lead", "amount", "currency", "items",
    "ids", "consent", "opt_out", "dpo", "dpo_country", "segment", "tier", "blob", "atе", "extinfo",
]  # fmt: skip
MAPPING = {
    "server_event": {
        "event_name": "name",
        "event_time": "ts",
        "event_id": {"first_of": ["context.event_id", "id"]},
        "event_source_url": "url",
        "referrer_url": "context.page.referrer",
        "action_source": {"lookup": "source", "values": {"offline": "physical_store", "app": "app"},
                          "default": "website"},
        "opt_out": "opt_out",
        "data_processing_options": "dpo",
        "data_processing_options_country": "dpo_country",
        "customer_segmentation": "segment",
    },
    "customer_info": {
        "em": "user.email", "ph": "phone", "fn": "first", "ln": "last", "ge": "gender", "db": "birth",
        "ct": "city", "st": "state", "zp": "zip", "country": "country",
        "external_id": {"all_of": ["ext", "user.id", "blob"]},
        "client_ip_address": "ip", "client_user_agent": "ua",
        "fbp": {"first_of": ["user.fbp", "context.cookie._fbp"]}, "fbc": "context.cookie._fbc",
        "lead_id": "lead", "fb_login_id": "user.login",
    },
    "custom_data": {
        "value": "amount", "currency": "currency", "contents": "items", "content_ids": "ids",
        "num_items": "items.length", "delivery_category": "context.delivery",
        "predicted_ltv": "user.ltv", "content_type": "context.type",
    },
    "custom_properties": {"tier": "tier", "raw": "blob", "nested": "context"},
    "app_data": {"advertiser_tracking_enabled": "atе", "extinfo": "extinfo"},
}  # fmt: skip

JSON_TEXTS = st.sampled_from(
    ['["4",', '{"email": ', '{"email": "a@b.co", "id": 1e999}', "[]", "{}", '"just text"', "null",
     '{"cookie": "_fbp=fb.1.1.1; _fbc=fb.1.2.x"}', '{"page": {"referrer": 5}}', '[{"id": null}]',
     '{"email": ["a@b.co", 3]}', "\ufeff{}", '{"items": {"0": 1}}']
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Zs", "So", "Mn"])),
    st.binary(),
    st.sampled_from([b"\xff\xfe invalid utf-8", b'{"email": "\xc3\x28"}', "555①②③④⑤⑥⑦", "+1 ⑥⑤⓪"]),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.dates(),
    st.times(),
    JSON_TEXTS,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def mapper(**options: Any) -> Any:
    spec = MappingSpec.model_validate(MAPPING)
    chosen: dict[str, Any] = {
        "action_source": "website",
        "default_phone_region": "US",
        "consent_column": "consent",
        "consent_category": "4",
        "url_redaction": "query",
        **options,
    }
    settings_ = MapperOptions(pipeline="p", primary_key=("id",), **chosen)
    return compile_mapping(spec, settings_, COLUMNS, clock=NOW.timestamp)


MAPPERS = {"default": mapper(), "no_region": mapper(default_phone_region=None)}
CLIENT = MetaClient("1", "token", graph_url="http://127.0.0.1:9")


def check(result: MappedRow) -> None:
    assert isinstance(result, MappedRow)
    if result.event is not None:
        CLIENT.prepare([result.event])  # the body serializes
        for value in result.event["user_data"].values():
            assert isinstance(value, str | list)
    else:
        assert result.problems or result.skipped, "a rejection always says why"
        for problem in result.problems:
            str(problem)


def _valid_row(**values: Any) -> tuple[Any, ...]:
    base = {
        "id": 7, "name": "Lead", "ts": NOW - dt.timedelta(hours=1), "url": "https://shop.example/p",
        "ua": "Mozilla/5.0", "consent": "4", "ip": "203.0.113.9",
    }  # fmt: skip
    base.update(values)
    return tuple(base.get(column) for column in COLUMNS)


def _column_values(column: str) -> st.SearchStrategy[Any]:
    """Any value anywhere; the key and the consent mostly let the row reach every other rule."""
    if column == "id":
        return st.one_of(st.integers(), st.text(min_size=1), VALUES)
    if column == "consent":
        return st.one_of(st.just("4"), st.just('["4"]'), VALUES)
    if column in ("name", "ts"):
        return st.one_of(st.just("Lead" if column == "name" else NOW.isoformat()), VALUES)
    return VALUES


CRASHED_BEFORE = {  # the values that crashed runs before (issue 24, items 7 to 10)
    "phone": "555①②③④⑤⑥⑦",
    "consent": '["4",',
    "user": b'{"email": "\xff"}',
    "blob": b"user0@example.com",
}


# Under CI the same 400 examples every run, so a landing never hangs on chance; run it locally
# (without CI set) for fresh ones: that is how the 64-bit contents quantity was found.
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)
@given(st.tuples(*[_column_values(column) for column in COLUMNS]), st.sampled_from(sorted(MAPPERS)))
@example(_valid_row(items='[{"id": 1, "quantity": 1e30}]'), "default")  # found by this test in CI
@example(_valid_row(phone=CRASHED_BEFORE["phone"]), "default")
@example(_valid_row(consent=CRASHED_BEFORE["consent"]), "default")
@example(_valid_row(user=CRASHED_BEFORE["user"]), "default")
def test_no_value_makes_the_mapper_raise(row: tuple[Any, ...], which: str) -> None:
    check(MAPPERS[which].map_row(row))


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("consent", '["4",', "consent_invalid_json"),
        ("user", b'{"email": "\xff"}', "invalid_utf8"),
    ],
)
def test_the_crashing_values_reject_their_row_with_a_reason(column: str, value: Any, rule: str) -> None:
    result = MAPPERS["default"].map_row(_valid_row(**{column: value}))
    assert result.event is None
    assert rule in {p.rule for p in result.problems}


def test_circled_digits_are_digits_in_a_phone() -> None:
    event = MAPPERS["default"].map_row(_valid_row(phone="(650) ⑤⑤⑤-1212")).event
    assert event is not None
    from hashlib import sha256

    assert event["user_data"]["ph"] == sha256(b"16505551212").hexdigest()


def test_a_blob_holding_text_is_hashed_as_that_text_not_its_repr() -> None:
    from hashlib import sha256

    event = MAPPERS["default"].map_row(_valid_row(user=b'{"email": "User0@Example.com"}')).event
    assert event is not None
    assert event["user_data"]["em"] == sha256(b"user0@example.com").hexdigest()
    blob = MAPPERS["default"].map_row(_valid_row(blob=b"ABC-1")).event
    assert blob is not None
    assert sha256(b"abc-1").hexdigest() in blob["user_data"]["external_id"]


def test_properties_json_lacks_are_sent_as_json_can_carry_them() -> None:
    event = (
        MAPPERS["default"]
        .map_row(_valid_row(tier=2**70, context={"n": math.nan, "d": Decimal("sNaN"), "s": {1, 2}}))
        .event
    )
    assert event is not None
    body = orjson.loads(CLIENT.prepare([event]).body)
    custom = body["data"][0]["custom_data"]
    assert custom["tier"] == str(2**70)
    assert custom["nested"]["n"] is None


def test_a_primary_key_too_long_to_store_is_shortened_but_stays_unique() -> None:
    first = MAPPERS["default"].map_row(_valid_row(id="k" * 10_000 + "1"))
    second = MAPPERS["default"].map_row(_valid_row(id="k" * 10_000 + "2"))
    assert len(first.row_key) <= 300
    assert first.row_key != second.row_key
    assert first.event is not None
    assert second.event is not None
    assert first.event["event_id"] != second.event["event_id"]


def test_a_dropped_value_is_shown_short_however_long_it_was() -> None:
    result = MAPPERS["default"].map_row(_valid_row(user={"email": "a@" + "x" * 1_000_000}))
    shown = [p.value for p in result.problems if p.field == "customer_info.em"]
    assert shown
    assert all(value is not None and len(value) < 100 for value in shown)


@pytest.mark.parametrize("quantity", ["1e30", str(2**70), "-1e25"])
def test_integers_json_cannot_carry_are_dropped_not_sent(quantity: str) -> None:
    """Found by the property test against the compiled build: orjson refuses ints past 64 bits,
    and the request would have failed to serialize, stopping the run."""
    result = MAPPERS["default"].map_row(_valid_row(items=f'[{{"id": 1, "quantity": {quantity}}}]'))
    assert result.event is not None
    assert "contents" not in result.event.get("custom_data", {})
    assert ("custom_data.contents", "integer_out_of_range") in {(p.field, p.rule) for p in result.problems}
    check(result)


def test_an_event_json_cannot_carry_is_refused_alone_and_the_batch_goes_on() -> None:
    from capi_sync.connectors.retry import RetryPolicy
    from capi_sync.delivery import Sender
    from tests.fake_graph import FakeGraph

    good = {"event_name": "Lead", "event_time": 1, "action_source": "website", "user_data": {"fbp": "x"}}
    bad = {**good, "custom_data": {"n": 2**70}}
    with FakeGraph(token="t") as graph:
        client = MetaClient(graph.pixel_id, "t", graph_url=graph.url, timeout=5)
        sent = Sender(client, RetryPolicy(), None).send([good, bad, good])
    assert [(index, error.rule) for index, error in sent.refused] == [(1, "unserializable_event")]
    assert len(graph.accepted_events) == 2
