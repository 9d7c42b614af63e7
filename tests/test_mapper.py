"""Where a row becomes an event: types, ids, precedence, hashing modes and rejections."""

from __future__ import annotations

import datetime as dt
from hashlib import sha256
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from capi_sync.errors import ConfigError
from capi_sync.mappings.fields import STRONG_USER_FIELDS, WEAK_USER_FIELD_SETS
from capi_sync.mappings.mapper import MappedRow, MapperOptions, compile_mapping, derive_event_id
from capi_sync.mappings.spec import MappingSpec
from capi_sync.mappings.validate import validate_event
from capi_sync.mappings.values import unix_seconds

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
COLUMNS = [
    "id",
    "ts",
    "email",
    "phone",
    "country",
    "ua",
    "url",
    "source",
    "amount",
    "currency",
    "tags",
    "name",
]


def row(**values: Any) -> tuple[Any, ...]:
    defaults: dict[str, Any] = {
        "id": 1, "ts": NOW - dt.timedelta(hours=1), "email": "a@example.com", "phone": None,
        "country": None, "ua": "Mozilla/5.0", "url": "https://x.example/p", "source": None,
        "amount": 10, "currency": "usd", "tags": None, "name": "Purchase",
    }  # fmt: skip
    defaults.update(values)
    return tuple(defaults[column] for column in COLUMNS)


def mapper(hashing_required: bool = True, action_source: str | None = "website", **mapping: Any):
    spec = MappingSpec.model_validate({
        "server_event": {"event_name": "name", "event_time": "ts", "event_source_url": "url",
                         "action_source": "source", **mapping.pop("server_event", {})},
        "customer_info": {"em": "email", "ph": "phone", "country": "country",
                          "client_user_agent": "ua", **mapping.pop("customer_info", {})},
        "custom_data": {"value": "amount", "currency": "currency"},
        **mapping,
    })  # fmt: skip
    options = MapperOptions(
        pipeline="p",
        primary_key=("id",),
        action_source=action_source,
        hashing_required=hashing_required,
        default_phone_region="US",
    )
    return compile_mapping(spec, options, COLUMNS, clock=NOW.timestamp)


def ok(result: MappedRow) -> dict[str, Any]:
    assert result.event is not None, result.problems
    return result.event


def rules(result: MappedRow) -> set[tuple[str, str]]:
    assert result.event is None
    return {(p.field, p.rule) for p in result.problems}


EPOCH = int(dt.datetime(2026, 11, 20, 11, 0, tzinfo=dt.UTC).timestamp())


@pytest.mark.parametrize(
    "raw",
    [
        dt.datetime(2026, 11, 20, 11, 0),  # naive: read in the pipeline's timezone (UTC)
        dt.datetime(2026, 11, 20, 12, 0, tzinfo=ZoneInfo("Europe/Paris")),
        EPOCH,
        EPOCH * 1000,
        float(EPOCH),
        str(EPOCH),
        "2026-11-20T11:00:00Z",
        "2026-11-20 12:00:00+01:00",
    ],
)
def test_event_time_becomes_unix_seconds(raw: Any) -> None:
    assert ok(mapper().map_row(row(ts=raw)))["event_time"] == EPOCH


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York"])
def test_unix_seconds_shortcuts_agree_with_timestamp(zone: str) -> None:
    """Naive values in UTC and aware values skip `replace(...).timestamp()`: same seconds, always."""
    tz = ZoneInfo(zone)
    moments = [dt.datetime(1969, 12, 31, 23, 59, 59, 999_999), dt.datetime(1900, 3, 1, 0, 0, 0, 1),
               dt.datetime(2026, 10, 25, 2, 30), dt.datetime(2026, 11, 20, 11, 0, 0, 500_000)]  # fmt: skip
    for moment in moments:
        assert unix_seconds(moment, tz) == int(moment.replace(tzinfo=tz).timestamp())
        for other in (dt.UTC, ZoneInfo("Asia/Kolkata"), dt.timezone(dt.timedelta(hours=-3, minutes=-30))):
            aware = moment.replace(tzinfo=other)
            assert unix_seconds(aware, tz) == int(aware.timestamp())


def test_event_time_from_a_date_is_midnight() -> None:
    event = ok(mapper().map_row(row(ts=dt.date(2026, 11, 20))))
    assert event["event_time"] == int(dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp())


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (None, "required"),
        ("yesterday", "invalid_timestamp"),
        (True, "invalid_timestamp"),
        (NOW - dt.timedelta(days=8), "too_old"),
        (NOW + dt.timedelta(minutes=5), "in_future"),
    ],
)
def test_bad_event_times_are_rejected_never_defaulted(raw: Any, rule: str) -> None:
    assert ("event_time", rule) in rules(mapper().map_row(row(ts=raw)))


def test_physical_store_events_may_be_62_days_old() -> None:
    old = NOW - dt.timedelta(days=30)
    assert ok(mapper().map_row(row(ts=old, source="physical_store", url=None)))
    assert ("event_time", "too_old") in rules(
        mapper().map_row(row(ts=NOW - dt.timedelta(days=63), source="physical_store"))
    )


def test_event_id_is_derived_deterministically_from_the_key() -> None:
    first = ok(mapper().map_row(row(id=42)))["event_id"]
    assert first == ok(mapper().map_row(row(id=42, amount=99)))["event_id"]
    assert first == derive_event_id("p", "42")
    assert first != ok(mapper().map_row(row(id=43)))["event_id"]


def test_mapped_event_id_wins() -> None:
    event = ok(mapper(server_event={"event_id": "id"}).map_row(row(id=7)))
    assert event["event_id"] == "7"


def test_mapped_action_source_wins_over_the_setting() -> None:
    assert ok(mapper().map_row(row(source="Physical_Store")))["action_source"] == "physical_store"
    assert ok(mapper().map_row(row(source=None)))["action_source"] == "website"
    assert ("action_source", "unknown_action_source") in rules(mapper().map_row(row(source="shop")))


def test_website_events_need_url_and_user_agent() -> None:
    assert rules(mapper().map_row(row(url=None, ua=None))) >= {
        ("event_source_url", "required_for_website"),
        ("client_user_agent", "required_for_website"),
    }


def test_purchase_needs_value_and_currency_and_currency_is_checked() -> None:
    assert ("custom_data.value", "required_for_purchase") in rules(mapper().map_row(row(amount=None)))
    result = mapper().map_row(row(currency="dollars"))
    assert ("custom_data.currency", "required_for_purchase") in rules(result)
    assert ok(mapper().map_row(row(name="Lead", currency="dollars")))["custom_data"] == {"value": 10.0}


def test_pre_hashed_values_pass_through_and_empty_strings_are_never_hashed() -> None:
    digest = sha256(b"a@example.com").hexdigest()
    event = ok(mapper().map_row(row(email=digest.upper(), phone="  ")))
    assert event["user_data"]["em"] == digest
    assert "ph" not in event["user_data"]


def test_list_values_become_lists_of_hashes() -> None:
    event = ok(mapper().map_row(row(email=["A@example.com", "", "b@example.com"])))
    assert event["user_data"]["em"] == [
        sha256(b"a@example.com").hexdigest(),
        sha256(b"b@example.com").hexdigest(),
    ]


def test_phone_takes_its_region_from_the_row_country() -> None:
    event = ok(mapper().map_row(row(phone="06 12 34 56 78", country="France")))
    assert event["user_data"]["ph"] == sha256(b"33612345678").hexdigest()
    assert event["user_data"]["country"] == sha256(b"fr").hexdigest()


def test_invalid_optional_values_are_dropped_with_a_redacted_warning() -> None:
    result = mapper().map_row(row(phone="abc", email="jane.doe@example.com"))
    event = ok(result)
    assert "ph" not in event["user_data"]
    (problem,) = result.problems
    assert (problem.field, problem.rule, problem.value) == (
        "customer_info.ph",
        "invalid_phone",
        "***",
    )


def test_when_nothing_can_match_the_row_is_rejected() -> None:
    result = mapper().map_row(row(email="jane.doe-at-example.com"))
    assert ("customer_info", "weak_match_keys") in rules(result)
    assert all("jane.doe-at-example.com" not in str(p) for p in result.problems)


def test_hashing_not_required_accepts_digests_and_rejects_plain_pii() -> None:
    digest = sha256(b"a@example.com").hexdigest()
    assert ok(mapper(hashing_required=False).map_row(row(email=digest)))["user_data"]["em"] == digest
    result = mapper(hashing_required=False).map_row(row(email="jane@example.com"))
    (problem,) = [p for p in result.problems if p.rule == "not_a_sha256"]
    assert result.event is None
    assert problem.value == "j***@example.com"


def test_missing_primary_key_rejects_the_row() -> None:
    assert rules(mapper().map_row(row(id=None))) == {("id", "missing_primary_key")}


def test_constants_and_custom_properties() -> None:
    m = mapper(
        server_event={"event_name": {"value": "Lead"}},
        custom_properties={"tags": "tags", "channel": {"value": "crm"}},
    )
    event = ok(m.map_row(row(tags=["a", "b"])))
    assert event["event_name"] == "Lead"
    assert event["custom_data"] == {
        "value": 10.0,
        "currency": "USD",
        "tags": ["a", "b"],
        "channel": "crm",
    }


def test_unknown_columns_are_all_reported_together() -> None:
    spec = MappingSpec.model_validate({
        "server_event": {"event_name": "nme", "event_time": "tss"},
        "customer_info": {"em": "email"},
    })  # fmt: skip
    options = MapperOptions(pipeline="p", primary_key=("pk",), action_source="website")
    with pytest.raises(ConfigError) as caught:
        compile_mapping(spec, options, COLUMNS)
    assert len(caught.value.errors) == 3
    assert "pipeline 'p': mapping.server_event.event_name: column 'nme'" in caught.value.errors[0]


def test_column_names_match_case_insensitively_when_unambiguous() -> None:
    spec = MappingSpec.model_validate({
        "server_event": {"event_name": {"value": "Lead"}, "event_time": "TS"},
        "customer_info": {"em": "Email"},
    })  # fmt: skip
    options = MapperOptions(pipeline="p", primary_key=("ID",), action_source="system_generated")
    event = ok(
        compile_mapping(spec, options, ["ID", "TS", "EMAIL"], clock=NOW.timestamp).map_row(
            (1, NOW, "a@example.com")
        )
    )
    assert event["user_data"]["em"] == sha256(b"a@example.com").hexdigest()


def test_opt_out_and_limited_data_use_are_mappable() -> None:
    m = mapper(
        server_event={
            "opt_out": {"value": "true"},
            "data_processing_options": {"value": "LDU"},
            "data_processing_options_country": {"value": "1"},
            "data_processing_options_state": {"value": 1000},
            "referrer_url": {"value": "https://ref.example/"},
        }
    )
    event = ok(m.map_row(row()))
    assert event["opt_out"] is True
    assert event["data_processing_options"] == ["LDU"]
    assert (event["data_processing_options_country"], event["data_processing_options_state"]) == (1, 1000)
    assert event["referrer_url"] == "https://ref.example/"


def test_unhashed_keys_are_sent_as_given() -> None:
    m = mapper(customer_info={"fbc": {"value": " fb.1.1700000000000.AbC "}, "subscription_id": "id"})
    user = ok(m.map_row(row(id=77)))["user_data"]
    assert user["fbc"] == "fb.1.1700000000000.AbC"
    assert user["subscription_id"] == "77"


def test_rejected_rows_explain_the_values_dropped_on_the_way() -> None:
    result = mapper().map_row(row(email="jane.doe-at-example.com", phone="abc"))
    assert rules(result) >= {
        ("customer_info", "weak_match_keys"),
        ("customer_info.em", "invalid_email"),
        ("customer_info.ph", "invalid_phone"),
    }


@pytest.mark.parametrize(
    "raw",
    [
        [
            {"id": "sku-1", "quantity": 2, "item_price": "12.50", "delivery_category": "Home_Delivery"},
            {"id": 7, "quantity": 1.0, "item_price": 3},
        ],
        '[{"id": "sku-1", "quantity": 2, "item_price": 12.5, "delivery_category": "home_delivery"},'
        ' {"id": "7", "quantity": 1, "item_price": 3.0}]',
    ],
)
def test_contents_from_array_or_json_columns(raw: Any) -> None:
    spec = MappingSpec.model_validate({
        "server_event": {"event_name": {"value": "Purchase"}, "event_time": "ts"},
        "customer_info": {"em": "email"},
        "custom_data": {"value": "amount", "currency": "currency", "contents": "tags",
                        "content_ids": {"value": '["sku-1", "7"]'}},
    })  # fmt: skip
    options = MapperOptions(pipeline="p", primary_key=("id",), action_source="system_generated")
    event = ok(compile_mapping(spec, options, COLUMNS, clock=NOW.timestamp).map_row(row(tags=raw)))
    assert event["custom_data"]["contents"] == [
        {"id": "sku-1", "quantity": 2, "item_price": 12.5, "delivery_category": "home_delivery"},
        {"id": "7", "quantity": 1, "item_price": 3.0},
    ]
    assert event["custom_data"]["content_ids"] == ["sku-1", "7"]


@pytest.mark.parametrize(
    ("tags", "rule"),
    [
        ('[{"qty": 1}]', "invalid_contents"),
        ('[{"id": "a", "quantity": true}]', "not_a_number"),
        ('[{"id": "a", "quantity": 1.5}]', "not_an_integer"),
        ('[{"id": "a", "item_price": "free"}]', "not_a_number"),
        ('[{"id": "a", "delivery_category": "drone"}]', "unknown_delivery_category"),
    ],
)
def test_malformed_contents_are_dropped_with_their_rule(tags: str, rule: str) -> None:
    spec = MappingSpec.model_validate({
        "server_event": {"event_name": {"value": "Lead"}, "event_time": "ts"},
        "customer_info": {"em": "email"},
        "custom_data": {"contents": "tags"},
    })  # fmt: skip
    options = MapperOptions(pipeline="p", primary_key=("id",), action_source="system_generated")
    result = compile_mapping(spec, options, COLUMNS, clock=NOW.timestamp).map_row(row(tags=tags))
    assert "custom_data" not in ok(result)
    assert [(p.field, p.rule) for p in result.problems] == [("custom_data.contents", rule)]


def test_empty_optional_values_are_absent_in_every_group() -> None:
    m = mapper(server_event={"opt_out": "tags"}, app_data={"advertiser_tracking_enabled": "tags"})
    event = ok(m.map_row(row(tags="  ", currency="usd")))
    assert "opt_out" not in event
    assert "app_data" not in event
    assert ("opt_out", "not_a_boolean") in rules(m.map_row(row(tags="maybe")))


def test_memos_that_rarely_hit_switch_off_and_results_stay_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emails never repeat here, user agents always do: after the trial the email memo is off (its
    key calls the bare normalize-and-hash), the user agent's stays on, and no event changes."""
    from capi_sync.mappings import mapper as mapper_module

    monkeypatch.setattr(mapper_module, "MEMO_TRIAL", 10)
    compiled = mapper()
    paths_before = {key: path for key, _, path in compiled._user_plan}
    for number in range(40):
        email = f" User{number}@Example.COM"
        event = ok(compiled.map_row(row(id=number, email=email, phone="(650) 555-0134", country="us")))
        assert event["user_data"]["em"] == sha256(f"user{number}@example.com".encode()).hexdigest()
        assert event["user_data"]["ph"] == sha256(b"16505550134").hexdigest()
        assert event["user_data"]["client_user_agent"] == "Mozilla/5.0"
    paths_after = {key: path for key, _, path in compiled._user_plan}
    assert paths_after["em"] is not paths_before["em"], "the email memo switched itself off"
    assert paths_after["client_user_agent"] is paths_before["client_user_agent"]
    assert paths_after["ph"] is paths_before["ph"], "one phone number: its memo hits every time"


@pytest.mark.parametrize("weak", sorted(sorted(keys) for keys in WEAK_USER_FIELD_SETS))
@pytest.mark.parametrize("strong", sorted(STRONG_USER_FIELDS))
def test_weak_key_sets_are_refused_until_a_strong_key_joins(weak: list[str], strong: str) -> None:
    event = {"event_name": "Lead", "event_time": 1_790_000_000, "action_source": "email"}
    weak_only = {**event, "user_data": dict.fromkeys(weak, "x")}
    problems = validate_event(weak_only, now=1_790_000_000, strong_key_required=False)
    assert [(p.field, p.rule) for p in problems] == [("customer_info", "weak_match_keys")]
    with_strong = {**event, "user_data": dict.fromkeys([*weak, strong], "x")}
    assert validate_event(with_strong, now=1_790_000_000, strong_key_required=True) == []


def test_the_mapping_knows_which_columns_it_reads() -> None:
    """Workers get only these: a column missing here would reach them as another column's value."""
    spec = MappingSpec.model_validate({
        "server_event": {"event_name": {"value": "Purchase"}, "event_time": "ts"},
        "customer_info": {"em": {"first_of": ["email", "phone"]}, "client_user_agent": "tags.ua"},
    })  # fmt: skip
    options = MapperOptions(
        pipeline="p", primary_key=("id",), action_source="website", consent_column="source"
    )
    used = compile_mapping(spec, options, COLUMNS).columns_used
    assert [COLUMNS[index] for index in used] == ["id", "ts", "email", "phone", "source", "tags"]

    def every_column(compiler: Any) -> Any:
        columns = compiler.columns  # reads rows by position: may read any column
        return lambda row: dict(zip(columns, row, strict=True))

    spec = MappingSpec.model_validate({
        "server_event": {"event_name": {"value": "Purchase"}, "event_time": "ts"},
        "customer_info": {"em": "email"},
        "custom_properties": {"everything": {"derive": "every_column"}},
    })  # fmt: skip
    options = MapperOptions(pipeline="p", primary_key=("id",), action_source="website")
    mapper = compile_mapping(spec, options, COLUMNS, derived={"every_column": every_column})
    assert mapper.columns_used == tuple(range(len(COLUMNS)))
