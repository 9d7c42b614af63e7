"""Hash pushdown: the warehouse's SQL gives the bytes the Python path gives, and no plain PII leaves.

The Python mapper is the reference: the same rows are mapped with `pushdown: false` and `true` and
compared key by key. A pushed value may differ only by being dropped as `not_normalizable_in_warehouse`,
and only outside the documented domain (`pushdown.covers`).
"""

from __future__ import annotations

import datetime as dt
import random
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import orjson
import phonenumbers
import pytest

from capi_sync.config import load_config as load_project
from capi_sync.connectors import open_source
from capi_sync.errors import ConfigError
from capi_sync.mappings import pushdown
from capi_sync.preparing import prepare
from tests.conftest import TOKEN, cli
from tests.fake_graph import FakeGraph
from tests.test_warehouses import PIPELINES as WAREHOUSE_PIPELINES
from tests.test_warehouses import project, rows, warehouse  # noqa: F401 (fixtures)

KEYS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
EMAILS = [" User1@Example.COM ", "josé@exämple.com", "bad@", "a@b", "a@b.c", "a b@c.d", "x@@y.z", ".@..",
          "a@.b.", "a@b..", "A" * 64, "ab" * 32, "", "   ", None, "ÉLODIE@MAIL.FR", "İstanbul@x.com",
          "tab\t@x.com", "a@b.c\u00a0", "x@y..z", "x@.y.z", "@a.b", "ÅSA@NORD.SE"]  # fmt: skip
PHONES = ["(650) 555-0123", "+1 415 555 0001", "650.555.0001", "6505550001", "16505550001",
          "+44 20 7946 0958", "555-0123", "1-800-555-0199", "(212) 555-0100", "abc", "+1 (212) 555-0100 x5",
          "001 212 555 0100", "0016505550001", "911", "+1 1415 555 0001", "+1 555", "268 464 1234",
          "(441) 234-5678", "+15555555555", "0", "+", "２１２５５５０１００", "(684) 733-1234", "+1 684 733 1234"]  # fmt: skip
NAMES = ["Élodie", "JOHN", " Mary-Ann ", "José", "Smith", "O'Brien", "Müller", "van der Berg", "e\u0301lodie",
         "Ørsted", "İlker", "Straße", "123", "ǅemal", "ŁUKASZ", "Ÿves", "×÷", "Zoë", "ǈ", "Ａｎｎａ"]  # fmt: skip
GENDERS = ["Male", "female", "M", "F", "x", " m ", "WOMAN", "Man", "", "Ｍ"]
DATES = ["1990-01-02", "19900102", "1990-02-30", "1899-12-31", "2999-01-01", "01/02/1990", "", "2000-02-29",
         "1900-02-29", "2024-02-29", "19901301", "1990-1-2", "2020-12-31 ", "١٩٩٠-01-02"]  # fmt: skip
CITIES = ["San Francisco", "New York", "Saint-Étienne", "Montréal", "12", "Zürich", "İzmir", "Kraków"]
STATES = ["California", "CA", "ca", "New York", "Baden-Württemberg", "Bayern", "Île-de-France", "Texas", "ny",
          "Ontario", "Québec", "—", "Tx.", "Queensland", "Nouvelle-Aquitaine"]  # fmt: skip
ZIPS = ["94035-1234", "940351234", "SW1A 1AA", "12", "a_b", "94035", " 94 035 ", "é1", "", "-", "75008"]
COUNTRIES = ["US", "usa", "United States", "U.S.", "gb", "UK", "Deutschland", "Côte d'Ivoire", "840", "zz",
             "España", "de", "Germany", "CA", "canada", "France", None, "", "İ", "united states of america",
             "Bolivia, Plurinational State of", "Åland Islands", "fr"]  # fmt: skip
COLUMNS = {"em": "email", "ph": "phone", "fn": "first_name", "ln": "last_name", "ge": "gender", "db": "birth_date",
           "ct": "city", "st": "state", "zp": "zip", "country": "country", "external_id": "customer_id"}  # fmt: skip


def messy_rows(count: int, seed: int) -> list[tuple[Any, ...]]:
    pick = random.Random(seed)
    phones = PHONES + [
        "".join(pick.choice("0123456789") for _ in range(pick.choice((10, 11)))) for _ in range(200)
    ]
    return [
        (i, pick.choice(EMAILS), pick.choice(phones), pick.choice(NAMES), pick.choice(NAMES),
         pick.choice(GENDERS), pick.choice(DATES), pick.choice(CITIES), pick.choice(STATES), pick.choice(ZIPS),
         pick.choice(COUNTRIES), pick.choice(NAMES + EMAILS))
        for i in range(count)
    ]  # fmt: skip


def project_file(
    tmp_path: Path,
    warehouse_yaml: str,
    *,
    pushdown_on: bool,
    extra: str = "",
    columns: dict[str, str] = COLUMNS,
    cursor: str = "",
) -> Path:
    customer_info = ", ".join(f"{key}: {column}" for key, column in columns.items())
    path = tmp_path / f"pipelines_{pushdown_on}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        warehouses:
          wh: {warehouse_yaml}
        destinations:
          meta: {{pixel_id: "1", access_token: tok}}
        pipelines:
          people:
            warehouse: wh
            destination: meta
            query: select * from people
            primary_key: id
            {f"cursor: {cursor}" if cursor else ""}
            pushdown: {str(pushdown_on).lower()}
            settings: {{action_source: website, default_phone_region: US}}
            mapping:
              server_event: {{event_name: {{value: Purchase}}, event_time: {{value: 1700000000}}}}
              customer_info: {{{customer_info}}}
              {extra}
        """)
    )
    return path


def mapped_users(path: Path) -> tuple[dict[int, tuple[dict[str, Any], dict[str, str]]], list[str]]:
    """Per row id: (user_data, {key: dropped rule}), and the columns that left the warehouse."""
    project_config = load_project(path)
    pipeline = project_config.pipeline("people")
    out = {}
    with open_source(project_config.warehouse_of(pipeline)) as source:
        prepared = prepare(pipeline, source)
        from capi_sync.connectors.base import Window

        for chunk in prepared.stream(source, Window(order_by=("id",)), 1000):
            for row in chunk:
                dropped: list[Any] = []
                user = prepared.mapper._user_data(row, [], dropped)
                rules = {problem.field.split(".", 1)[1]: problem.rule for problem in dropped}
                out[int(row[prepared.index("id")])] = (user, rules)
    return out, prepared.columns


def assert_same_as_python(
    rows: list[tuple[Any, ...]], python: dict, pushed: dict, keys: tuple[str, ...] = KEYS
) -> int:
    """Every key of every row: identical, or dropped as out of domain where `pushdown.covers` says
    the SQL does not cover the value."""
    checked = 0
    for row in rows:
        raw = dict(zip(("id", *COLUMNS), row, strict=True))
        user_py, rules_py = python[row[0]]
        user_pd, rules_pd = pushed[row[0]]
        country_raw = raw["country"] if "country" in keys else None
        for key in keys:
            if rules_pd.get(key) == pushdown.OUT_OF_DOMAIN:
                assert not pushdown.covers(key, raw[key], country_raw, "US"), (
                    row[0],
                    key,
                    raw[key],
                    country_raw,
                )
                continue
            assert user_pd.get(key) == user_py.get(key), (row[0], key, raw[key], country_raw)
            assert rules_pd.get(key) == rules_py.get(key), (row[0], key, raw[key], country_raw)
            checked += 1
    return checked


@pytest.fixture
def people_duckdb(tmp_path: Path) -> tuple[str, list[tuple[Any, ...]]]:
    path = tmp_path / "people.duckdb"
    data = messy_rows(4000, seed=7)
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table people (id integer, "
            + ", ".join(f"{column} varchar" for column in COLUMNS.values())
            + ")"
        )
        con.executemany(f"insert into people values ({', '.join('?' * 12)})", data)
    return f"{{type: duckdb, path: {path}}}", data


def test_duckdb_pushdown_is_byte_identical_to_python(tmp_path: Path, people_duckdb: tuple[str, list]) -> None:
    yaml, data = people_duckdb
    python, _ = mapped_users(project_file(tmp_path, yaml, pushdown_on=False))
    pushed, columns = mapped_users(project_file(tmp_path, yaml, pushdown_on=True))
    checked = assert_same_as_python(data, python, pushed)
    # The domain covers most of this deliberately messy data (not: NFKC-folding digraphs like ǅ, decomposed
    # accents, fullwidth and dotted capital I letters, phones libphonenumber may read another way).
    assert checked > 0.78 * len(data) * len(KEYS)
    # The plain columns are not among those read: only digests, markers and the other columns.
    assert columns == ["id", *(pushdown.pushed_column(key) for key in pushdown.HASHED_USER_FIELDS)]


@pytest.mark.parametrize("left_out", ["country", "st"])
def test_duckdb_pushdown_without_a_lookup_key(
    tmp_path: Path, people_duckdb: tuple[str, list], left_out: str
) -> None:
    """The lookups join under the sort only for the keys mapped: a state without a country is read
    as a US state, as in Python, and a country without a state joins no state table."""
    yaml, data = people_duckdb
    columns = {key: column for key, column in COLUMNS.items() if key != left_out}
    keys = tuple(key for key in KEYS if key != left_out)
    python, _ = mapped_users(project_file(tmp_path, yaml, pushdown_on=False, columns=columns))
    pushed, _ = mapped_users(project_file(tmp_path, yaml, pushdown_on=True, columns=columns))
    assert assert_same_as_python(data, python, pushed, keys) > 0.7 * len(data) * len(keys)


def test_postgres_pushdown_is_byte_identical_to_python(tmp_path: Path, postgres_url: str) -> None:
    import sqlalchemy as sa

    data = messy_rows(1500, seed=11)
    engine = sa.create_engine(postgres_url)
    names = ["id", *COLUMNS.values()]
    with engine.begin() as conn:
        conn.execute(
            sa.text("create table people (id int, " + ", ".join(f"{c} text" for c in COLUMNS.values()) + ")")
        )
        conn.execute(
            sa.text(f"insert into people values ({', '.join(':' + n for n in names)})"),
            [dict(zip(names, row, strict=True)) for row in data],
        )
    engine.dispose()
    yaml = f"{{type: sqlalchemy, url: '{postgres_url}'}}"
    python, _ = mapped_users(project_file(tmp_path, yaml, pushdown_on=False))
    pushed, _ = mapped_users(project_file(tmp_path, yaml, pushdown_on=True))
    assert assert_same_as_python(data, python, pushed) > 0.78 * len(data) * len(KEYS)

    # PostgreSQL inlines subqueries: unfenced, each use of a phone's digits was a regex replace of
    # its own (about eighty per row). Fenced, it runs once, and the window still filters the table.
    config = load_project(project_file(tmp_path, yaml, pushdown_on=True))
    pipeline = config.pipeline("people")
    with open_source(config.warehouse_of(pipeline)) as source:
        query = prepare(pipeline, source).query
    windowed = f'select * from ({query}) as capi_src where "id" = 7 order by "id"'
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        plan = "\n".join(line for (line,) in conn.execute(sa.text("explain verbose " + windowed)))
    engine.dispose()
    assert plan.count("'[^0-9]'") <= 2, plan
    scans = plan.split("Seq Scan on public.people")
    assert len(scans) == 2, plan
    assert "Filter: (people.id = 7)" in scans[1].split("->")[0], "the window's filter reaches the table"


def test_typed_columns_integer_zip_phone_and_date_birthdays(tmp_path: Path) -> None:
    path = tmp_path / "typed.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table people as select i as id, 'x' || i || '@example.com' as email,"
            " [6505550123, 2125550100, 5551234, 16505550199][1 + i % 4]::bigint as phone,"
            " [94035, 501, 940351234, -7, 123456][1 + i % 5]::integer as zip,"
            " [date '1990-01-02', date '1850-05-05', date '2999-01-01', null][1 + i % 4] as birth_date,"
            " ['US', '840', 'gb', null][1 + i % 4] as country"
            " from range(40) t(i)"
        )
    extra = "custom_data: {}"
    typed = {key: COLUMNS[key] for key in ("em", "ph", "zp", "db", "country")}
    files = [
        project_file(tmp_path, f"{{type: duckdb, path: {path}}}", pushdown_on=on, extra=extra, columns=typed)
        for on in (False, True)
    ]
    python, _ = mapped_users(files[0])
    pushed, _ = mapped_users(files[1])
    for row_id, (user, rules) in python.items():
        user_pd, rules_pd = pushed[row_id]
        for key in ("em", "ph", "zp", "db", "country"):
            if rules_pd.get(key) == pushdown.OUT_OF_DOMAIN:
                # a negative integer zip; a 7-digit phone, in a row whose country is GB
                assert (key, row_id % 5) == ("zp", 3) or (key, row_id % 4) == ("ph", 2), (row_id, key)
                continue
            assert (user_pd.get(key), rules_pd.get(key)) == (user.get(key), rules.get(key)), (row_id, key)


def test_duckdb_lower_maps_every_domain_character_as_python_does() -> None:
    """Why the DuckDB dialect may use `lower` instead of the explicit translate table."""
    assert pushdown.DIALECT["duckdb"].lower_matches_python
    with duckdb.connect() as con:
        for char in pushdown.domain_chars():
            assert con.execute("select lower(?)", [char]).fetchone()[0] == char.lower(), char


def test_nanp_validity_sql_matches_phonenumbers() -> None:
    pick = random.Random(3)
    numbers = [f"{pick.randint(2, 9)}{pick.randint(0, 10**9 - 1):09d}" for _ in range(8000)]
    numbers += [f"{area}{pick.randint(2, 9)}{pick.randint(0, 10**6 - 1):06d}"
                for area in (268, 264, 684, 246, 441, 242, 767, 809, 829, 849, 473, 671, 876, 658, 869, 345, 758,
                             670, 664, 787, 939, 721, 649, 868, 784, 284, 340, 800, 900, 212, 416)
                for _ in range(40)]  # fmt: skip
    expected = [
        phonenumbers.is_valid_number(phonenumbers.PhoneNumber(country_code=1, national_number=int(n)))
        for n in numbers
    ]
    with duckdb.connect() as con:
        con.execute("create table n (i integer, v varchar)")
        con.executemany("insert into n values (?, ?)", list(enumerate(numbers)))
        sql = pushdown.nanp_valid(pushdown.DIALECT["duckdb"], "v")
        found = [valid for _, valid in con.execute(f"select i, {sql} from n order by i").fetchall()]
    assert found == expected
    assert 0.2 < sum(expected) / len(expected) < 0.95  # both outcomes are exercised


@pytest.mark.filterwarnings("ignore::UserWarning")  # fakesnow's note about Arrow copies
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_warehouse_sends_the_python_paths_bytes(
    warehouse: Any,  # noqa: F811 (fixture)
    graph: FakeGraph,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DuckDB, PostgreSQL, Snowflake (fakesnow) and BigQuery (fake endpoint): same events either way."""
    values = rows(1, 40)
    emails = [" User@Example.com ", "élodie@exämple.fr", "bad@", "İ@x.com", None, "ab" * 32]
    phones = ["(650) 555-0123", "+1 415 555 0001", "+44 20 7946 0958", "555", None, "(212) 555-0100"]
    countries = ["US", "usa", "Côte d'Ivoire", "zz", None, "gb"]
    values = [
        (row[0], emails[i % 6], phones[(i // 2) % 6], countries[(i // 3) % 6], *row[4:])
        for i, row in enumerate(values)
    ]
    warehouse.insert(values)
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    # The warehouse tests' pipeline, plus the same pipeline hashing in the warehouse.
    text = textwrap.dedent(WAREHOUSE_PIPELINES.format(warehouse=warehouse.yaml, graph_url=graph.url))
    text += "  hashed_in_warehouse:\n    <<: *pipeline\n    pushdown: true\n"
    path = tmp_path / "both.yaml"
    path.write_text(text)
    for name in ("purchases", "hashed_in_warehouse"):
        assert cli("run", name, "-f", str(path)) == 0
    by_pipeline: dict[str, dict[str, dict[str, Any]]] = {"plain": {}, "pd": {}}
    ids_seen: dict[str, list[str]] = {}
    for event in graph.accepted_events:
        url = event["event_source_url"]
        ids_seen.setdefault(url, []).append(event["event_id"])
        target = "plain" if url not in by_pipeline["plain"] else "pd"
        by_pipeline[target][url] = event["user_data"]
    assert len(by_pipeline["plain"]) == len(by_pipeline["pd"]) == 40
    outside = 0
    for url, user in by_pipeline["plain"].items():
        user_pd = by_pipeline["pd"][url]
        for key in ("em", "ph", "country", "client_ip_address"):
            if user_pd.get(key) != user.get(key):
                assert key in ("em", "ph"), (url, key)
                assert key not in user_pd, (url, key, user.get(key), user_pd.get(key))
                outside += 1
    assert 0 < outside < 40  # İ@x.com and +44 numbers are dropped; everything else matches
    assert orjson.dumps(graph.accepted_events).count(b"@") == 0  # no plain email reached Meta


def test_config_errors_name_the_field_and_rule(tmp_path: Path, people_duckdb: tuple[str, list]) -> None:
    yaml, _ = people_duckdb
    extra = "custom_properties: {contact: email}"
    path = project_file(tmp_path, yaml, pushdown_on=True, extra=extra)
    text = path.read_text().replace("ph: phone", "ph: phone.number")
    path.write_text(text)
    project_config = load_project(path)
    pipeline = project_config.pipeline("people")
    with open_source(project_config.warehouse_of(pipeline)) as source, pytest.raises(ConfigError) as caught:
        prepare(pipeline, source)
    message = "\n".join(caught.value.errors)
    assert "pipeline 'people': pushdown: mapping.customer_info.ph must name a column" in message
    assert (
        "column 'email' is hashed in the warehouse but mapping.custom_properties.contact also reads it"
        in message
    )


def test_pushdown_refuses_warehouses_without_a_dialect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "people.sqlite"
    import sqlite3

    with sqlite3.connect(database) as con:
        con.execute(f"create table people (id integer, {', '.join(COLUMNS.values())})")
    path = project_file(tmp_path, f"{{type: sqlalchemy, url: 'sqlite:///{database}'}}", pushdown_on=True)
    assert cli("validate", "-f", str(path)) != 0
    output = capsys.readouterr()
    assert "pushdown: supported on duckdb, postgres, snowflake, bigquery (this warehouse is sqlite)" in (
        output.out + output.err
    )


def test_render_shows_the_generated_sql(
    tmp_path: Path, people_duckdb: tuple[str, list], capsys: pytest.CaptureFixture[str]
) -> None:
    yaml, _ = people_duckdb
    path = project_file(tmp_path, yaml, pushdown_on=True)
    assert cli("render", "people", "-f", str(path)) == 0
    output = capsys.readouterr().out
    assert "sha256(" in output
    assert "capi_pd_em" in output
    assert output.count("'[^0-9]'") == 1, "a phone's digits are computed once per row, then reused"


def test_duckdb_hashes_after_the_sort_on_every_core_and_keeps_cursor_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sort carries plain columns; the digests are a SELECT over it, computed on more threads
    while rows stream. Rows still come in cursor order, and the next sort has the user's threads."""
    import capi_sync.connectors.duckdb as duckdb_source
    from capi_sync.connectors.base import Window

    monkeypatch.setattr(duckdb_source.os, "cpu_count", lambda: 3)
    path = tmp_path / "people.duckdb"
    count = 150_000  # more than a row group, so that DuckDB splits the work between its threads
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table people as select i as id,"
            " timestamp '2026-01-01' + to_seconds((i * 7919) % 50000) as updated_at,"
            " 'User' || i || '@Example.com' as email, ['California', 'Texas', 'Bayern', 'x'][i % 4 + 1] as state,"
            " ['us', 'de', 'France', null][i % 4 + 1] as country, '(650) 555-' || lpad((i % 10000)::varchar, 4, '0')"
            " as phone from range(?) r(i)",
            [count],
        )
    columns = {"em": "email", "st": "state", "country": "country", "ph": "phone"}
    config = load_project(
        project_file(
            tmp_path,
            f"{{type: duckdb, path: {path}}}",
            pushdown_on=True,
            columns=columns,
            cursor="updated_at",
        )
    )
    pipeline = config.pipeline("people")
    window = Window(order_by=("updated_at", "id"), cursor="updated_at")
    with open_source(config.warehouse_of(pipeline)) as source:
        prepared = prepare(pipeline, source)
        sql, _ = prepared.sql(source, window)
        sorted_part = sql[sql.index("select * from (") : sql.index(' order by "updated_at", "id"')]
        assert "sha256(" not in sorted_part, "the sort carries plain columns, not digests"
        assert "sha256(" in sql
        keys, threads_while_streaming = [], set()
        for chunk in prepared.stream(source, window, 5000):
            with source._connection.cursor() as other:
                threads_while_streaming.add(other.execute("select current_setting('threads')").fetchone()[0])
            cursor_at, id_at = prepared.index("updated_at"), prepared.index("id")
            keys += [(row[cursor_at], row[id_at]) for row in chunk]
        source.describe("select 1")
        threads_after = source._connection.execute("select current_setting('threads')").fetchone()[0]
    assert len(keys) == count
    assert keys == sorted(keys)
    assert threads_while_streaming == {3}
    assert threads_after == 1


_ = dt
