"""CLI commands beyond `run`: preview, state, the SQLAlchemy source, exit codes."""

from __future__ import annotations

import json
import sqlite3
from hashlib import sha256
from pathlib import Path

import pytest

from capi_sync import native
from tests.conftest import TOKEN, cli, dry_run_both_engines, make_orders, recent, write_pipelines
from tests.fake_graph import FakeGraph


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 30)
    return write_pipelines(tmp_path, graph.url)


def test_preview_shows_events_rejections_and_match_quality(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    import duckdb

    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:
        con.execute("update orders set created_at = created_at - interval 30 day where order_id = 2")
    assert cli("preview", "purchases", "-n", "3") == 0
    text = capsys.readouterr().out
    assert "rejected" in text
    assert "too_old" in text
    assert "match quality (2 events)" in text
    assert graph.requests == []


def test_state_show_and_reset(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("run", "purchases") == 0
    capsys.readouterr()
    assert cli("state", "show", "purchases") == 0
    assert "1 row(s) settled" in capsys.readouterr().out
    assert cli("state", "reset", "purchases", "--yes") == 0
    assert cli("state", "show", "purchases") == 0
    assert "no cursor yet" in capsys.readouterr().out


def test_unknown_pipeline_is_a_usage_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("run", "nope") == 2
    assert "no pipeline named 'nope' (pipelines: purchases)" in capsys.readouterr().err


def test_bad_flag_is_a_usage_error(project: Path) -> None:
    assert cli("run", "purchases", "--limit", "0") == 2
    assert cli("run", "purchases", "--output", "x.jsonl") == 2


def test_the_deprecated_workers_flag_is_still_accepted(project: Path) -> None:
    """Worker processes are gone; scripts that pass `--workers` keep working."""
    assert cli("run", "purchases", "--workers", "auto", "--dry-run") == 0
    assert cli("run", "purchases", "--workers", "2", "--dry-run") == 0
    assert cli("run", "purchases", "--workers", "many") == 2


def test_fatal_meta_error_fails_the_run_with_exit_1(
    project: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", "expired-" + TOKEN)
    assert cli("run", "purchases") == 1
    captured = capsys.readouterr()
    assert "generate a new one" in captured.err
    assert TOKEN not in captured.out + captured.err


def _sqlite_shop(folder: Path, graph_url: str, rows: list[tuple[object, ...]]) -> Path:
    """The suite's orders in a SQLite file (email untyped, so a BLOB stays bytes), and the
    pipelines file pointed at it through SQLAlchemy."""
    database = folder / "shop.sqlite"
    with sqlite3.connect(database) as con:
        con.execute(
            "create table orders (order_id integer primary key, email, phone text, country text,"
            " ip text, user_agent text, page_url text, amount real, currency text, tier text,"
            " created_at text, updated_at text)"
        )
        con.executemany("insert into orders values (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    path = write_pipelines(folder, graph_url)
    path.write_text(
        path.read_text().replace(
            "shop: {type: duckdb, path: shop.duckdb}",
            f"shop: {{type: sqlalchemy, url: 'sqlite:///{database}'}}",
        )
    )
    return database


def test_sqlalchemy_source_streams_and_binds_the_cursor(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any SQLAlchemy URL; SQLite here (PostgreSQL has its own tests with a real server)."""
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    rows = [
        (i, f"u{i}@example.com", None, "US", None, "UA", "https://x.example", 5.0, "EUR", "t",
         recent(1300 - i).isoformat(sep=" "), recent(1300 - i).isoformat(sep=" "))
        for i in range(1, 1201)
    ]  # fmt: skip
    database = _sqlite_shop(tmp_path, graph.url, rows)
    assert cli("run", "purchases") == 0
    assert cli("run", "purchases") == 0
    assert sorted(len(r.body["data"]) for r in graph.requests) == [200, 1000]
    with sqlite3.connect(database) as con:
        con.execute(
            "insert into orders values (5000,'n@example.com',null,'US',null,'UA','https://x',"
            "1.0,'EUR','t',?,?)",
            (recent(1).isoformat(sep=" "),) * 2,
        )
    assert cli("run", "purchases", "--dry-run", "--output", str(tmp_path / "next.jsonl")) == 0
    lines = (tmp_path / "next.jsonl").read_text().splitlines()
    assert [json.loads(line)["custom_data"]["currency"] for line in lines] == ["EUR"]


def test_chunks_arrow_would_change_are_mapped_by_the_reference(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite rows reach the native core as Arrow chunk by chunk; a chunk holding a BLOB email
    (Arrow would not hand back `bytes`) is mapped by the reference, and the run says so."""
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    stamp = recent(60).isoformat(sep=" ")
    rows = [
        (i, f"u{i}@example.com".encode() if i == 1500 else f"u{i}@example.com", None, "US", None, "UA",
         "https://x.example", 5.5, "EUR", "t", stamp, stamp)
        for i in range(1, 2001)
    ]  # fmt: skip
    _sqlite_shop(tmp_path, graph.url, rows)
    runs = dry_run_both_engines(tmp_path, monkeypatch, capsys)
    kept = "does not read chunks where column 'email' holds values of several types (bytes, str)"
    for engine, (_, out) in runs.items():
        assert (kept in " ".join(out.split())) == (engine == "native" and native.available()), out
    events = runs["native"][0]
    assert events == runs["python"][0]
    assert events.count(b"\n") == 2000
    assert sha256(b"u1500@example.com").hexdigest().encode() in events


def test_rejected_lists_rows_with_reasons(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import duckdb

    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:
        con.execute("update orders set email = 'jane.doe', phone = null, ip = null where order_id = 3")
    assert cli("run", "purchases") == 0
    capsys.readouterr()
    assert cli("rejected", "purchases", "--json") == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["row_key"] == "3"
    assert {(r["field"], r["rule"]) for r in row["reasons"]} == {
        ("customer_info", "weak_match_keys"),
        ("customer_info.em", "invalid_email"),
    }
    assert "jane.doe" not in json.dumps(row)
    assert cli("rejected", "purchases") == 0
    assert "weak_match_keys" in capsys.readouterr().out
