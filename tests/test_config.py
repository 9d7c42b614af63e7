"""Config errors stop before any row is read and name the pipeline, the field and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from capi_sync.config import load_config
from capi_sync.envsubst import substitute
from capi_sync.errors import ConfigError
from tests.conftest import TOKEN, cli, make_orders, write_pipelines
from tests.fake_graph import FakeGraph


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FB_ACCESS_TOKEN", TOKEN)
    make_orders(tmp_path / "shop.duckdb", 3)
    return tmp_path


def test_substitution_with_defaults_and_escapes() -> None:
    doc, errors = substitute(
        {"a": "${X}", "b": ["${MISSING:-fallback}"], "c": "$${literal}", "d": 5, "e": "x${X}y"},
        {"X": "1"},
    )
    assert doc == {"a": "1", "b": ["fallback"], "c": "${literal}", "d": 5, "e": "x1y"}
    assert errors == []


def test_missing_variable_names_it_and_where(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FB_ACCESS_TOKEN")
    write_pipelines(folder)
    assert cli("validate") == 2
    message = capsys.readouterr().err
    assert "FB_ACCESS_TOKEN" in message
    assert "destinations.meta.access_token" in message


def test_missing_variable_inside_a_pipeline_names_the_pipeline(folder: Path) -> None:
    path = write_pipelines(folder)
    path.write_text(path.read_text().replace("action_source: website", "action_source: '${SRC}'"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"FB_ACCESS_TOKEN": "x"})
    assert caught.value.errors == [
        "pipeline 'purchases': settings.action_source: environment variable SRC is not set"
    ]


def test_typo_in_a_column_is_caught_before_reading(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipelines(folder)
    path.write_text(path.read_text().replace("em: email", "em: emial"))
    assert cli("validate") == 2
    message = capsys.readouterr().err
    assert "pipeline 'purchases'" in message
    assert "mapping.customer_info.em: column 'emial' is not returned by the query" in message
    assert "{value: emial}" in message


def test_run_with_a_typo_reads_no_row_and_sends_nothing(folder: Path) -> None:
    with FakeGraph(token=TOKEN) as graph:
        path = write_pipelines(folder, graph.url)
        path.write_text(path.read_text().replace("cursor: updated_at", "cursor: updatd_at"))
        assert cli("run", "purchases") == 2
        assert graph.requests == []


def test_unknown_field_suggests_the_known_one(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_pipelines(folder)
    path.write_text(path.read_text().replace("em: email", "emial: email"))
    assert cli("validate") == 2
    message = capsys.readouterr().err
    assert "pipeline 'purchases': mapping" in message
    assert "unknown customer_info field 'emial'; did you mean 'email'?" in message


def test_unknown_setting_is_reported(folder: Path) -> None:
    path = write_pipelines(folder)
    path.write_text(path.read_text().replace("action_source: website", "action_sorce: website"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (
        "pipeline 'purchases': settings.action_sorce: unknown field; did you mean 'action_source'?"
        in caught.value.errors
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("event_name: {value: Purchase}, ", ""), "server_event.event_name is required"),
        (("action_source: website, ", ""), "action_source is required"),
        (
            ("loyalty_tier: tier", "value: tier"),
            "collides with the standard custom_data field 'value'",
        ),
        (
            ("warehouse: shop", "warehouse: shp"),
            "warehouse 'shp' is not defined (warehouses: shop)",
        ),
        (
            ("action_source: website", "action_source: web"),
            "settings.action_source: Input should be",
        ),
        (('pixel_id: "123456789"', "pixel_id: abc"), "pixel_id must be the numeric"),
        (("default_phone_region: US", "default_phone_region: XX"), "alpha-2 code"),
    ],
)
def test_config_rules(folder: Path, change: tuple[str, str], expected: str) -> None:
    path = write_pipelines(folder)
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value)


def test_duplicate_keys_are_an_error(folder: Path) -> None:
    path = folder / "pipelines.yaml"
    path.write_text("warehouses: {}\nwarehouses: {}\ndestinations: {}\npipelines: {}\n")
    with pytest.raises(ConfigError, match="duplicate key 'warehouses'"):
        load_config(path)


def test_customer_info_needs_a_field(folder: Path) -> None:
    path = write_pipelines(folder)
    text = path.read_text()
    start = text.index("customer_info:")
    end = text.index("custom_data:")
    path.write_text(text[:start] + text[end:])
    with pytest.raises(ConfigError, match="customer_info needs at least one field"):
        load_config(path)


def test_validate_ok(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_pipelines(folder)
    assert cli("validate") == 0
    assert "OK" in capsys.readouterr().out


def test_example_file_validates() -> None:
    example = Path(__file__).resolve().parents[1] / "pipelines.example.yaml"
    assert cli("validate", "-f", str(example)) == 0
