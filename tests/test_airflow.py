"""capi-sync's Airflow operator through Airflow's own `dag.test()`, against the fake Graph API and a
DuckDB file: an incremental task, a backfill of the DAG run's data interval, the results document
in XCom, a failed run failing its task, and every run in `capi-sync runs`.

Airflow reads its configuration when first imported, so each DAG runs in a fresh interpreter
with its own AIRFLOW_HOME and SQLite metadata database (`airflow db migrate`: about 5 s).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import TOKEN, write_pipelines
from tests.fake_graph import FakeGraph
from tests.test_dagster import days_ago, orders_on
from tests.test_operations import capi_sync, json_lines

pytest.importorskip("airflow")

DAG = """
import datetime as dt, json, sys
from pathlib import Path

from airflow.sdk import DAG, task
from airflow.timetables.interval import CronDataIntervalTimetable
from capi_sync.airflow import CapiSyncOperator

folder = Path(__file__).parent
# A daily data interval (Airflow 3's "@daily" alone triggers with an empty interval).
daily = CronDataIntervalTimetable("@daily", timezone="UTC")
with DAG("meta_events", schedule=daily, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False) as dag:
    incremental = CapiSyncOperator(
        task_id="purchases", pipeline="purchases", pipelines_file=str(folder / "pipelines.yaml"),
        pool="default_pool",
    )
    backfill = CapiSyncOperator(
        task_id="purchases_day", pipeline="purchases", pipelines_file=str(folder / "pipelines.yaml"),
        mode="backfill", state=str(folder / "backfills.db"),
    )

    @task
    def keep(incremental_results, backfill_results):
        (folder / "xcom.json").write_text(json.dumps([incremental_results, backfill_results]))

    keep(incremental.output, backfill.output)

if __name__ == "__main__":  # Airflow imports this file too, to serialize the DAG
    run = dag.test(logical_date=dt.datetime.fromisoformat(sys.argv[1]))
    print("STATE", run.state)
"""


def run_dag(
    folder: Path, logical_date: dt.datetime, text: str = DAG, *, pools: bool = False
) -> subprocess.CompletedProcess[str]:
    home = folder / "airflow"
    env = {
        **os.environ,
        "FB_ACCESS_TOKEN": TOKEN,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    if not (home / "airflow.db").exists():
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        if pools:
            command = [airflow, "pools", "set", "meta_graph_api", "2", "Graph API"]
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    (folder / "dag.py").write_text(textwrap.dedent(text))
    return subprocess.run(
        [sys.executable, str(folder / "dag.py"), logical_date.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def graph() -> Any:
    with FakeGraph(token=TOKEN) as fake:
        yield fake


def test_dag_test_runs_incremental_and_backfill_tasks(tmp_path: Path, graph: FakeGraph) -> None:
    shop = tmp_path / "shop.duckdb"
    orders_on(shop, days_ago(2), 4, 1)
    orders_on(shop, days_ago(1), 3, 100)
    write_pipelines(tmp_path, graph.url)
    # a run at midnight yesterday covers the day before: its data interval is that whole day
    logical = dt.datetime.combine(days_ago(1), dt.time(), tzinfo=dt.UTC)
    done = run_dag(tmp_path, logical)
    assert "STATE success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    incremental, backfill = orjson.loads((tmp_path / "xcom.json").read_bytes())
    assert (incremental["kind"], incremental["status"], incremental["events_sent"]) == ("run", "succeeded", 7)
    assert (backfill["kind"], backfill["status"], backfill["events_sent"]) == ("backfill", "succeeded", 4)
    assert TOKEN not in done.stdout + done.stderr
    # both runs are capi-sync runs like any other
    runs = json_lines(capi_sync(tmp_path, "runs", "--json").stdout)
    assert [run["run_id"] for run in runs] == [incremental["run_id"]]
    backfills = json_lines(
        capi_sync(tmp_path, "--state", str(tmp_path / "backfills.db"), "runs", "--json").stdout
    )
    assert [run["run_id"] for run in backfills] == [backfill["run_id"]]


def test_a_failed_run_fails_its_task(tmp_path: Path, graph: FakeGraph) -> None:
    orders_on(tmp_path / "shop.duckdb", days_ago(1), 2, 1)
    write_pipelines(tmp_path, graph.url)
    graph.token = "another-token"  # Meta refuses the token
    done = run_dag(tmp_path, dt.datetime.combine(days_ago(1), dt.time(), tzinfo=dt.UTC))
    assert "STATE failed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "capi-sync purchases: Graph API error 190" in done.stdout + done.stderr
    assert TOKEN not in done.stdout + done.stderr
    runs = json_lines(capi_sync(tmp_path, "runs", "--json").stdout)
    assert [run["status"] for run in runs] == ["failed"]


def test_the_readmes_dag_runs(tmp_path: Path, graph: FakeGraph) -> None:
    from tests.test_dagster import readme_block

    shop = tmp_path / "shop.duckdb"
    orders_on(shop, days_ago(1), 3, 1)
    write_pipelines(tmp_path, graph.url)
    dag = readme_block("# dags/meta_events.py").replace(
        "/opt/capi-sync/pipelines.yaml", str(tmp_path / "pipelines.yaml")
    )
    dag += textwrap.dedent("""
        if __name__ == "__main__":
            import sys
            run = dag.test(logical_date=dt.datetime.fromisoformat(sys.argv[1]))
            print("STATE", run.state)
    """)
    done = run_dag(tmp_path, dt.datetime.combine(days_ago(0), dt.time(), tzinfo=dt.UTC), text=dag, pools=True)
    assert "STATE success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json_lines(capi_sync(tmp_path, "runs", "--json").stdout)
    assert sorted(run["kind"] for run in runs) == ["backfill", "run"]
    assert [run["events_sent"] for run in runs] == [3, 3]
    # the backfill re-sent yesterday's rows with the same event_ids: Meta keeps one of each
    ids = [event["event_id"] for event in graph.accepted_events]
    assert (len(ids), len(set(ids))) == (6, 3)
