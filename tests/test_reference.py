"""The reference tables are generated, never hand-edited: regenerating them from the pinned
libraries gives the committed file byte for byte, and every reader uses that one file."""

from __future__ import annotations

from importlib.metadata import version

import phonenumbers

from capi_sync.mappings import regenerate
from capi_sync.mappings.reference import REFERENCE_FILE, reference


def test_the_committed_file_is_what_the_pinned_libraries_give() -> None:
    assert REFERENCE_FILE.read_bytes() == regenerate.document()


def test_check_mode_fails_on_an_edited_file(tmp_path, monkeypatch, capsys) -> None:
    edited = tmp_path / "reference.json"
    edited.write_bytes(REFERENCE_FILE.read_bytes().replace(b'"calif": "ca"', b'"calif": "co"'))
    monkeypatch.setattr(regenerate, "REFERENCE_FILE", edited)
    assert regenerate.main(["--check"]) == 1
    assert "regenerate it" in capsys.readouterr().err
    monkeypatch.setattr(regenerate, "REFERENCE_FILE", REFERENCE_FILE)
    assert regenerate.main(["--check"]) == 0


def test_the_runtime_phonenumbers_is_the_one_the_tables_came_from() -> None:
    """The NANP tables and the library's own parsing (numbers outside +1) must be one release."""
    assert reference().generated_from == {
        "pycountry": version("pycountry"),
        "phonenumbers": phonenumbers.__version__,
    }


def test_the_tables_cover_what_the_rules_need() -> None:
    tables = reference()
    assert tables.countries["unitedstates"] == "us"
    assert tables.countries["uk"] == "gb"
    assert tables.subdivisions["us"]["calif"] == "ca"
    assert tables.subdivisions[""]["quebec"] == "qc"
    assert {"USD", "EUR", "JPY"} <= tables.currencies
    assert [region.region for region in tables.nanp][:2] == ["US", "AG"]
    assert tables.genders["female"] == "f"
