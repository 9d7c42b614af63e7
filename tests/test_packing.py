"""DuckDB rows read as one JSON text each come back as the very values the driver returns."""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from capi_sync.config import DuckDBWarehouse
from capi_sync.connectors.base import Window
from capi_sync.connectors.duckdb import DuckDBSource
from capi_sync.connectors.packing import Packing
from tests.conftest import TOKEN, cli, make_orders, write_pipelines

# One column per type, with the values where a text round trip could go wrong. `k` orders the rows.
COLUMNS = {
    "s": ("VARCHAR", ["plain", "", 'quote " back \\ slash', "nl\n tab\t ctl\x01 nul\x00", "😀 é ß İ", "null"]),
    "b": ("BOOLEAN", [True, False]),
    "i8": ("TINYINT", [-128, 127, 0]),
    "i16": ("SMALLINT", [-32768, 32767]),
    "i32": ("INTEGER", [-(2**31), 2**31 - 1]),
    "i64": ("BIGINT", [-(2**63), 2**63 - 1, 0]),
    "u8": ("UTINYINT", [255]),
    "u64": ("UBIGINT", [2**64 - 1, 0]),
    "d2": ("DECIMAL(10,2)", ["10.00", "-0.50", "0.00", "12345678.90"]),
    "d38": ("DECIMAL(38,10)", ["1234567890123456789012345678.0123456789", "-0.0000000001"]),
    "f64": ("DOUBLE", ["0.1", "1e300", "-0.0", "5e-324", "nan", "inf", "-inf", "123456.789"]),
    "ts": ("TIMESTAMP", ["2024-02-29 23:59:59.999999", "2024-01-01 00:00:00", "2024-01-01 10:00:00.5",
                         "infinity", "-infinity", "0001-01-01 00:00:00", "9999-12-31 23:59:59.999999",
                         "10000-01-01 00:00:00", "0044-03-15 (BC) 00:00:00"]),
    "dd": ("DATE", ["2024-02-29", "infinity", "-infinity", "0001-01-01", "12000-01-01", "0044-03-15 (BC)"]),
    "j": ("JSON", ['{"a": [1, 2.5, "x"]}', "[]", '"text"']),
    # These do not pack: they are fetched as objects and travel beside the text.
    "tz": ("TIMESTAMPTZ", ["2024-01-01 10:00:00+02"]),
    "ns": ("TIMESTAMP_NS", ["2024-01-01 10:00:00.123456789"]),
    "f32": ("FLOAT", ["0.1"]),
    "h": ("HUGEINT", [str(2**100)]),
    "l": ("VARCHAR[]", [["a", None]]),
    "st": ("STRUCT(a INTEGER, b VARCHAR)", [{"a": 1, "b": "x"}]),
    "u": ("UUID", ["12345678-1234-5678-1234-567812345678"]),
    "bl": ("BLOB", [b"\x00\xff"]),
}  # fmt: skip
ROWS = 300


@pytest.fixture
def typed_table(tmp_path: Path) -> Path:
    """ROWS rows; each column takes its edge values in turn, random values in between, NULL at times."""
    pick = random.Random(7)
    path = tmp_path / "typed.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table t (k integer, "
            + ", ".join(f"{name} {type_name}" for name, (type_name, _) in COLUMNS.items())
            + ")"
        )
        placeholders = ", ".join(["?"] * (len(COLUMNS) + 1))
        rows = []
        for k in range(ROWS):
            row: list[Any] = [k]
            for name, (_, values) in COLUMNS.items():
                if k % 11 == 5:
                    row.append(None)
                elif k < 40 or name not in {"s", "i64", "d2", "f64", "ts"}:
                    row.append(values[k % len(values)])
                else:
                    row.append(_random_value(name, pick))
            rows.append(row)
        casts = ", ".join(["?"] + [f"cast(? as {type_name})" for type_name, _ in COLUMNS.values()])
        con.executemany(f"insert into t values ({casts})".replace(placeholders, placeholders), rows)
    return path


def _random_value(name: str, pick: random.Random) -> Any:
    if name == "s":
        return "".join(
            chr(pick.choice([pick.randint(32, 126), pick.randint(160, 0x2FFF)])) for _ in range(12)
        )
    if name == "i64":
        return pick.randint(-(2**63), 2**63 - 1)
    if name == "d2":
        return f"{pick.randint(-(10**8), 10**8 - 1)}.{pick.randint(0, 99):02d}"
    if name == "f64":
        return repr(pick.uniform(-1e6, 1e6) * 10 ** pick.randint(-300, 300))
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=pick.randint(0, 2**52))).isoformat(" ")


def same(packed: Any, native: Any) -> bool:
    """The same value of the same type: 1.50 is not 1.5, and NaN is itself."""
    if type(packed) is not type(native):
        return False
    if isinstance(native, float) and math.isnan(native):
        return math.isnan(packed)
    if isinstance(native, float):
        return packed == native and math.copysign(1, packed) == math.copysign(1, native)
    if isinstance(native, Decimal | dt.datetime):
        return str(packed) == str(native)
    return bool(packed == native)


def read(source: DuckDBSource, packing: Packing | None) -> list[Any]:
    window = Window(order_by=("k",))
    project = packing.project if packing is not None else None
    return [row for chunk in source.stream("select * from t", window, 64, project) for row in chunk]


def test_packed_rows_are_the_values_the_driver_returns(typed_table: Path) -> None:
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=str(typed_table))) as source:
        described = source.describe("select * from t")
        native = read(source, None)
        packing = source.packing(described, None, [0])
        assert packing is not None
        read_rows = read(source, packing)
    names = [column.name for column in described]
    carried = {names[position] for position in packing.carried}
    assert carried == {"tz", "ns", "f32", "h", "l", "st", "u", "bl"}, "only exact round trips are packed"
    assert len(read_rows) == len(native) == ROWS
    for packed_row, native_row in zip(read_rows, native, strict=True):
        assert len(packed_row) == 1 + len(carried) + 1, "the cursor, what does not pack, one text"
        assert packed_row[packing.read_index(0)] == native_row[0]
        for via in (packed_row, packing.for_workers(packed_row)):
            unpacked = packing.unpack(via)
            wrong = [
                (name, unpacked[i], native_row[i])
                for i, name in enumerate(names)
                if not same(unpacked[i], native_row[i])
            ]
            assert not wrong, f"row k={native_row[0]}"


def test_columns_the_mapping_never_reads_do_not_travel(typed_table: Path) -> None:
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=str(typed_table))) as source:
        described = source.describe("select * from t")
        names = [column.name for column in described]
        used = [names.index("k"), names.index("s"), names.index("l")]
        packing = source.packing(described, used, [names.index("ts")])
        assert packing is not None
        first = read(source, packing)[0]
    assert packing.carried == (names.index("l"),)
    assert len(orjson.loads(first[-1])) == len(names)
    assert [value for value in orjson.loads(first[-1]) if value is not None] == [0, "plain"]
    unpacked = packing.unpack(first)
    assert (unpacked[names.index("k")], unpacked[names.index("s")], unpacked[names.index("l")]) == (
        0,
        "plain",
        ["a", None],
    )
    assert unpacked[names.index("ts")] is None, "the cursor is the run's: a worker never needs it"


def test_nothing_is_packed_when_nothing_would_pack(typed_table: Path) -> None:
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=str(typed_table))) as source:
        described = source.describe("select * from t")
        names = [column.name for column in described]
        assert source.packing(described, [names.index("l"), names.index("u")], [0]) is None


def test_a_repeated_column_name_packs_under_the_name_duckdb_gives_it(typed_table: Path) -> None:
    query = "select k, s, upper(s) as S from t"
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=str(typed_table))) as source:
        described = source.describe(query)
        packing = source.packing(described, None, [0])
        assert packing is not None
        window = Window(order_by=("k",))
        native = [row for chunk in source.stream(query, window, 64) for row in chunk]
        packed = [
            packing.unpack(row)
            for chunk in source.stream(query, window, 64, packing.project)
            for row in chunk
        ]
    assert [column.name for column in described] == ["k", "s", "S_1"]
    assert packed == native
    assert native[0] == (0, "plain", "PLAIN")


def test_a_run_over_packed_rows_sends_what_a_value_by_value_read_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process and on workers, with a row rejected and values dropped along the way."""
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 2600)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("update orders set email = null, phone = null, ip = null where order_id = 7")
        con.execute("update orders set phone = 'call me' where order_id = 2222")
    pipelines = str(write_pipelines(tmp_path))
    runs = {}
    for name, workers, packs in (("unpacked", "1", False), ("packed", "1", True), ("workers", "2", True)):
        with monkeypatch.context() as patch:
            if not packs:
                patch.setattr(DuckDBSource, "packing", lambda *_: None)
            out = tmp_path / f"{name}.jsonl"
            assert (
                cli(
                    "run",
                    "purchases",
                    "-f",
                    pipelines,
                    "--dry-run",
                    "--workers",
                    workers,
                    "--output",
                    str(out),
                )
                == 0
            )
            runs[name] = out.read_bytes()
    assert runs["unpacked"].count(b"\n") == 2599, "order 7 is rejected"
    assert runs["packed"] == runs["unpacked"]
    assert runs["workers"] == runs["unpacked"]


def test_a_duckdb_without_its_json_functions_reads_value_by_value(typed_table: Path) -> None:
    class WithoutJson:
        def __init__(self, connection: Any) -> None:
            self._connection = connection

        def execute(self, sql: str, *args: Any) -> Any:
            if "json_array" in sql:
                raise duckdb.CatalogException("Scalar Function with name json_array does not exist!")
            return self._connection.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._connection, name)

    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=str(typed_table))) as source:
        described = source.describe("select * from t")
        source._connection = WithoutJson(source._connection)
        assert source.packing(described, None, [0]) is None
        assert len(read(source, None)) == ROWS
