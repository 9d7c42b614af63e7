"""`capi-sync check` warns about an `api_version` near or past Meta's end of life."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from capi_sync.connectors import api_versions
from tests.conftest import make_orders, write_pipelines
from tests.fake_graph import FakeGraph
from tests.test_operations import capi_sync, json_lines


def test_the_table_is_newest_first_and_each_version_ends_after_it_began() -> None:
    released = [when for _name, when, _expires in api_versions.VERSIONS]
    assert released == sorted(released, reverse=True)
    assert all(expires is None or expires > when for _name, when, expires in api_versions.VERSIONS)


def test_verdicts_over_a_versions_life() -> None:
    day = dt.date(2026, 12, 4)
    assert api_versions.verdict("v26.0", day).ok
    assert "no end of life announced" in api_versions.verdict("v26.0", day).message
    near = api_versions.verdict("v25.0", day)  # ends 2027-02-23
    assert not near.ok
    assert "in 81 days" in near.message
    assert api_versions.verdict("v25.0", dt.date(2026, 11, 24)).ok  # 91 days before
    past = api_versions.verdict("v24.0", day)
    assert not past.ok
    assert "reached its end of life on 2026-11-10" in past.message
    assert "use v27.0" in past.message
    assert api_versions.verdict("v30.0", day).ok  # newer than the table
    assert not api_versions.verdict("v2.5", day).ok  # older than the table
    assert api_versions.SOURCE in past.message


def test_check_warns_and_still_passes(tmp_path: Path, graph: FakeGraph) -> None:
    make_orders(tmp_path / "shop.duckdb", 1)
    path = write_pipelines(tmp_path, graph.url)
    path.write_text(path.read_text().replace("graph_url:", "api_version: v23.0\n    graph_url:"))
    done = capi_sync(tmp_path, "check", "--json")
    assert done.returncode == 0, done.stderr
    (version,) = [line for line in json_lines(done.stdout) if line["check"] == "api_version"]
    assert (version["ok"], version["warning"]) == (True, True)
    assert "v23.0 reached its end of life on 2026-06-09" in version["result"]
    text = capi_sync(tmp_path, "check")
    assert text.returncode == 0
    assert "warning" in text.stdout
