"""The native core writes exactly the bytes the Python reference writes, or hands the row back.

Each test maps the same Arrow record batch twice: through `native.map_batch` (the core, with the
reference for the rows it declines) and through the reference alone (`EventMapper.map_row` on the
batch's Python values). Events the core wrote must equal `orjson.dumps` of the reference's event,
byte for byte, with the same row key, key values and customer-information keys; every other
outcome must be the reference's own. The shared vector files run through both paths too.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from hashlib import sha256
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from capi_sync import native
from capi_sync.mappings.mapper import MapperOptions, compile_mapping
from capi_sync.mappings.spec import MappingSpec
from tests.test_vectors import VECTORS, Vector, check

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built here")

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC).timestamp()


def both_paths(mapping: dict[str, Any], batch: pa.RecordBatch, **options: Any) -> tuple[int, list[Any]]:
    """Map `batch` both ways and compare; (rows the core wrote, the reference's outcomes)."""
    spec = MappingSpec.model_validate(mapping)
    settings_ = MapperOptions(pipeline="differential", primary_key=("id",), **options)
    columns = batch.schema.names
    mapper = compile_mapping(spec, settings_, columns, clock=lambda: NOW)
    plan = native.compile_plan(spec, settings_, columns, mapper)
    rows = list(zip(*(column.to_pylist() for column in batch.columns), strict=True))
    written, outcomes = 0, []
    for got, row in zip(native.map_batch(plan, mapper, batch), rows, strict=True):
        want = mapper.map_row(row, NOW)
        outcomes.append(want)
        if isinstance(got.event, bytes):
            written += 1
            assert want.event is not None, (row, want)
            assert not want.problems, (row, want)
            assert got.event == orjson.dumps(want.event), row
            assert got.user_keys == tuple(want.event["user_data"]), row
            assert (got.row_key, got.key) == (want.row_key, want.key), row
        else:
            assert got == want, row
    return written, outcomes


BASE = {
    "server_event": {
        "event_name": "name",
        "event_time": "ts",
        "event_id": "eid",
        "action_source": "source",
        "event_source_url": "url",
    },
    "customer_info": {
        "country": "country", "em": "em", "ph": "ph", "fn": "fn", "ln": "ln", "ge": "ge", "db": "db",
        "ct": "ct", "st": "st", "zp": "zp", "external_id": "ext", "client_ip_address": "ip",
        "client_user_agent": "ua", "fbp": "fbp", "lead_id": "lead",
    },
    "custom_data": {
        "value": "amount", "currency": "currency", "content_ids": "ids", "num_items": "n",
        "content_type": "ctype", "order_id": "eid", "contents": "items",
    },
    "custom_properties": {"tier": "tier", "flag": {"value": True}},
}  # fmt: skip

ASCII = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=20)
HOSTILE = st.sampled_from(
    ["\x1c", "A\x1c", "Σ", "İ", "\u0345", "\u0378", "é", "Ａ", "\u200b", "\ufeff", " ", "", "ǅ", "ß", "١٢٣"]
)


Cell = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]


def texts(good: list[str], bad: list[str]) -> Cell:
    """(values the reference takes as they are, values it drops or that split Python and Rust)."""
    real = st.sampled_from(good + bad)
    mangled = st.builds(
        lambda a, b, c: a + b + c, st.sampled_from(["", " ", "\t", "\x1f", "É"]), real, HOSTILE
    )
    return st.one_of(st.sampled_from(good), st.none()), st.one_of(
        st.sampled_from(bad or good), real.map(str.upper), mangled, ASCII, HOSTILE
    )


DIGEST = sha256(b"john@example.com").hexdigest()  # hashed upstream: sent as it is (lowercased)
COLUMNS: dict[str, tuple[pa.DataType, Cell]] = {
    "name": (pa.string(), texts(["Purchase", "Product Added", "add_to_cart", "Lead"], ["purchase ", "x"])),
    "eid": (pa.string(), texts(["order-1", "A7"], ["  "])),
    "source": (pa.string(), texts(["website", "email", "physical_store"], ["WEBSITE", "app", "nope"])),
    "url": (pa.string(), texts(
        ["https://a.example/thanks", "HTTPS://Shop.example:8443/p/1?utm=x&b=2#top", "http://a.example?x=1", "https://a.example"],
        ["https://shop.example/p?fbclid=abc", "", "//no-scheme/x", "https://[::1]/x", "shop.example/x?q",
         "https:///x", "mailto:a@b.example", "https://a.example/p q?x", "https://a.example/é?x", "1https://a.example"],
    )),
    "optout": (pa.string(), texts(["true", "0", "Yes", " n "], ["maybe", "2", "TRUE\u0130"])),
    "dpo": (pa.string(), texts(["LDU", "LDU, X", " , "], ['["LDU"]', "[bad"])),
    "consent": (pa.string(), texts(["4", "1,4", " 4 ,2", "analytics, 4"], ["1,2", '["4"]', " [4]", "", "4x", "14"])),
    "country": (pa.string(), texts(["US", "us", "United States", "CA", "DE"], ["Narnia", "U.S.A."])),
    "em": (pa.string(), texts(["John_Smith@Gmail.com ", "a@b.co", DIGEST, f" {DIGEST.upper()} "], ["not-an-email", "a b@c.de", "x@y"])),
    "ph": (pa.string(), texts(["(650) 555-1212", "+1 650 555 1212", "1-800-555-0199"],
                              ["6505551212", "+44 20 7946 0958", "555-0100", "0016505551212", "650 555 1212 x12"])),
    "fn": (pa.string(), texts(["John", "Mary-Ann", "O'Brien", DIGEST], ["123", DIGEST[:63]])),
    "ln": (pa.string(), texts(["Smith", "van der Berg"], [])),
    "ge": (pa.string(), texts(["m", "Female", "woman"], ["x"])),
    "db": (pa.string(), texts(["1990-12-31"], ["1990-02-30", "12/31/1990", "1850-01-01", "2099-01-01"])),
    "ct": (pa.string(), texts(["New York", "San Francisco"], [])),
    "st": (pa.string(), texts(["California", "CA", "Calif.", "New York", "Ontario"], ["Bayern"])),
    "zp": (pa.string(), texts(["10001", "94035-1234", "2134"], ["SW1A 1AA", "12345-6789-1234"])),
    "ext": (pa.string(), texts(["C-17", "cust 9"], [])),
    "ip": (pa.string(), texts(["203.0.113.7"], ["2001:db8::1", "999.1.1.1", "01.2.3.4"])),
    "ua": (pa.string(), texts(["Mozilla/5.0 (Macintosh)", "curl/8"], [])),
    "fbp": (pa.string(), texts(["fb.1.1700000000000.1234567890"], [])),
    "lead": (pa.string(), texts(["123456789012345"], ["abc"])),
    "currency": (pa.string(), texts(["usd", "EUR"], ["XYZ", "us"])),
    "ids": (pa.string(), texts(["a,b", " a , ,b ", "sku-1"], ["[1,2]"])),
    "ctype": (pa.string(), texts(["product", "Product_Group"], ["other"])),
    "tier": (pa.string(), texts(["gold", "silver"], [])),
    "items": (pa.string(), texts(
        ['[{"id": "sku-1", "quantity": 1, "price": 9.99}]', '[{"id": 7, "quantity": 2.0, "item_price": 3}]',
         ' [{"id": "a", "item_price": 0.1, "delivery_category": "Curbside"}, {"id": "b"}] ', "[]"],
        ['[{"id": null}]', '[{"id": 1.5}]', '[{"id": "x", "quantity": "3"}]', '{"id": "x"}', "[1]",
         '[{"id": "x", "item_price": 1e400}]', '[{"id": "x", "quantity": true}]', "sku-1,sku-2",
         '[{"id": "x", "delivery_category": "moon"}]', '[{"id": "\\ud800"}]'],
    )),
}  # fmt: skip
MOMENTS = st.integers(min_value=int(NOW) - 9 * 86_400, max_value=int(NOW) + 120)
TYPED: dict[str, list[tuple[pa.DataType, st.SearchStrategy[Any]]]] = {
    "ts": [
        (pa.timestamp("us"), MOMENTS.map(lambda s: dt.datetime(1970, 1, 1) + dt.timedelta(seconds=s, microseconds=7))),
        (pa.timestamp("us", tz="UTC"), MOMENTS.map(lambda s: dt.datetime.fromtimestamp(s, dt.UTC))),
        (pa.int64(), st.one_of(MOMENTS, MOMENTS.map(lambda s: s * 1000 + 999))),
        (pa.float64(), MOMENTS.map(lambda s: s + 0.75)),
        (pa.string(), st.one_of(MOMENTS.map(str), MOMENTS.map(lambda s: f" {s}.5 "), st.just("2026-11-19T10:00:00"))),
        (pa.date32(), st.dates(min_value=dt.date(2026, 11, 12), max_value=dt.date(2026, 11, 21))),
    ],
    "amount": [
        (pa.float64(), st.floats(min_value=0, max_value=1e6)),
        (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
        (pa.decimal128(12, 2), st.decimals(min_value=-(10**9), max_value=10**9, places=2)),
        (pa.int64(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        (pa.string(), st.sampled_from(["12.50", "abc", " 7 "])),
    ],
    "n": [
        (pa.int32(), st.integers(min_value=0, max_value=100)),
        (pa.int32(), st.integers(min_value=-(2**31), max_value=2**31 - 1)),
        (pa.float64(), st.floats()),
        (pa.bool_(), st.booleans()),
    ],
    "zp_int": [(pa.int64(), st.integers(min_value=-5, max_value=10**10))],
}  # fmt: skip


@st.composite
def batches(draw: st.DrawFn) -> pa.RecordBatch:
    size = draw(st.integers(min_value=1, max_value=12))
    id_type = draw(st.sampled_from([pa.int64(), pa.string()]))
    ids = list(range(size)) if id_type == pa.int64() else [f"row-{i}" for i in range(size)]
    if draw(st.integers(0, 9)) == 0:
        ids[0] = None
    arrays, names = [pa.array(ids, id_type)], ["id"]
    mess = draw(st.sampled_from([0, 5, 30, 100]))  # percent of cells drawn from the bad values
    for name, (kind, (good, bad)) in COLUMNS.items():
        cells = [draw(bad if draw(st.integers(0, 99)) < mess else good) for _ in range(size)]
        arrays.append(pa.array(cells, kind))
        names.append(name)
    for name, choices in TYPED.items():
        kind, values = (
            choices[0] if mess == 0 else draw(st.sampled_from(choices))
        )  # the first: the usual type
        cells = draw(
            st.lists(values if mess == 0 else st.one_of(st.none(), values), min_size=size, max_size=size)
        )
        arrays.append(pa.array(cells, kind))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


SETTINGS = st.fixed_dictionaries(
    {
        "action_source": st.sampled_from([None, "website", "email"]),
        "default_phone_region": st.sampled_from([None, "US", "GB"]),
        "strong_match_key_required": st.booleans(),
        "hash_external_id": st.booleans(),
        "timezone": st.sampled_from(["UTC", "UTC", "Europe/Paris"]),
        "fbc_from_fbclid": st.booleans(),
        "url_redaction": st.sampled_from(["none", "query", "path"]),
        "hashing_required": st.sampled_from([True, True, False]),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=batches(), options=SETTINGS, zip_from_int=st.booleans(), consent=st.booleans(), typed=st.booleans()
)
def test_the_core_writes_what_the_reference_writes(
    batch: pa.RecordBatch, options: dict[str, Any], zip_from_int: bool, consent: bool, typed: bool
) -> None:
    mapping = {**BASE, "customer_info": dict(BASE["customer_info"])}
    if typed:  # the typed server fields, over text, numbers of every type and free text
        mapping["server_event"] = {
            **BASE["server_event"], "opt_out": "optout", "data_processing_options": "dpo",
            "data_processing_options_country": "n", "data_processing_options_state": {"value": 1000},
            "customer_segmentation": "tier",
        }  # fmt: skip
    if zip_from_int:
        mapping["customer_info"]["zp"] = "zp_int"
    if consent:
        options = {**options, "consent_column": "consent", "consent_category": "4"}
    both_paths(mapping, batch, **options)


def one_row(**columns: tuple[pa.DataType, Any]) -> pa.RecordBatch:
    names = ["id", *columns]
    arrays = [pa.array([1], pa.int64())] + [pa.array([value], kind) for kind, value in columns.values()]
    return pa.RecordBatch.from_arrays(arrays, names=names)


GOOD = {
    "name": (pa.string(), "Purchase"),
    "ts": (pa.timestamp("us"), dt.datetime(2026, 11, 20, 10, 0)),
    "em": (pa.string(), "John_Smith@Gmail.com "),
    "amount": (pa.decimal128(10, 2), Decimal("129.90")),
    "currency": (pa.string(), "usd"),
}
SMALL = {
    "server_event": {"event_name": "name", "event_time": "ts", "action_source": {"value": "email"}},
    "customer_info": {"em": "em", "fn": "fn"},
    "custom_data": {"value": "amount", "currency": "currency"},
    "custom_properties": {"extra": "extra"},
}


@pytest.mark.parametrize(
    "fn",
    ["\x1c", "A\x1c", "Σ", "İ", "\u0345", "\u0378", "ǅ", "John\u200b", "\ufeffJohn", "Ａnn", "Jo hn"],
)
def test_characters_where_python_and_rust_differ(fn: str) -> None:
    """Python and Rust disagree on these (case, strip, letters): the core must never guess."""
    _, (outcome,) = both_paths(SMALL, one_row(**GOOD, fn=(pa.string(), fn), extra=(pa.int64(), 1)))
    assert outcome.event is not None  # a good event either way: fn is dropped or kept, never wrong


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (pa.float64(), 1e16), (pa.float64(), 1e-7), (pa.float64(), 6.103515625e-05), (pa.float64(), 1e-5), (pa.float64(), 0.1 + 0.2), (pa.float64(), -0.0),
        (pa.float64(), float("nan")), (pa.float64(), float("inf")), (pa.float32(), 0.1),
        (pa.decimal128(20, 4), Decimal("-12.5000")), (pa.uint64(), 2**64 - 1), (pa.int8(), -3),
        (pa.bool_(), False), (pa.date32(), dt.date(999, 1, 2)), (pa.string(), 'quote " \\ \n \x00 é'),
        (pa.large_string(), "large"), (pa.string_view(), "view"), (pa.null(), None),
    ],
)  # fmt: skip
def test_property_values_of_every_type(kind: pa.DataType, value: Any) -> None:
    written, _ = both_paths(SMALL, one_row(**GOOD, fn=(pa.string(), "Ann"), extra=(kind, value)))
    assert written == 1  # each of these is the core's to write


def test_an_ordinary_row_is_written_by_the_core() -> None:
    """Guards the guard: a core that handed every row back would pass the comparisons above."""
    written, _ = both_paths(SMALL, one_row(**GOOD, fn=(pa.string(), "Ann"), extra=(pa.string(), "x")))
    assert written == 1


CONTEXT = pa.struct(
    [
        ("email", pa.string()),
        ("page", pa.struct([("url", pa.string()), ("ids", pa.int64())])),
        ("tags", pa.list_(pa.string())),
    ]
)
NESTED = {
    "server_event": {"event_name": "name", "event_time": "ts", "action_source": {"value": "website"},
                     "event_source_url": "context.page.url"},
    "customer_info": {"em": "context.email", "client_user_agent": {"value": "curl/8"}},
    "custom_properties": {"page_ids": "context.page.ids", "first_tag": "context.tags.0"},
}  # fmt: skip
CONTEXTS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "email": st.one_of(st.none(), st.sampled_from(["Ann@Example.com", " b@c.io ", "nope", ""])),
            "page": st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {
                        "url": st.one_of(
                            st.none(), st.sampled_from(["https://a.example/x", " ", '{"a": 1}'])
                        ),
                        "ids": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                    }
                ),
            ),
            "tags": st.one_of(st.none(), st.lists(st.sampled_from(["a", "b"]), max_size=2)),
        }
    ),
)


@settings(max_examples=100, deadline=None)
@given(contexts=st.lists(CONTEXTS, min_size=1, max_size=8))
def test_paths_through_struct_columns(contexts: list[Any]) -> None:
    """Fields of a STRUCT column (DuckDB reads nested JSON into these): the core reads paths of
    field names, Python walks the dicts; a path through a list stays the reference's."""
    count = len(contexts)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(range(count), pa.int64()),
            pa.array(["Lead"] * count),
            pa.array([dt.datetime(2026, 11, 20, 10, 0)] * count, pa.timestamp("us")),
            pa.array(contexts, CONTEXT),
        ],
        names=["id", "name", "ts", "context"],
    )
    both_paths({**NESTED, "custom_properties": {"page_ids": "context.page.ids"}}, batch)
    # through a list: the run reads rows the reference's way, and a batch handed over anyway
    # comes back whole
    assert "'context.tags.0'" in str(native.readable(batch.schema, _plan(NESTED, batch)))
    assert both_paths(NESTED, batch)[0] == 0


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["a@b.co", " Ann@Example.com ", "", " ", "x=1; _fbp=fb.1.2.3", '{"deep": true}', "[1, 2]"]),
    st.text(max_size=4),
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["user", "email", "id", "items", "cookie", "raw", "deep", "0"]), inner, max_size=4
        ),
    ),
    max_leaves=10,
)
DOCS = st.one_of(
    st.none(),
    JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)),
    JSON_VALUES.map(json.dumps),  # non-ASCII as \\u escapes
    st.fixed_dictionaries(
        {"user": st.fixed_dictionaries({"email": JSON_LEAVES, "id": JSON_LEAVES}),
         "items": st.lists(st.fixed_dictionaries({"id": JSON_LEAVES}), max_size=3),
         "cookie": st.sampled_from(["_fbp=fb.1.1700000000000.5; b=2", "_fbp = x ; _fbp=y", "none", ""]),
         "raw": st.sampled_from(['{"deep": 7}', " [1]", "{bad"])}
    ).map(lambda v: " " + json.dumps(v, ensure_ascii=False)),
    st.sampled_from(['{"user": {"email": "\\ud800"}}', '{"items": [-0]}', '{"items": -0.0}', "{broken", "a=1", "[]"]),
)  # fmt: skip
JSON_MAPPING = {
    "server_event": {"event_name": {"value": "Lead"}, "event_time": {"value": int(NOW) - 60},
                     "action_source": {"value": "email"}},
    "customer_info": {"em": "doc.user.email", "external_id": "doc.user.id", "fbp": "doc.cookie._fbp"},
    "custom_properties": {"first": "doc.items.0.id", "n": "doc.items.length", "deep": "doc.raw.deep",
                          "past_length": "doc.items.length.x", "user": "doc.user"},
}  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(DOCS, min_size=1, max_size=8))
def test_paths_into_json_text(docs: list[str | None]) -> None:
    """Event tables keep nested values as JSON text: the core walks each row's text as
    `sources.walk` does (objects, lists, `length`, JSON inside strings, cookie text)."""
    batch = pa.RecordBatch.from_arrays(
        [pa.array(range(len(docs)), pa.int64()), pa.array(docs, pa.string())], names=["id", "doc"]
    )
    both_paths(JSON_MAPPING, batch)
    plain = {**JSON_MAPPING, "custom_properties": {"first": "doc.items.0.id", "deep": "doc.raw.deep"}}
    both_paths(plain, batch)
    forms = {
        **plain,
        "server_event": {
            **JSON_MAPPING["server_event"],
            "action_source": {"lookup": "doc.user.id", "values": {"1": "website", "True": "app", "7": "physical_store"},
                              "default": "email"},
        },
        "customer_info": {
            "em": {"first_of": ["doc.user.email", "doc.items.0.id", {"value": "fallback@example.com"}]},
            "fbp": {"first_of": ["doc.cookie._fbp", "doc.raw.deep"]},
            "external_id": {"all_of": ["doc.user.id", "doc.items.0.id", "doc.user.email", {"value": " "}]},
        },
    }  # fmt: skip
    both_paths(forms, batch)


def test_a_json_path_is_written_by_the_core() -> None:
    doc = (
        '{"user": {"email": "Ann@Example.com", "id": 7}, "items": [{"id": "sku"}], "cookie": "_fbp=fb.1.2.3"}'
    )
    batch = pa.RecordBatch.from_arrays([pa.array([1], pa.int64()), pa.array([doc])], names=["id", "doc"])
    mapping = {**JSON_MAPPING, "custom_properties": {"first": "doc.items.0.id", "n": "doc.items.length"}}
    assert native.readable(batch.schema, _plan(mapping, batch)) is None
    written, outcomes = both_paths(mapping, batch)
    assert written == 1
    assert outcomes[0].event["custom_data"] == {"first": "sku", "n": 1}
    forms = {
        **mapping,
        "server_event": {**mapping["server_event"],
                         "action_source": {"lookup": "doc.user.id", "values": {"7": "email"}, "default": "app"}},
        "customer_info": {"em": {"first_of": ["doc.user.missing", {"value": " "}, "doc.user.email"]},
                          "external_id": {"all_of": ["doc.user.id", "doc.items.0.id"]}},
    }  # fmt: skip
    written, outcomes = both_paths(forms, batch)
    assert written == 1, "first_of, lookup and all_of are the core's too"
    assert len(outcomes[0].event["user_data"]["external_id"]) == 2


def _plan(mapping: dict[str, Any], batch: pa.RecordBatch) -> native.NativePlan:
    spec = MappingSpec.model_validate(mapping)
    options = MapperOptions(pipeline="differential", primary_key=("id",))
    mapper = compile_mapping(spec, options, batch.schema.names, clock=lambda: NOW)
    return native.compile_plan(spec, options, batch.schema.names, mapper)


def test_a_struct_path_is_written_by_the_core() -> None:
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([1], pa.int64()),
            pa.array(["Lead"]),
            pa.array([dt.datetime(2026, 11, 20, 10, 0)], pa.timestamp("us")),
            pa.array(
                [{"email": "a@b.co", "page": {"url": "https://a.example/x", "ids": 7}, "tags": []}], CONTEXT
            ),
        ],
        names=["id", "name", "ts", "context"],
    )
    plan = _plan({**NESTED, "custom_properties": {"page_ids": "context.page.ids"}}, batch)
    assert native.readable(batch.schema, plan) is None
    written, _ = both_paths({**NESTED, "custom_properties": {"page_ids": "context.page.ids"}}, batch)
    assert written == 1


# --- the shared vector files ---------------------------------------------------------------------

VECTOR_MAPPING = {
    "server_event": {"event_name": {"value": "Lead"}, "event_time": {"value": int(NOW) - 60},
                     "action_source": {"value": "email"}},
    # a strong key, so that each vector's event passes the matching floor whatever its value does
    "customer_info": {"fbp": {"value": "fb.1.1700000000000.1"}},
}  # fmt: skip


def test_the_vectors_through_the_core() -> None:
    """Every vector through both paths (equal bytes), and its expectation holds; most are the core's."""
    written = 0
    for vector in VECTORS:
        written += vector_row(vector)
    assert written > len(VECTORS) // 3, f"the core wrote only {written} of {len(VECTORS)} vectors"


def vector_row(vector: Vector) -> int:
    customer_info = {**VECTOR_MAPPING["customer_info"], vector.key: "value"}
    if vector.key != "country":
        customer_info = {"country": "country", **customer_info}
    mapping = {**VECTOR_MAPPING, "customer_info": customer_info}
    value = vector.input
    kind = pa.int64() if isinstance(value, int) and not isinstance(value, bool) else pa.string()
    batch = one_row(
        value=(kind, value if kind == pa.int64() else str(value)), country=(pa.string(), vector.country)
    )
    written, (outcome,) = both_paths(
        mapping, batch, default_phone_region=vector.region, date_order=vector.date_order
    )
    assert outcome.event is not None, vector
    dropped = [p for p in outcome.problems if p.field == f"customer_info.{vector.key}"]
    check(vector, outcome.event["user_data"].get(vector.key), dropped[0].rule if dropped else None)
    return written


def test_vector_check_is_live() -> None:
    """`check` itself fails on a wrong digest (so the loop above can fail)."""
    vector = Vector("em", 0, "a@b.co", None, None, None, "a@b.co", None)
    check(vector, sha256(b"a@b.co").hexdigest(), None)
    with pytest.raises(AssertionError):
        check(vector, sha256(b"x").hexdigest(), None)


@example(text="\x1c")
@example(text="İstanbul")
@given(text=st.text(max_size=12))
def test_any_city_text(text: str) -> None:
    both_paths(
        SMALL | {"customer_info": {"em": "em", "ct": "fn"}},
        one_row(**GOOD, fn=(pa.string(), text), extra=(pa.null(), None)),
    )


# --- the quick start, both ways ------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def quick_start(tmp: Any, engine: str | None) -> tuple[bytes, str]:
    """The README's quick start (`--output` added) and `--version`, on this installation."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != native.ENGINE_VARIABLE}
    if engine:
        env[native.ENGINE_VARIABLE] = engine
    return run_quick_start(tmp, engine or "native", env, [sys.executable, "-m", "capi_sync"])


def run_quick_start(tmp: Any, name: str, env: dict[str, str], cli: list[str]) -> tuple[bytes, str]:
    import subprocess

    env = {**env, "CAPI_SYNC_STATE": f"sqlite:///{tmp / f'state-{name}.db'}"}
    output = tmp / f"{name}.jsonl"
    run = subprocess.run(
        [*cli, "run", "purchases", "--dry-run", "--output", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    assert run.returncode == 0, run.stderr.decode()
    version = subprocess.run([*cli, "--version"], env=env, capture_output=True, text=True, check=True)
    return output.read_bytes(), version.stdout


def test_the_quick_start_writes_the_same_events_on_the_pure_python_path(tmp_path: Any) -> None:
    native_events, native_version = quick_start(tmp_path, None)
    pure_events, pure_version = quick_start(tmp_path, "python")
    assert native_events == pure_events
    assert native_events.count(b"\n") > 3
    assert "native core" in native_version
    assert "release build" in native_version
    assert "pure Python" in pure_version


def test_the_cores_unicode_tables_are_this_pythons() -> None:
    """The core reads text with tables generated from CPython's unicodedata; stale ones would
    lowercase or strip differently, so they must be what the script writes today."""
    import importlib.util
    import unicodedata

    from capi_sync import _core

    assert _core.unicode_version == unicodedata.unidata_version
    script = REPO / "core" / "scripts" / "generate_unicode.py"
    spec = importlib.util.spec_from_file_location("generate_unicode", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate() == (REPO / "core" / "src" / "unicode_tables.rs").read_text(encoding="utf-8")


@settings(max_examples=300, deadline=None)
@example(value=6.103515625e-05)
@example(value=8796093022208.0625)  # a tie between two shortest forms: Python keeps the even digit
@example(value=1e-5)
@example(value=9.999999999999998e15)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_any_float_prints_as_orjson_prints_it(value: float) -> None:
    """Found by hypothesis: orjson writes 1e-5 as 0.00001, where Python's repr says 1e-05."""
    written, _ = both_paths(SMALL, one_row(**GOOD, fn=(pa.string(), "Ann"), extra=(pa.float64(), value)))
    assert written == 1


def test_without_cargo_the_install_is_pure_python_and_the_quick_start_works(tmp_path: Any) -> None:
    """A machine without a Rust toolchain: the wheel builds without the core (with a warning), and
    the quick start writes the same events from it as the native core does here."""
    import os
    import shutil
    import subprocess
    import sys

    cargo = shutil.which("cargo")
    hidden = {os.path.dirname(cargo)} if cargo else set()
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p not in hidden)
    env = {k: v for k, v in os.environ.items() if k not in ("CAPI_SYNC_REQUIRE_CORE", native.ENGINE_VARIABLE)}
    env |= {"PATH": path, "PIP_ROOT_USER_ACTION": "ignore", "CARGO": "", "RUSTUP_TOOLCHAIN": ""}
    assert shutil.which("cargo", path=path) is None
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(REPO)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("capi_sync-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "capi_sync/_core.pyi" in names
    assert not [
        name for name in names if "_core" in name and name.endswith((".so", ".pyd"))
    ]  # no core inside
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)], env=env, check=True
    )
    env["PYTHONPATH"] = str(site)
    probe = (
        WITHOUT_EDITABLE
        + "import capi_sync, capi_sync.native as n; print(capi_sync.__file__); print(n.engine())"
    )
    shown = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert str(site) in shown.stdout
    assert "pure Python (the native core is not built)" in shown.stdout
    launch = WITHOUT_EDITABLE + "import runpy; runpy.run_module('capi_sync', run_name='__main__')"
    pure_events, version = run_quick_start(tmp_path, "pure-install", env, [sys.executable, "-c", launch])
    native_events, _ = quick_start(tmp_path, None)
    assert "pure Python" in version
    assert pure_events == native_events


# This checkout's editable install maps `capi_sync` (and its built core) by a finder on sys.meta_path,
# ahead of PYTHONPATH: the wheel under test is imported only with that finder out of the way.
WITHOUT_EDITABLE = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
    " if not getattr(f, '__module__', '').startswith('__editable__')]; "
)


def test_a_duckdb_struct_column_reaches_the_core(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], core_writes: list[int]
) -> None:
    """An event table read from nested JSON: DuckDB holds it as STRUCTs, and the run maps paths
    into them in the core, with the reference's events."""
    import duckdb

    from tests.conftest import PIPELINES, TOKEN, dry_run_both_engines, make_orders, write_pipelines

    make_orders(tmp_path / "shop.duckdb", 300)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute(
            "create view events as select order_id, created_at, updated_at, amount, currency,"
            " {'email': email, 'page': {'url': page_url, 'agent': user_agent}} as context from orders"
        )
    mapping = """
    mapping:
      server_event: {{event_name: {{value: Purchase}}, event_time: created_at,
                     event_source_url: context.page.url}}
      customer_info: {{em: context.email, client_user_agent: context.page.agent}}
      custom_data: {{value: amount, currency: currency}}
"""
    text = PIPELINES.replace("query: select * from orders", "query: select * from events")
    write_pipelines(tmp_path, text=text[: text.index("    mapping:")] + mapping.lstrip("\n"))
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    runs = dry_run_both_engines(tmp_path, monkeypatch, capsys)
    assert sum(core_writes) == 300, "the core wrote every event"
    events = runs["native"][0]
    assert events == runs["python"][0]
    assert events.count(b"\n") == 300
    assert b'"event_source_url":"https://shop.example.com/o/1"' in events
