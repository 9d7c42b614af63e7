"""What a user sees when things go wrong: errors first and in plain words, figures that add up,
exit codes that say config (2) or run (1), and no traceback, whatever the input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from capi_sync.state import StateStore
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph, error_reply


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 2500)
    return write_pipelines(tmp_path, graph.url)


def run_process(project: Path, **popen: Any) -> subprocess.Popen[str]:
    """`capi-sync run purchases --workers 1` as a real process, as cron or a terminal starts it."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "capi-sync"), "run", "purchases", "--workers", "1"],
        cwd=project.parent,
        env={**os.environ, "FB_ACCESS_TOKEN": TOKEN},
        text=True,
        **options,
    )


def store_of(project: Path) -> StateStore:
    return StateStore(f"sqlite:///{project.parent / '.capi-sync' / 'state.db'}")


def test_a_cursor_column_that_changed_type_keeps_its_position(project: Path, graph: FakeGraph) -> None:
    database = project.parent / "shop.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(
            "alter table orders alter updated_at type timestamptz using updated_at at time zone 'UTC'"
        )
    assert cli("run", "purchases", "--limit", "1200") == 0
    with duckdb.connect(str(database)) as con:  # the loader changed its mind: TIMESTAMP again
        con.execute("alter table orders alter updated_at type timestamp using updated_at at time zone 'UTC'")
    assert cli("run", "purchases") == 0
    assert len({event["event_id"] for event in graph.accepted_events}) == 2500
    assert len(graph.accepted_events) < 2500 + 5, "resumed where it stood, not from the start"
    with store_of(project) as store:
        assert {run.status for run in store.list_runs("purchases")} == {"succeeded"}


def test_a_cursor_that_cannot_follow_its_column_is_a_config_error(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("run", "purchases", "--limit", "10") == 0
    project.write_text(project.read_text().replace("cursor: updated_at", "cursor: email"))
    capsys.readouterr()
    assert cli("run", "purchases") == 2
    printed = capsys.readouterr()
    assert "cursor 'email'" in printed.err
    assert "state set" in printed.err
    assert "Traceback" not in printed.err + printed.out
    with store_of(project) as store:
        assert "running" not in {run.status for run in store.list_runs("purchases")}


def test_a_fatal_error_comes_first_and_the_figures_agree_with_runs(
    project: Path, graph: FakeGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:  # rejected rows all along
        con.execute("update orders set currency = 'XYZ' where order_id % 3 = 0")
    graph.script = lambda number, _body: (
        error_reply(400, 190, "Error validating access token") if number > 1 else None
    )
    assert cli("run", "purchases", "--workers", "1") == 1
    printed = capsys.readouterr()
    assert printed.err.startswith("error: Graph API error 190"), printed.err[:200]
    summary = next(line for line in printed.out.splitlines() if "rows read =" in line)
    assert cli("runs", "purchases", "--json") == 0
    (run,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    read, sent, rejected, pending, skipped = (
        run[k] for k in ("rows_read", "events_sent", "rows_rejected", "rows_pending", "rows_skipped")
    )
    assert read == sent + rejected + pending + skipped
    assert f"{read:,} rows read = {sent:,} events sent" in summary
    assert f"+ {rejected:,} rejected + {pending:,} pending + {skipped:,} skipped" in summary
    assert "match quality" not in printed.out or f"({sent:,} events)" in printed.out

    # As a terminal or a log shows it, both streams in one: the reason is the first line.
    merged = run_process(project, stderr=subprocess.STDOUT)
    out, _ = merged.communicate(timeout=120)
    assert merged.returncode == 1
    assert out.startswith("error: Graph API error 190"), out[:300]


def test_printed_values_are_never_taken_for_markup(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:
        con.execute("update orders set currency = '[bold]X[/bold]' where order_id = 5")
    assert cli("run", "purchases", "--dry-run") == 0
    assert "[bold]X[/bold]" in capsys.readouterr().out
    project.write_text(
        project.read_text().replace(
            "type: duckdb, path: shop.duckdb", "type: snowflake, account: a, user: u, password: p"
        )
    )
    with pytest.MonkeyPatch.context() as patch:  # the driver is not installed
        patch.setitem(sys.modules, "snowflake", None)
        patch.setitem(sys.modules, "snowflake.connector", None)
        code = cli("run", "purchases", "--dry-run")
    printed = capsys.readouterr().err
    assert "pip install 'capi-sync[snowflake]'" in printed
    assert code == 2, "a missing driver is setup, not a failed run"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("path: shop.duckdb", "path: missing.duckdb"), "missing.duckdb"),
        (("query: select * from orders", "query: select * from orderz"), "orderz"),
    ],
)
@pytest.mark.parametrize("command", [("run", "purchases"), ("validate",), ("render", "purchases")])
def test_setup_errors_exit_2_from_every_command(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    words: str,
    command: tuple[str, ...],
) -> None:
    project.write_text(project.read_text().replace(*change))
    assert cli(*command) == 2
    printed = capsys.readouterr()
    assert words in printed.err
    assert "Traceback" not in printed.err


def test_state_store_problems_are_errors_not_tracebacks(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("runs", "--state", "foo.db") == 0, "a plain path is a SQLite file"
    assert (project.parent / "foo.db").is_file()
    assert cli("runs", "--state", "nosuchdriver+x://h/db") == 2
    (project.parent / ".capi-sync").write_text("not a folder")
    assert cli("run", "purchases") == 2
    printed = capsys.readouterr()
    assert "is a file, not a folder" in printed.err
    assert "Traceback" not in printed.err + printed.out


def test_a_full_disk_during_a_state_write_fails_the_run_and_never_leaves_it_running(
    project: Path, graph: FakeGraph
) -> None:
    import resource

    assert cli("run", "purchases", "--limit", "10") == 0
    make_orders(project.parent / "shop.duckdb", 20000, start_id=100_000, minutes_ago=300)
    database = project.parent / ".capi-sync" / "state.db"
    limit = database.stat().st_size + 64 * 1024

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = run_process(project, preexec_fn=small_disk)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert "state store" in err
    assert "free disk space" in err
    assert "Traceback" not in out + err
    with store_of(project) as store:
        statuses = [run.status for run in store.list_runs("purchases")]
    assert statuses[0] == "failed"
    assert "running" not in statuses


def test_a_yaml_alias_bomb_is_refused_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(9))}]" for i in range(1, 10)]
    (tmp_path / "pipelines.yaml").write_text("\n".join(lines) + "\nwarehouses: *a9\n")
    started = time.monotonic()
    assert cli("validate", "--offline") == 2
    assert time.monotonic() - started < 5
    assert "alias bomb" in capsys.readouterr().err


def test_a_recursive_alias_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pipelines.yaml").write_text("warehouses: &w\n  x: *w\n")
    assert cli("validate", "--offline") == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "change",
    [
        (
            "custom_properties: {{loyalty_tier: tier}}",
            "custom_properties: {{loyalty_tier: tier, note: {{value: '${{FB_ACCESS_TOKEN}}'}}}}",
        ),
        ("query: select * from orders", "query: \"select *, '${{FB_ACCESS_TOKEN}}' as t from orders\""),
        (
            "query: select * from orders",
            'query: "select * from orders {{% if cursor_start is none %}}-- ${{FB_ACCESS_TOKEN}}{{% endif %}}"',
        ),
    ],
)
def test_a_secret_in_a_constant_query_or_template_is_a_config_error(
    tmp_path: Path,
    graph: FakeGraph,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
) -> None:
    from tests.conftest import PIPELINES

    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 5)
    write_pipelines(tmp_path, graph.url, text=PIPELINES.replace(*change))
    for command in (("run", "purchases", "--dry-run"), ("render", "purchases"), ("preview", "purchases")):
        assert cli(*command) == 2
        printed = capsys.readouterr()
        assert "holds the value of a secret" in printed.err
        assert TOKEN not in printed.out + printed.err
    assert graph.requests == []


@pytest.mark.parametrize("remembered", [50_000, 0])  # 0: repeats at one cursor value still count
def test_rows_repeating_a_primary_key_are_counted_and_warned_about(
    project: Path,
    graph: FakeGraph,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    remembered: int,
) -> None:
    from capi_sync import runner

    monkeypatch.setattr(runner, "KEYS_TRACKED", remembered)
    with duckdb.connect(str(project.parent / "shop.duckdb")) as con:
        con.execute("create table copy as select * from orders")  # the same table without its key
        con.execute("drop table orders")
        con.execute("create table orders as select * from copy")
        con.execute("insert into orders select * from copy where order_id = 42")
        con.execute("insert into orders select * from copy where order_id = 42")
    assert cli("run", "purchases", "--workers", "1") == 0
    printed = capsys.readouterr()
    assert "warning: 2 row(s) repeat a primary key" in printed.err


def test_a_yaml_nested_too_deeply_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pipelines.yaml").write_text("warehouses: " + "[" * 5000 + "]" * 5000 + "\n")
    assert cli("validate", "--offline") == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_scheduler_logs_are_scrubbed_too() -> None:
    import io
    import logging

    from capi_sync import secrets

    secrets.register([TOKEN])
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.addFilter(secrets.ScrubbingFilter())
    log = logging.getLogger("capi_sync.test_scrub")
    log.addHandler(handler)
    try:
        log.error("%s: Graph API said x%sx", "purchases", TOKEN)
    finally:
        log.removeHandler(handler)
    assert TOKEN not in written.getvalue()
    assert "x[redacted]x" in written.getvalue()
