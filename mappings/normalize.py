"""One normalizer per customer-information key, so hashes match what Meta computes.

Each takes the raw value and the row's already-normalized country (alpha-2, or None) and returns the
normalized string, or raises `InvalidValue` naming the rule. Rules: capi-rules.md section 4; where the
SDKs are looser than Meta's documentation, the documentation wins.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import time
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import orjson
import phonenumbers
import pycountry


class InvalidValue(ValueError):
    """A value breaks a normalization rule; `rule` is a stable identifier shown to users."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        super().__init__(rule)


Normalizer = Callable[[Any, "str | None"], str]


def _text(value: Any) -> str:
    """NFC so that a decomposed `é` (e + accent) hashes like the composed one the pixel sends.

    BLOB bytes are read as UTF-8 (else `invalid_utf8`), never as Python's `b'...'` repr.
    """
    if value.__class__ is not str:
        value = decode_utf8(value) if isinstance(value, bytes | bytearray | memoryview) else str(value)
    return unicodedata.normalize("NFC", value).strip()


def decode_utf8(value: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidValue("invalid_utf8") from None


def _ascii_digits(text: str) -> str:
    """Digits of any script as ASCII digits, after NFKC (`①` -> `1`, fullwidth `５` -> `5`).

    The keys made of digits (phone, zip, birth date, numeric ids) read them so: a digit is a
    digit whatever its script, and Meta hashes ASCII. Other characters are left for the key's rules.
    """
    if text.isascii():
        return text
    folded = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in folded)


def _letters(text: str) -> str:
    """Lowercase letters (any script) and their accents only; no spaces, digits or punctuation."""
    return "".join(ch for ch in text.lower() if ch.isalpha() or unicodedata.category(ch) == "Mn")


def email(value: Any, country: str | None) -> str:
    """Trim, lowercase; must be local@domain.tld with no spaces."""
    text = _text(value).lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or " " in text or "@" in local:
        raise InvalidValue("invalid_email")
    return text


def phone(value: Any, country: str | None, *, default_region: str | None = None) -> str:
    """Digits with the country code: `+`/`00` numbers as given, national ones via the row's region.

    The region is the row's country, else the pipeline's `default_phone_region`; with neither, only a
    number that is valid as written with its country code is accepted.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # spreadsheets turn phone numbers into floats
    text = _ascii_digits(_text(value))
    digits = _without_nanp_punctuation(text).lstrip("+")
    if not (digits.isascii() and digits.isdigit()):
        digits = (
            text.translate(_ASCII_NON_DIGITS) if text.isascii() else "".join(filter(_is_ascii_digit, text))
        )
    if not digits:
        raise InvalidValue("invalid_phone")
    international = text.startswith("+") or digits.startswith("00")
    region = (country or default_region or "").upper() or None
    # Without a region, a number is only usable if it already carries its country code.
    rule = "invalid_phone" if international or region else "phone_without_country_code"
    try:
        if (significant := _nanp_significant(text, digits, region, international)) is not None:
            if international or _nanp_is_valid(significant):
                return "1" + significant  # what the library path below returns for it, faster
            number = phonenumbers.PhoneNumber(country_code=1, national_number=int(significant))
            number = _valid_international(digits) or number
        elif international or not region:
            number = phonenumbers.parse("+" + digits.lstrip("0"), None)
        else:
            number = phonenumbers.parse(text, region)
            if not phonenumbers.is_valid_number(number):
                # A national-looking string may already start with its country code.
                number = _valid_international(digits) or number
    except phonenumbers.NumberParseException:
        raise InvalidValue(rule) from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidValue(rule)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]


_ASCII_NON_DIGITS: Final = {code: None for code in range(128) if not chr(code).isdigit()}


def _is_ascii_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


_NANP_FAST_REGIONS: Final = frozenset({"US", "CA"})


def _nanp_significant(text: str, digits: str, region: str | None, international: bool) -> str | None:
    """The ten digits after `1` of a plain US/Canadian number, where the library would read them so.

    International (`+1 ...`, `001 ...`): the library parses `+` and the digits, so eleven digits
    `1` then 2-9 are country code 1 plus ten. National, for US/CA rows: only digits and ` ()-.`,
    ten digits starting 2-9 or eleven starting `1` then 2-9. Anything else gets None and goes
    through the library (tests hold the two paths equal).
    """
    if international:
        digits = digits.lstrip("0")
        return digits[1:] if len(digits) == 11 and digits[0] == "1" and digits[1] not in "01" else None
    if region not in _NANP_FAST_REGIONS or _without_nanp_punctuation(text) != digits:
        return None
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return digits if len(digits) == 10 and digits[0] not in "01" else None


def _without_nanp_punctuation(text: str) -> str:
    """`text` minus ` ()-.`; chained replaces beat `str.translate` several times on short strings."""
    return text.replace(" ", "").replace("-", "").replace("(", "").replace(")", "").replace(".", "")


_NanpRule = tuple["re.Pattern[str] | None", "re.Pattern[str]", "re.Pattern[str]"]
_nanp_rules_cache: list[tuple[_NanpRule, ...]] = []


def _nanp_rules() -> tuple[_NanpRule, ...]:
    if not _nanp_rules_cache:
        _nanp_rules_cache.append(_compile_nanp_rules())
    return _nanp_rules_cache[0]


def _compile_nanp_rules() -> tuple[_NanpRule, ...]:
    """Per region of country code 1, in the library's order: (leading digits, general, any type).

    `phonenumbers.is_valid_number` picks the first region whose leading digits match (or, without
    leading digits, whose patterns match) and then asks whether the number has a type there: the
    general pattern and one of the type patterns, for its length. These are the same regexes,
    joined once, for ten-digit numbers.
    """
    rules = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None:
            continue
        general = _desc_pattern(metadata.general_desc)
        types = [  # fixed-line and mobile patterns are often the same: join each once
            pattern
            for desc in (getattr(metadata, name) for name in _NUMBER_TYPE_DESCS)
            if (pattern := _desc_pattern(desc)) is not None
        ]
        types = list(dict.fromkeys(types))
        leading = re.compile(metadata.leading_digits) if metadata.leading_digits is not None else None
        rules.append(
            (
                leading,
                re.compile(general or "(?!)"),
                re.compile("|".join(f"(?:{pattern})" for pattern in types) or "(?!)"),
            )
        )
    return tuple(rules)


_NUMBER_TYPE_DESCS: Final = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


def _desc_pattern(desc: Any) -> str | None:
    """A description's pattern if it admits ten-digit numbers (no lengths listed admits any)."""
    if desc is None or not desc.national_number_pattern:
        return None
    if desc.possible_length and 10 not in desc.possible_length:
        return None
    return str(desc.national_number_pattern)


def _nanp_is_valid(significant: str) -> bool:
    """`phonenumbers.is_valid_number` for +1 and these ten digits, without its per-call overhead."""
    for leading, general, types in _nanp_rules():
        if leading is not None:
            if leading.match(significant):
                return bool(general.fullmatch(significant) and types.fullmatch(significant))
        elif general.fullmatch(significant) and types.fullmatch(significant):
            return True
    return False


def _valid_international(digits: str) -> phonenumbers.PhoneNumber | None:
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def name(value: Any, country: str | None) -> str:
    """First or last name: lowercase letters only, UTF-8 letters kept (`Valéry` -> `valéry`)."""
    text = _letters(_text(value))
    if not text:
        raise InvalidValue("invalid_name")
    return text


_GENDERS: Final = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}


def gender(value: Any, country: str | None) -> str:
    """`m` or `f`; anything else is dropped rather than guessed."""
    try:
        return _GENDERS[_text(value).lower()]
    except KeyError:
        raise InvalidValue("invalid_gender") from None


_DATE_FORMATS: Final = ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y", "%Y/%m/%d", "%d.%m.%Y", "%m-%d-%Y")


def birth_date(value: Any, country: str | None) -> str:
    """YYYYMMDD from a date, datetime or common string; US month-first when ambiguous."""
    if isinstance(value, dt.datetime):
        day = value.date()
    elif isinstance(value, dt.date):
        day = value
    else:
        day = _parse_date(_ascii_digits(_text(value)))
    if not 1900 <= day.year <= _current_year():
        raise InvalidValue("invalid_date")
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"  # strftime's %Y%m%d, a third of its cost


_year_until: list[tuple[int, float]] = [(0, 0.0)]  # (this year, when it ends), refreshed on expiry


def _current_year() -> int:
    """`date.today().year` without building a date per value: birth dates are checked against it."""
    year, until = _year_until[0]
    if time.time() >= until:
        today = dt.date.today()
        next_year = dt.datetime(today.year + 1, 1, 1).timestamp()  # local midnight, like today()
        year, until = today.year, next_year
        _year_until[0] = (year, until)
    return year


def _parse_date(text: str) -> dt.date:
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:  # the ISO shape most warehouses export: what strptime("%Y-%m-%d") reads, faster
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    try:
        # Day-first when the first part cannot be a month (31/12/1990).
        return dt.datetime.strptime(text, "%d/%m/%Y").date()
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).date()
    except ValueError:
        raise InvalidValue("invalid_date") from None


def city(value: Any, country: str | None) -> str:
    """Lowercase letters only: `New York` -> `newyork`."""
    text = _letters(_text(value))
    if not text:
        raise InvalidValue("invalid_city")
    return text


def _subdivision_codes(country: str) -> dict[str, str]:
    """Subdivision names and codes of one country, mapped to the short code Meta expects."""
    return _subdivision_table().get(country.lower(), {})


@lru_cache(maxsize=1)
def _subdivision_table() -> dict[str, dict[str, str]]:
    """Per country: letters of each subdivision's name, and each two-letter code, to that code.

    Read from pycountry's data file in its order, not through `pycountry.subdivisions.get`: that
    returns a set, so where two subdivisions share a name (`Papua`, `Veszprém`, `Toshkent`) the
    code sent, and its hash, changed from one process to the next. Here a region beats a
    subdivision inside it (`La Rioja` -> `ri`, not the province `lo`), the later of two peers in
    the file wins, and a code always stands for itself. It also keeps 5 MB of pycountry's
    objects out of every run.
    """
    with Path(pycountry.subdivisions.filename).open("rb") as file:
        entries = orjson.loads(file.read())["3166-2"]
    names: dict[str, dict[str, str]] = {}
    shorts: dict[str, set[str]] = {}
    # Stable sort: nested subdivisions first, so the regions that contain them overwrite them.
    for entry in sorted(entries, key=lambda entry: "parent" not in entry):
        country, _, short = entry["code"].lower().partition("-")
        if len(short) == 2 and short.isalpha():
            names.setdefault(country, {})[_letters(entry["name"])] = short
            shorts.setdefault(country, set()).add(short)
    return {country: codes | {short: short for short in shorts[country]} for country, codes in names.items()}


def state(value: Any, country: str | None) -> str:
    """Two-letter code where the country has one (`California` -> `ca`), else lowercase letters."""
    text = _letters(_text(value))
    if not text:
        raise InvalidValue("invalid_state")
    for candidate in (country, "us") if country is None else (country,):
        if candidate and (code := _subdivision_codes(candidate).get(text)):
            return code
    return text


def zip_code(value: Any, country: str | None) -> str:
    """Lowercase, no spaces or dashes; US codes keep their first five digits (`94035-1234` -> `94035`)."""
    if isinstance(value, int):
        value = f"{value:05d}" if value < 100000 else str(value)
    text = _ascii_digits(_text(value)).lower().replace(" ", "").replace("-", "")
    if not text or not text.isalnum():
        raise InvalidValue("invalid_zip")
    if (country == "us" or country is None) and text.isdigit() and len(text) in (5, 9):
        return text[:5]
    return text


_COUNTRY_ALIASES: Final = {"uk": "gb", "u.k.": "gb", "u.s.": "us", "u.s.a.": "us", "america": "us"}


def country_code(value: Any, country: str | None = None) -> str:
    """ISO 3166-1 alpha-2, lowercase; names and alpha-3 codes are mapped (`United States` -> `us`)."""
    return _country_code_of(_text(value).lower())


@lru_cache(maxsize=1024)
def _country_code_of(text: str) -> str:  # cached on the text: a row's value may be a dict or a list
    if text in _COUNTRY_ALIASES:
        return _COUNTRY_ALIASES[text]
    try:
        return str(pycountry.countries.lookup(text).alpha_2).lower()
    except LookupError:
        raise InvalidValue("unknown_country") from None


def external_id(value: Any, country: str | None) -> str:
    """Trimmed and lowercased so it hashes like the id the pixel sends."""
    text = _text(value).lower()
    if not text:
        raise InvalidValue("empty")
    return text


def ip_address(value: Any, country: str | None) -> str:
    """A valid IPv4 or IPv6 address in its canonical form."""
    text = _text(value)
    if _is_canonical_ipv4(text):
        return text  # what ipaddress would print back, without building the object
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidValue("invalid_ip_address") from None


def _is_canonical_ipv4(text: str) -> bool:
    parts = text.split(".")
    if len(parts) != 4 or not text.isascii():
        return False
    for part in parts:  # a loop, not all(<generator>): this runs once per event
        if not part.isdigit() or (part[0] == "0" and part != "0") or int(part) > 255:
            return False
    return True


def integer_id(value: Any, country: str | None) -> str:
    """`fb_login_id` and `lead_id` are numeric ids."""
    text = _ascii_digits(_text(value))
    if not (text.isascii() and text.isdigit()):
        raise InvalidValue("not_an_integer")
    return text


def plain(value: Any, country: str | None) -> str:
    """Sent as given, trimmed."""
    text = _text(value)
    if not text:
        raise InvalidValue("empty")
    return text


# Keys whose normalizer reads the row's country; every other one ignores it (the memo relies on it).
READS_COUNTRY: Final = frozenset({"ph", "st", "zp"})

NORMALIZERS: Final[dict[str, Normalizer]] = {
    "em": email,
    "ph": phone,
    "fn": name,
    "ln": name,
    "ge": gender,
    "db": birth_date,
    "ct": city,
    "st": state,
    "zp": zip_code,
    "country": country_code,
    "external_id": external_id,
    "client_ip_address": ip_address,
    "fb_login_id": integer_id,
    "lead_id": integer_id,
}


def normalizer_for(key: str) -> Normalizer:
    return NORMALIZERS.get(key, plain)
