"""Templated queries render every expression as a bind parameter; `check` reports failures plainly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from capi_sync.connectors.base import Window, render_query, window_sql
from capi_sync.errors import TemplateProblem
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph

QUERY = "select * from t {% if cursor_start is not none %}where ts >= {{ cursor_start }}{% endif %}"


def test_expressions_become_placeholders_in_the_warehouses_style() -> None:
    start = dt.datetime(2026, 11, 20, 8)
    window = Window(order_by=("ts",), cursor="ts", start=start)
    sql, params = window_sql(QUERY, window, lambda name: f'"{name}"', lambda i: f":p{i}")
    assert sql.startswith("select * from (select * from t where ts >= :p0) as capi_src")
    assert '"ts" >= :p1' in sql
    assert params == [start, start]


def test_values_are_never_spliced_into_the_sql() -> None:
    hostile = "'; drop table t; --"
    params: list[object] = []
    sql = render_query(
        "select {{ window_start }}", Window(order_by=(), start=hostile), lambda _i: "?", params
    )
    assert sql == "select ?"
    assert params == [hostile]


def test_backfill_windows_set_the_backfill_variables_only() -> None:
    window = Window(order_by=(), start=dt.date(2026, 11, 1), end=dt.date(2026, 11, 2), purpose="backfill")
    params: list[object] = []
    query = "{{ backfill_start }} {{ backfill_end }} {{ cursor_start }}"
    render_query(query, window, lambda _i: "?", params)
    assert params == [dt.date(2026, 11, 1), dt.date(2026, 11, 2), None]


@pytest.mark.parametrize(
    ("query", "message"),
    [("{{ cursr_start }}", "'cursr_start' is undefined"),
     ("{{ cursor_start.__class__.__mro__ }}", "unsafe"),
     ("{% if %}", "Expected an expression")],
)  # fmt: skip
def test_bad_templates_are_refused(query: str, message: str) -> None:
    with pytest.raises(TemplateProblem, match=message):
        render_query(query, None, lambda _i: "?", [])


def test_config_reports_template_errors_with_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    path = write_pipelines(tmp_path)
    path.write_text(path.read_text().replace("query: select * from orders", "query: select {{ nope }}"))
    assert cli("validate", "--offline") == 2
    assert "pipeline 'purchases': query: query template: 'nope' is undefined" in capsys.readouterr().err


def test_check_names_what_failed_without_leaking_secrets(
    tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_orders(tmp_path / "shop.duckdb", 3)
    path = write_pipelines(tmp_path, graph.url)
    monkeypatch.setenv("FB_ACCESS_TOKEN", "EAAB-wrong-token-0000")
    assert cli("check") == 1
    out = capsys.readouterr().out
    assert "mapping OK" in out
    assert "FAILED" in out
    assert "code 190" in out or "access token" in out.lower()
    assert "EAAB-wrong-token-0000" not in out

    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    path.write_text(path.read_text().replace("select * from orders", "select * from missing_table"))
    assert cli("check") == 2, "a query that does not compile is setup: exit 2, as from every command"
    out = capsys.readouterr().out
    assert "missing_table" in out
    assert "Test pixel" in out, "the Graph API check still runs and passes"
