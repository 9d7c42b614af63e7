"""The tables the normalization rules look values up in: country names and codes, subdivisions,
currencies, the North American Numbering Plan's phone metadata and the gender words.

They come from one generated file, `reference.json` (written by `regenerate.py` from pinned
`pycountry` and `phonenumbers`), read by the Python reference, compiled into the pushdown SQL and
handed to the native core in its plan: the three cannot read different tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, NamedTuple

import orjson

REFERENCE_FILE: Final = Path(__file__).with_name("reference.json")


class NanpRegion(NamedTuple):
    """A region of country code 1 as `phonenumbers.is_valid_number` reads a ten-digit number there:
    the region is chosen by its leading digits (or, without any, by its patterns matching), then the
    number needs the general pattern and one of the types' patterns."""

    region: str
    leading: str | None
    general: str | None
    types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reference:
    generated_from: dict[str, str]  # library -> version the file was generated from
    countries: dict[str, str]  # `normalize.country_key` of a code, name or alias -> alpha-2
    currencies: frozenset[str]  # ISO 4217 alpha-3
    subdivisions: dict[str, dict[str, str]]  # alpha-2 ('' without a country) -> folded name -> code
    nanp: tuple[NanpRegion, ...]
    genders: dict[str, str]  # lowercase word -> m | f
    country_codes: frozenset[str]  # every alpha-2 code


@cache
def reference() -> Reference:
    tables = orjson.loads(REFERENCE_FILE.read_bytes())
    return Reference(
        generated_from=tables["generated_from"],
        countries=tables["countries"],
        currencies=frozenset(tables["currencies"]),
        subdivisions=tables["subdivisions"],
        nanp=tuple(
            NanpRegion(region["region"], region["leading"], region["general"], tuple(region["types"]))
            for region in tables["nanp"]
        ),
        genders=tables["genders"],
        country_codes=frozenset(tables["countries"].values()),
    )
