from __future__ import annotations

import datetime as dt
import faulthandler
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import settings

from capi_sync import secrets
from capi_sync.cli import main
from tests.fake_graph import FakeGraph
from tests.postgres import create_database, postgres_server

# CI runs the property tests derandomized (`.ci/run` sets HYPOTHESIS_PROFILE=ci): the same examples
# each time, so a red CI is a change's doing; a developer's runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

TOKEN = "EAAB-secret-token-9f8e7d6c5b4a"
EXIT_GRACE_SECONDS = 60


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Never let a thread or process a test left behind hold the suite open after it finished.

    Interpreter exit joins non-daemon threads; one stuck there would hang CI silently until its
    time limit. After the grace period this prints every thread's stack and fails the run instead.
    """

    def exit_if_stuck() -> None:
        time.sleep(EXIT_GRACE_SECONDS)
        sys.stderr.write(f"\nthe test process did not exit {EXIT_GRACE_SECONDS}s after the tests ended:\n")
        faulthandler.dump_traceback(all_threads=True)
        os._exit(int(exitstatus) or 1)

    threading.Thread(target=exit_if_stuck, name="exit-watchdog", daemon=True).start()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(token=TOKEN) as fake:
        yield fake


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """A fresh database on the session's throwaway PostgreSQL server."""
    return create_database(postgres_server_url)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CAPI_SYNC_STATE", raising=False)
    monkeypatch.chdir(tmp_path)
    # Each test is a process of its own as far as secrets go: one test's password (say `people`)
    # must not be scrubbed out of the next test's messages.
    monkeypatch.setattr(secrets, "_registered", ())


def recent(minutes_ago: float) -> dt.datetime:
    """A naive UTC timestamp Meta still accepts."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    return now - dt.timedelta(minutes=minutes_ago)


def make_orders(path: Path, rows: int, *, start_id: int = 1, minutes_ago: float = 600) -> None:
    """A DuckDB table of `rows` valid orders, one second apart, updated_at increasing with order_id."""
    with duckdb.connect(str(path)) as con:
        con.execute("""
            create table if not exists orders (
                order_id integer primary key, email varchar, phone varchar, country varchar,
                ip varchar, user_agent varchar, page_url varchar, amount decimal(10, 2),
                currency varchar, tier varchar, created_at timestamp, updated_at timestamp)
        """)
        con.execute(
            """
            insert into orders
            select i, ' User' || i || '@Example.com ', '(650) 555-' || lpad((i % 10000)::varchar, 4, '0'),
                   'US', '203.0.113.7', 'Mozilla/5.0', 'https://shop.example.com/o/' || i,
                   (i % 500) + 0.99, 'usd', 'gold',
                   $base + to_seconds(i - $first), $base + to_seconds(i - $first)
            from range($first, $first + $rows) as t(i)
            """,
            {"base": recent(minutes_ago), "first": start_id, "rows": rows},
        )


PIPELINES = """
warehouses:
  shop: {{type: duckdb, path: {db}}}
destinations:
  meta:
    pixel_id: "123456789"
    access_token: ${{FB_ACCESS_TOKEN}}
    graph_url: {graph_url}
    retry_base_seconds: 0.01
pipelines:
  purchases:
    warehouse: shop
    destination: meta
    query: select * from orders
    primary_key: order_id
    cursor: updated_at
    settings: {{action_source: website, default_phone_region: US}}
    mapping:
      server_event: {{event_name: {{value: Purchase}}, event_time: created_at,
                     event_source_url: page_url}}
      customer_info: {{em: email, ph: phone, country: country, client_ip_address: ip,
                      client_user_agent: user_agent}}
      custom_data: {{value: amount, currency: currency}}
      custom_properties: {{loyalty_tier: tier}}
"""


def write_pipelines(
    folder: Path, graph_url: str = "http://127.0.0.1:9", text: str = PIPELINES, **fields: Any
) -> Path:
    path = folder / "pipelines.yaml"
    path.write_text(textwrap.dedent(text.format(db="shop.duckdb", graph_url=graph_url, **fields)))
    return path


def cli(*args: str) -> int:
    """Run the real CLI entry point in-process and return its exit code."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def core_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events the native core wrote, batch by batch (its `build`, wrapped): proves a
    run went through the core, where equal events alone would not."""
    from capi_sync import native

    written: list[int] = []
    if native.available():
        build = native._core.build

        def counting_build(plan: Any, batch: Any, now: float) -> Any:
            built = build(plan, batch, now)
            written.append(len(built.events))
            return built

        monkeypatch.setattr(native._core, "build", counting_build)
    return written


def dry_run_both_engines(
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pipeline: str = "purchases",
) -> dict[str, tuple[bytes, str]]:
    """`run PIPELINE --dry-run --output` on the native core, then on pure Python, each with its own
    state: per engine, (the events written, what the run printed)."""
    from capi_sync import native

    found = {}
    for engine in ("native", "python"):
        monkeypatch.setenv(native.ENGINE_VARIABLE, engine)
        monkeypatch.setenv("CAPI_SYNC_STATE", f"sqlite:///{folder / f'state-{engine}.db'}")
        output = folder / f"{engine}.jsonl"
        assert cli("run", pipeline, "--dry-run", "--output", str(output)) == 0
        found[engine] = (output.read_bytes(), capsys.readouterr().out)
    monkeypatch.delenv(native.ENGINE_VARIABLE)
    return found


def start_run(folder: Path, *args: str) -> subprocess.Popen[str]:
    """`capi-sync run purchases` as a real process (the installed console script).

    It starts with SIGINT at its default: a shell's background job ignores SIGINT and a child
    inherits that, so a suite started with `&` would see runs that never hear Ctrl-C. (A small
    exec wrapper, because `preexec_fn` is unsafe in a process running the fake servers' threads.)
    """
    script = str(Path(sys.executable).parent / "capi-sync")
    default_sigint = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", default_sigint, script, "run", "purchases", *args],
        cwd=folder,
        env={**os.environ, "FB_ACCESS_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@contextmanager
def meta_on_hold(
    graph: FakeGraph, holds: Callable[[dict[str, Any]], bool] = lambda _body: True, then: Any = None
) -> Iterator[None]:
    """Requests whose body `holds` wait unanswered until the block ends, then get `then`
    (None: the normal answer). Lets a test signal or kill a process with batches on the wire."""
    release = threading.Event()

    def script(_number: int, body: dict[str, Any]) -> Any:
        if holds(body):
            release.wait(60)
            return then
        return None

    graph.script = script
    try:
        yield
    finally:
        release.set()


def carries_row(body: dict[str, Any], order_id: int) -> bool:
    return any(event["event_source_url"].endswith(f"/o/{order_id}") for event in body["data"])
