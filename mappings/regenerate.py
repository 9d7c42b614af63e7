"""Writes `reference.json`, the tables the normalization rules look values up in, from the pinned
`pycountry` and `phonenumbers` and the hand-written aliases below.

    pip install -e '.[reference]' && python -m capi_sync.mappings.regenerate           # rewrite
    python -m capi_sync.mappings.regenerate --check    # exit 1 if the file is not what it would write

One file feeds the Python reference, the pushdown SQL and (through the plan) the native core, so
the three read the same tables; a test regenerates it and compares. Bumping either library changes
which values match, so it is a reviewed change of this file, never a side effect of an install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
import phonenumbers
import pycountry

from capi_sync.mappings import normalize
from capi_sync.mappings.reference import REFERENCE_FILE, NanpRegion

# Names people give countries that ISO 3166 and pycountry do not list (keys folded: see
# `normalize.country_key`).
COUNTRY_ALIASES = {
    "uk": "gb", "greatbritain": "gb", "britain": "gb", "england": "gb", "scotland": "gb", "wales": "gb",
    "northernireland": "gb", "america": "us", "unitedstatesofamerica": "us", "russia": "ru",
    "turkey": "tr", "turkiye": "tr", "vatican": "va", "vaticancity": "va", "holysee": "va",
    "ivorycoast": "ci", "southkorea": "kr", "republicofkorea": "kr", "northkorea": "kp",
    "dprk": "kp", "laos": "la", "syria": "sy", "macedonia": "mk", "northmacedonia": "mk",
    "micronesia": "fm", "palestine": "ps", "brunei": "bn", "capeverde": "cv", "burma": "mm",
    "swaziland": "sz", "easttimor": "tl", "holland": "nl", "uae": "ae", "emirates": "ae",
    "czechrepublic": "cz", "drc": "cd", "drcongo": "cd", "democraticrepublicofthecongo": "cd",
    "congokinshasa": "cd", "republicofthecongo": "cg", "congobrazzaville": "cg", "macau": "mo",
    "falklandislands": "fk", "usvirginislands": "vi", "britishvirginislands": "vg",
    "saintkitts": "kn", "stkittsandnevis": "kn", "stlucia": "lc", "stvincentandthegrenadines": "vc",
    "bosnia": "ba", "moldova": "md", "tanzania": "tz", "venezuela": "ve", "bolivia": "bo",
    "iran": "ir", "vietnam": "vn", "taiwan": "tw", "hongkong": "hk", "kyrgyzstan": "kg",
    "saotomeandprincipe": "st", "sainthelena": "sh", "mainlandchina": "cn", "prc": "cn",
    # Names in the country's own language, in Latin script.
    "deutschland": "de", "espana": "es", "brasil": "br", "italia": "it", "nederland": "nl",
    "osterreich": "at", "schweiz": "ch", "suisse": "ch", "svizzera": "ch", "polska": "pl",
    "sverige": "se", "norge": "no", "danmark": "dk", "suomi": "fi", "belgique": "be", "belgie": "be",
    "magyarorszag": "hu", "eire": "ie", "ceskarepublika": "cz", "cesko": "cz", "turkiyecumhuriyeti": "tr",
}  # fmt: skip

# How people write US states and Canadian provinces beyond their names and codes: the AP and
# Government Printing Office abbreviations (`Calif.`, `Fla.`, `Tex.`), French names of the
# provinces, and the capital's usual names. Keys are letters only, accents folded.
SUBDIVISION_ALIASES = {
    "us": {
        "ala": "al", "ariz": "az", "ark": "ar", "cal": "ca", "calif": "ca", "colo": "co", "conn": "ct",
        "del": "de", "fla": "fl", "ill": "il", "ind": "in", "kan": "ks", "kans": "ks", "mass": "ma",
        "mich": "mi", "minn": "mn", "miss": "ms", "mont": "mt", "neb": "ne", "nebr": "ne", "nev": "nv",
        "okla": "ok", "ore": "or", "oreg": "or", "penn": "pa", "penna": "pa", "tenn": "tn", "tex": "tx",
        "wash": "wa", "wva": "wv", "wis": "wi", "wisc": "wi", "wyo": "wy", "washingtondc": "dc",
        "districtofcolumbia": "dc", "virginislands": "vi", "usvirginislands": "vi",
    },
    "ca": {
        "alta": "ab", "man": "mb", "nfld": "nl", "newfoundland": "nl", "labrador": "nl", "ont": "on",
        "que": "qc", "pq": "qc", "sask": "sk", "pei": "pe", "nwt": "nt", "yukonterritory": "yt",
        "colombiebritannique": "bc", "nouveaubrunswick": "nb", "nouvelleecosse": "ns",
        "ileduprinceedouard": "pe", "terreneuveetlabrador": "nl", "terreneuve": "nl",
        "territoiresdunordouest": "nt",
    },
}  # fmt: skip

# Meta's documented values for `ge`, and the words people write for them.
GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}

# phonenumbers' number types, in the order its `_number_type_helper` tries them.
NUMBER_TYPES = (
    "premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
    "voicemail", "fixed_line", "mobile",
)  # fmt: skip


def countries() -> dict[str, str]:
    """Every key `normalize.country_key` gives for a country's codes, names, official and common
    names (and with a leading `the`), and for the aliases above, to its alpha-2 code."""
    table: dict[str, str] = {}
    for entry in pycountry.countries:
        code = entry.alpha_2.lower()
        for field, text in entry._fields.items():
            if field == "flag" or not text:
                continue
            key = normalize.country_key(str(text))
            table.setdefault(key, code)
            if field.endswith("name"):
                table.setdefault("the" + key, code)
    return dict(sorted((table | COUNTRY_ALIASES).items()))


def subdivisions() -> dict[str, dict[str, str]]:
    """Per country: the folded letters of each subdivision's name, its two-letter code, and the
    aliases above, to that code; under "" the US table, then Canada's where it adds a key.

    Read from pycountry's data file in its order, not through `pycountry.subdivisions.get`: that
    returns a set, so where two subdivisions share a name (`Papua`, `Veszprém`, `Toshkent`) the
    code sent, and its hash, changed from one process to the next. Here a region beats a
    subdivision inside it (`La Rioja` -> `ri`, not the province `lo`), the later of two peers in
    the file wins, and a code always stands for itself.
    """
    entries = orjson.loads(Path(pycountry.subdivisions.filename).read_bytes())["3166-2"]
    names: dict[str, dict[str, str]] = {}
    shorts: dict[str, set[str]] = {}
    # Stable sort: nested subdivisions first, so the regions that contain them overwrite them.
    for entry in sorted(entries, key=lambda entry: "parent" not in entry):
        country, _, short = entry["code"].lower().partition("-")
        if len(short) == 2 and short.isalpha():
            names.setdefault(country, {})[normalize.fold_accents(normalize.letters(entry["name"]))] = short
            shorts.setdefault(country, set()).add(short)
    table = {
        country: codes | SUBDIVISION_ALIASES.get(country, {}) | {short: short for short in shorts[country]}
        for country, codes in names.items()
    }
    table[""] = table["ca"] | table["us"]
    return {country: dict(sorted(codes.items())) for country, codes in sorted(table.items())}


def nanp() -> list[NanpRegion]:
    """Per region of country code 1, in the order `phonenumbers.is_valid_number` tries them: its
    leading digits, and the general and type patterns that admit ten-digit numbers."""
    regions = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            continue
        types = [pattern for name in NUMBER_TYPES if (pattern := _ten_digit_pattern(getattr(metadata, name)))]
        regions.append(
            NanpRegion(
                region=region,
                leading=metadata.leading_digits,
                general=_ten_digit_pattern(metadata.general_desc),
                types=tuple(dict.fromkeys(types)),  # fixed-line and mobile are often the same
            )
        )
    return regions


def _ten_digit_pattern(desc: Any) -> str | None:
    """A description's pattern if it admits ten-digit numbers (no lengths listed admits any)."""
    if desc is None or not desc.national_number_pattern:
        return None
    if desc.possible_length and 10 not in desc.possible_length:
        return None
    return str(desc.national_number_pattern)


def document() -> bytes:
    tables = {
        "generated_from": {"pycountry": _version("pycountry"), "phonenumbers": phonenumbers.__version__},
        "countries": countries(),
        "currencies": sorted(currency.alpha_3 for currency in pycountry.currencies),
        "subdivisions": subdivisions(),
        "nanp": [region._asdict() for region in nanp()],
        "genders": GENDERS,
    }
    return orjson.dumps(tables, option=orjson.OPT_INDENT_2) + b"\n"


def _version(distribution: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version(distribution)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="Compare instead of writing.")
    args = parser.parse_args(argv)
    wanted = document()
    if args.check:
        if REFERENCE_FILE.read_bytes() != wanted:
            print(f"{REFERENCE_FILE} is not what these libraries give: regenerate it", file=sys.stderr)
            return 1
        return 0
    REFERENCE_FILE.write_bytes(wanted)
    print(f"wrote {REFERENCE_FILE} ({len(wanted):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
