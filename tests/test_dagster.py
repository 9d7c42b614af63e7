"""capi-sync's Dagster assets through Dagster's own `materialize()`, against the fake Graph API and
a DuckDB file: an incremental run, one daily partition, a range of partitions as one backfill, and
the asset check failing on a table of bad rows. Every run is in `capi-sync runs` too."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

dg = pytest.importorskip("dagster")

from capi_sync.dagster import CapiSyncResource, capi_sync_assets  # noqa: E402
from tests.conftest import TOKEN, make_orders, write_pipelines  # noqa: E402
from tests.fake_graph import FakeGraph  # noqa: E402
from tests.test_operations import capi_sync, json_lines  # noqa: E402


@pytest.fixture
def graph() -> Any:
    with FakeGraph(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def project(tmp_path: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    return write_pipelines(tmp_path, graph.url).resolve()


def resources(folder: Path) -> dict[str, Any]:
    return {"capi_sync": CapiSyncResource(state=str(folder / "dagster-state.db"))}


def days_ago(days: int) -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)


def orders_on(path: Path, day: dt.date, count: int, first_id: int) -> None:
    """`count` valid orders created at noon UTC on `day`."""
    make_orders(path, 0)  # the table
    noon = dt.datetime.combine(day, dt.time(12))
    with duckdb.connect(str(path)) as con:
        for number in range(first_id, first_id + count):
            con.execute(
                "insert into orders values (?, ?, '(650) 555-0100', 'US', '203.0.113.7', 'Mozilla/5.0',"
                " ?, 10.5, 'usd', 'gold', ?, ?)",
                [number, f"u{number}@example.com", f"https://shop.example.com/o/{number}", noon, noon],
            )


def metadata_of(result: Any, key: Any) -> dict[str, Any]:
    (materialization,) = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {name: value.value for name, value in materialization.materialization.metadata.items()}


def test_an_unpartitioned_materialization_is_an_incremental_run(project: Path, graph: FakeGraph) -> None:
    make_orders(project.parent / "shop.duckdb", 30)
    assets = capi_sync_assets(project, deps={"purchases": ["analytics", "orders"]})
    key = dg.AssetKey(["capi_sync", "purchases"])
    assert dg.AssetKey(["analytics", "orders"]) in assets.asset_deps[key]
    result = dg.materialize([assets], resources=resources(project.parent))
    assert result.success
    metadata = metadata_of(result, key)
    assert (metadata["events_sent"], metadata["rows_read"], metadata["rows_rejected"]) == (30, 30, 0)
    assert metadata["kind"] == "run"
    assert metadata["match_quality"]["em"] == 1.0
    assert metadata["cursor_before"] == ""
    assert metadata["cursor_after"]
    assert len(graph.accepted_events) == 30
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    # the same run in capi-sync's own history
    runs = json_lines(
        capi_sync(
            project.parent, "--state", str(project.parent / "dagster-state.db"), "runs", "--json"
        ).stdout
    )
    assert [run["run_id"] for run in runs] == [metadata["run_id"]]
    again = dg.materialize([assets], resources=resources(project.parent))
    assert metadata_of(again, key)["events_sent"] == 0  # past the cursor: nothing new


def test_a_partition_is_a_backfill_of_its_day_and_a_range_is_one_backfill(
    project: Path, graph: FakeGraph
) -> None:
    shop = project.parent / "shop.duckdb"
    for days, first in ((3, 1), (2, 100), (1, 200)):
        orders_on(shop, days_ago(days), 5, first)
    partitions = dg.DailyPartitionsDefinition(start_date=str(days_ago(6)), timezone="UTC")
    assets = capi_sync_assets(project, partitions_def=partitions)
    key = dg.AssetKey(["capi_sync", "purchases"])
    one = dg.materialize([assets], resources=resources(project.parent), partition_key=str(days_ago(2)))
    assert one.success
    metadata = metadata_of(one, key)
    assert (metadata["kind"], metadata["events_sent"]) == ("backfill", 5)
    assert {int(e["event_source_url"].rsplit("/", 1)[1]) for e in graph.accepted_events} == set(
        range(100, 105)
    )
    graph.requests.clear()
    ranged = dg.materialize(
        [assets],
        resources=resources(project.parent),
        tags={
            "dagster/asset_partition_range_start": str(days_ago(3)),
            "dagster/asset_partition_range_end": str(days_ago(1)),
        },
    )
    assert ranged.success
    # one capi-sync run for the three days (single-run policy), recorded on each day's partition
    recorded = [m.materialization for m in ranged.get_asset_materialization_events()]
    assert sorted(m.partition for m in recorded) == [str(days_ago(d)) for d in (3, 2, 1)]
    assert {m.metadata["events_sent"].value for m in recorded} == {15}
    assert len({m.metadata["run_id"].value for m in recorded}) == 1
    runs = json_lines(
        capi_sync(
            project.parent, "--state", str(project.parent / "dagster-state.db"), "runs", "--json"
        ).stdout
    )
    assert [run["kind"] for run in runs] == ["backfill", "backfill"]
    assert runs[0]["events_sent"] == 15


def test_the_asset_check_fails_on_a_table_of_bad_rows(project: Path, graph: FakeGraph) -> None:
    shop = project.parent / "shop.duckdb"
    make_orders(shop, 10)
    with duckdb.connect(str(shop)) as con:
        con.execute("update orders set email = 'not-an-email', phone = null, ip = null where order_id > 2")
    assets = capi_sync_assets(project, max_rejected_share=0.2)
    result = dg.materialize([assets], resources=resources(project.parent))
    assert result.success  # the run itself succeeded: the rows are kept back with their reasons
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["rejected_share"].value == 0.8
    assert metadata_of(result, dg.AssetKey(["capi_sync", "purchases"]))["rejected_by_reason"]


def test_a_failed_run_fails_the_step_after_the_other_pipelines_ran(project: Path, graph: FakeGraph) -> None:
    make_orders(project.parent / "shop.duckdb", 3)
    graph.token = "another-token"  # Meta refuses the token: the run fails
    assets = capi_sync_assets(project)
    result = dg.materialize([assets], resources=resources(project.parent), raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "purchases" in str(failure.event_specific_data.error)  # type: ignore[union-attr]
    assert TOKEN not in orjson.dumps(str(failure.event_specific_data)).decode()  # type: ignore[union-attr]


def test_partitions_in_another_timezone_than_the_pipelines_are_refused(project: Path) -> None:
    partitions = dg.DailyPartitionsDefinition(start_date="2026-11-01", timezone="Europe/Paris")
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="timezone"):
        capi_sync_assets(project, partitions_def=partitions)
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="not selected"):
        capi_sync_assets(project, deps={"nope": "x"})


def readme_block(first_line: str) -> str:
    """The README's Python example that starts with `first_line`, as a user would copy it."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    start = text.index(f"```python\n{first_line}\n") + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_readmes_definitions_load_and_materialize(
    project: Path, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy

    make_orders(project.parent / "shop.duckdb", 12)
    (project.parent / "definitions.py").write_text(readme_block("# definitions.py"))
    state = project.parent / "readme-state.db"
    monkeypatch.setenv("CAPI_SYNC_STATE", str(state))
    monkeypatch.chdir(project.parent)
    example = runpy.run_path(str(project.parent / "definitions.py"))
    defs = example["defs"]
    dg.Definitions.validate_loadable(defs)
    result = dg.materialize([example["meta_events"]], resources=defs.resources)
    assert result.success
    assert metadata_of(result, dg.AssetKey(["capi_sync", "purchases"]))["events_sent"] == 12
    assert example["meta_events"].op.pool == "meta_graph_api"
    runs = json_lines(capi_sync(project.parent, "--state", str(state), "runs", "--json").stdout)
    assert [run["events_sent"] for run in runs] == [12]
