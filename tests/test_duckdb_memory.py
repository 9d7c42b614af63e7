"""DuckDB's sorted read: a limit left unset grows when a sort needs more; a limit the user set holds."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

import capi_sync.connectors.duckdb as duckdb_source
from capi_sync.config import DuckDBWarehouse
from capi_sync.connectors.base import Window
from capi_sync.connectors.duckdb import DuckDBSource
from capi_sync.errors import SourceError
from tests.conftest import TOKEN, cli, make_orders, write_pipelines

ROWS = 200_000  # wide enough that a sort in a few megabytes runs out of memory


@pytest.fixture
def wide_table(tmp_path: Path) -> str:
    path = tmp_path / "wide.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "create table t as select i as id, md5(i::varchar) || md5((i + 1)::varchar) as s"
            f" from range({ROWS}) r(i)"
        )
    return str(path)


def read_sorted(source: DuckDBSource) -> list[tuple[int, str]]:
    return [row for chunk in source.stream("select * from t", Window(order_by=("s",)), 5000) for row in chunk]


def current_limit_mb(source: DuckDBSource) -> float:
    shown = source._connection.execute("select current_setting('memory_limit')").fetchone()[0]
    return float(shown.removesuffix(" MiB"))


def test_an_unset_limit_doubles_until_the_sort_fits_and_says_so(
    wide_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_MB", 2)
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=wide_table)) as source:
        rows = read_sorted(source)
        (note,) = source.notes
        grown = int(re.search(r"read them with (\d+)MB", note).group(1))  # type: ignore[union-attr]
        assert grown > 2
        assert "set memory_limit to start there" in note
        assert current_limit_mb(source) <= grown  # DuckDB shows MiB
    assert len(rows) == ROWS
    assert [s for _, s in rows] == sorted(s for _, s in rows)


def test_a_limit_the_user_set_is_a_hard_limit(wide_table: str) -> None:
    config = DuckDBWarehouse(type="duckdb", path=wide_table, memory_limit="2MB")
    with DuckDBSource(config) as source, pytest.raises(SourceError) as caught:
        read_sorted(source)
    assert "Out of Memory" in str(caught.value)
    assert "raise the warehouse's memory_limit, now 2MB" in str(caught.value)
    assert source.notes == ()


def test_running_out_of_memory_while_rows_stream_names_the_limit_to_raise(
    wide_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sort succeeded, rows were handed out, then DuckDB could not pin a block (seen with
    `threads: 2` on a pushdown read): no retry is possible, but the user learns what to change."""

    class ExhaustedResult:
        def fetchmany(self, size: int) -> list[tuple[int, str]]:
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to pin block of size 256.0 KiB")

    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=wide_table)) as source:
        source.prepare_for_pushdown()
        monkeypatch.setattr(source, "_execute", lambda *args: ExhaustedResult())
        with pytest.raises(SourceError) as caught:
            read_sorted(source)
    assert str(caught.value) == (
        "DuckDB failed while reading: Out of Memory Error: failed to pin block of size 256.0 KiB"
        f" (raise the warehouse's pushdown_memory_limit, now {duckdb_source.AUTO_MEMORY_LIMIT_MB}MB)"
    )


def test_pushdown_reads_grow_their_own_limit(wide_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_MB", 2)
    config = DuckDBWarehouse(type="duckdb", path=wide_table, memory_limit="2MB")
    with DuckDBSource(config) as source:
        source.prepare_for_pushdown()
        assert len(read_sorted(source)) == ROWS
        (note,) = source.notes
    assert "set pushdown_memory_limit" in note


def test_a_pushdown_read_raises_threads_only_on_a_database_it_has_alone(
    wide_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections to one file in one process share `threads`: a pipeline running beside another on
    the same file must not have its sort or its stream changed under it."""
    monkeypatch.setattr(duckdb_source.os, "cpu_count", lambda: 3)

    def threads_while_streaming(source: DuckDBSource) -> set[int]:
        seen = set()
        for _chunk in source.stream("select * from t", Window(order_by=("s",)), 50_000):
            with source._connection.cursor() as other:
                seen.add(other.execute("select current_setting('threads')").fetchone()[0])
        return seen

    config = DuckDBWarehouse(type="duckdb", path=wide_table)
    with DuckDBSource(config) as alone:
        alone.prepare_for_pushdown()
        assert threads_while_streaming(alone) == {3}
        with DuckDBSource(config):
            assert threads_while_streaming(alone) == {1}
        assert threads_while_streaming(alone) == {3}
    assert duckdb_source._open_files[wide_table] == 0


def test_the_growth_stops_at_the_ceiling(wide_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_MB", 1)
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_CEILING_MB", 4)
    with (
        DuckDBSource(DuckDBWarehouse(type="duckdb", path=wide_table)) as source,
        pytest.raises(SourceError) as caught,
    ):
        read_sorted(source)
    assert "now 4MB" in str(caught.value)


def test_duckdb_draws_no_progress_bar_of_its_own(wide_table: str) -> None:
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=wide_table)) as source:
        setting = source._connection.execute("select current_setting('enable_progress_bar')").fetchone()
    assert setting == (False,)


def test_a_run_reports_the_grown_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_orders(tmp_path / "shop.duckdb", 30_000)
    write_pipelines(tmp_path)
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_MB", 1)
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    assert cli("run", "purchases", "--dry-run") == 0
    shown = capsys.readouterr().out
    assert "30,000 rows read" in shown
    assert re.search(r"DuckDB needed more than \d+MB to sort the rows: read them with \d+MB", shown)


def test_the_growth_reaches_the_ceiling_itself(wide_table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """96 doubles to 1536 MB; the step to 3072 is past 2048, but 2048 itself must still be tried.

    Scaled down: 3 doubles to 6 and 12, then to the ceiling of 20, not stopping at 12."""
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_MB", 3)
    monkeypatch.setattr(duckdb_source, "AUTO_MEMORY_LIMIT_CEILING_MB", 20)
    with DuckDBSource(DuckDBWarehouse(type="duckdb", path=wide_table)) as source:
        grown = []
        while source._grow_memory_limit():
            grown.append(source._limits["memory_limit"])
    assert grown == ["6MB", "12MB", "20MB"]


def test_rows_with_ten_megabyte_values_sort_within_the_default_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 200)
    with duckdb.connect(str(tmp_path / "shop.duckdb")) as con:
        con.execute("update orders set tier = repeat('x', 10000000) where order_id % 10 = 0")
    write_pipelines(tmp_path)
    assert cli("run", "purchases", "--dry-run") == 0
    printed = capsys.readouterr()
    assert "200 rows read = 180 events built" in printed.out
    assert "20 rejected" in printed.out  # each 10 MB event alone is over max_request_bytes
