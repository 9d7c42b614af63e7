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
from typing import Any, Final

import phonenumbers

from capi_sync.errors import InvalidValue
from capi_sync.mappings.fields import LEAD_ID_DIGITS
from capi_sync.mappings.reference import reference

Normalizer = Callable[[Any, "str | None"], str]

# Trimmed from both ends of every value: the whitespace Python's `str.strip()` removes (tabs,
# newlines, no-break and ideographic spaces ...), plus the zero-width space and the byte-order mark
# that spreadsheet exports leave behind. The pushdown SQL trims exactly this set too.
TRIMMED: Final = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\u200b\ufeff"
)


def _text(value: Any) -> str:
    """The value as trimmed text, NFKC-folded: compatibility forms (fullwidth `Ｊｏｈｎ`, ligatures,
    circled or superscript digits, no-break spaces) become the plain characters Meta hashes, and a
    decomposed `é` (e + accent) becomes the composed one the pixel sends.

    BLOB bytes are read as UTF-8 (else `invalid_utf8`), never as Python's `b'...'` repr.
    """
    if value.__class__ is not str:
        value = decode_utf8(value) if isinstance(value, bytes | bytearray | memoryview) else str(value)
    text: str = value
    if text.isascii():
        return text.strip(TRIMMED)
    return unicodedata.normalize("NFKC", text).strip(TRIMMED)


def _opaque_text(value: Any) -> str:
    """Ids are opaque: trimmed and NFC only, so they hash like the id the pixel sends."""
    if value.__class__ is not str:
        value = decode_utf8(value) if isinstance(value, bytes | bytearray | memoryview) else str(value)
    return unicodedata.normalize("NFC", value).strip(TRIMMED)


def is_blank(text: str) -> bool:
    """Nothing but trimmed characters: the value is absent, not invalid."""
    return not text.strip(TRIMMED)


def decode_utf8(value: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidValue("invalid_utf8") from None


def _ascii_digits(text: str) -> str:
    """Decimal digits of any script as ASCII digits (Arabic-Indic `١` -> `1`; NFKC in `_text`
    already made `①` and fullwidth `５` plain). A digit is a digit whatever its script, and Meta
    hashes ASCII. Other characters are left for the key's rules.
    """
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


# Variation selectors and the grapheme joiner are marks (category Mn) that only change how the
# character before them is drawn (`❤️` is U+2764 U+FE0F): never part of a name.
_NOT_LETTER_MARKS: Final = frozenset(
    [chr(code) for code in range(0xFE00, 0xFE10)]
    + [chr(code) for code in range(0xE0100, 0xE01F0)]
    + ["\u034f", "\u180b", "\u180c", "\u180d", "\u180f"]
)
_ASCII_NON_LETTERS: Final = {code: None for code in range(128) if not chr(code).isalpha()}


def letters(text: str) -> str:
    """Lowercase letters of any script, with the marks that belong to them (accents, the vowel
    signs of Indic scripts); no spaces, digits, punctuation, symbols, emoji or selectors."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered.translate(_ASCII_NON_LETTERS)
    kept: list[str] = []
    after_letter = False
    for ch in lowered:
        if ch.isalpha():
            kept.append(ch)
            after_letter = True
        elif after_letter and unicodedata.category(ch) in ("Mn", "Mc") and ch not in _NOT_LETTER_MARKS:
            kept.append(ch)
        else:
            after_letter = False
    return "".join(kept)


def fold_accents(text: str) -> str:
    """`québec` -> `quebec`: for looking names up in tables, never for what is hashed."""
    if text.isascii():
        return text
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def email(value: Any, country: str | None) -> str:
    """Trim, lowercase; must be local@domain.tld with no whitespace, control or invisible character."""
    text = _text(value).lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or "@" in local or "." not in domain.strip("."):
        raise InvalidValue("invalid_email")
    if " " in text or not text.isprintable():  # isprintable: no Cc, Cf, Zs/Zl/Zp but space, ...
        raise InvalidValue("invalid_email")
    return text


def phone(value: Any, country: str | None, *, default_region: str | None = None) -> str:
    """Digits with the country code, or dropped: never digits the writer did not mean.

    - `+` or `00` numbers: sent when valid with their country code, digits unchanged (symbols,
      letters and the leading zeros of the international prefix go, and a trunk zero written
      `(0)`, nothing else).
    - national numbers: the row's country, else the pipeline's `default_phone_region`, says whose
      rules read them (libphonenumber adds the country code and drops the trunk prefix); a number
      that is not valid there may still be one written with its country code and no `+`.
    - neither a `+`/`00` nor a region: sent only when the digits as written are a valid number
      with its country code; else `phone_without_country_code`.
    An extension (`ext. 123`, `x123`, `#123`, `;ext=123`) is not part of the number: it is cut.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # spreadsheets turn phone numbers into floats
    text = _ascii_digits(_text(value))
    if ("x" in text or "X" in text or "#" in text) and (extension := _EXTENSION.search(text)):
        text = text[: extension.start()].rstrip(TRIMMED)
    if "(0)" in text and text.startswith(("+", "00")):
        text = text.replace("(0)", "", 1)  # `+33 (0)6 ...`: the trunk zero marked as not dialled from abroad
    digits = _without_nanp_punctuation(text).lstrip("+")
    if not (digits.isascii() and digits.isdigit()):
        digits = (
            text.translate(_ASCII_NON_DIGITS) if text.isascii() else "".join(filter(_is_ascii_digit, text))
        )
    if not digits:
        raise InvalidValue("invalid_phone")
    international = text.startswith("+") or digits.startswith("00")
    region = (country or default_region or "").upper() or None
    if international or region is None:
        # The digits must already carry their country code: sent exactly as written.
        rule = "invalid_phone" if international else "phone_without_country_code"
        significant = digits.lstrip("0")
        if (national := _nanp_international(significant)) is not None:
            if _nanp_is_valid(national):  # what the library path below says for +1, faster
                return significant
            raise InvalidValue(rule)
        if (number := _valid_international(significant)) is None:
            raise InvalidValue(rule)
        return _unaltered_e164(number, significant, rule)
    try:
        if (national := _nanp_national(text, digits, region)) is not None and _nanp_is_valid(national):
            return "1" + national  # what the library path below returns for it, faster
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_valid_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    # A national-looking string may already start with its country code (`447946095800`).
    significant = digits.lstrip("0")
    if (number := _valid_international(significant)) is None:
        raise InvalidValue("invalid_phone")
    return _unaltered_e164(number, significant, "invalid_phone")


# An extension at the end of a number: `ext. 123`, `extension 123`, `x123`, `#123`, `;ext=123`.
_EXTENSION: Final = re.compile(
    r"(?<=[0-9)\s.])[\s,;]*(?:ext(?:ension|n)?|xt|x|#)[\s.:=]*[0-9]{1,10}$", re.IGNORECASE
)


def _unaltered_e164(number: phonenumbers.PhoneNumber, significant: str, rule: str) -> str:
    """The number's E.164 digits, if they are the digits given: the library may read a trunk prefix
    after the country code (`+44 020 ...`) or a carrier code out of them, and Meta would then be
    sent digits that were never written."""
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    if e164 != significant:
        raise InvalidValue(rule)
    return e164


_ASCII_NON_DIGITS: Final = {code: None for code in range(128) if not chr(code).isdigit()}


def _is_ascii_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


_NANP_FAST_REGIONS: Final = frozenset({"US", "CA"})


def _nanp_international(significant: str) -> str | None:
    """The ten digits after `1` of digits that carry country code 1 (`1` then 2-9, eleven in all)."""
    if len(significant) == 11 and significant[0] == "1" and significant[1] not in "01":
        return significant[1:]
    return None


def _nanp_national(text: str, digits: str, region: str) -> str | None:
    """The ten digits after `1` of a national US/Canadian number, where the library would read them
    so: for US/CA rows, text of digits and ` ()-.` only, ten digits starting 2-9 or eleven
    starting `1` then 2-9. Anything else gets None and goes through the library (tests hold the
    two paths equal).
    """
    if region not in _NANP_FAST_REGIONS or _without_nanp_punctuation(text) != digits:
        return None
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return digits if len(digits) == 10 and digits[0] not in "01" else None


def _without_nanp_punctuation(text: str) -> str:
    """`text` minus ` ()-.`; chained replaces beat `str.translate` several times on short strings."""
    return text.replace(" ", "").replace("-", "").replace("(", "").replace(")", "").replace(".", "")


_NanpRule = tuple["re.Pattern[str] | None", "re.Pattern[str]", "re.Pattern[str]"]


@lru_cache(maxsize=1)
def _nanp_rules() -> tuple[_NanpRule, ...]:
    """The reference's NANP regions as compiled regexes: (leading digits, general, any type)."""
    return tuple(
        (
            re.compile(region.leading) if region.leading is not None else None,
            re.compile(region.general or "(?!)"),
            re.compile("|".join(f"(?:{pattern})" for pattern in region.types) or "(?!)"),
        )
        for region in reference().nanp
    )


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
    """The number these digits make after a `+`, if libphonenumber finds it valid."""
    if not digits:
        return None
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def name(value: Any, country: str | None) -> str:
    """First or last name: lowercase letters only, UTF-8 letters kept (`Valéry` -> `valéry`)."""
    text = letters(_text(value))
    if not text:
        raise InvalidValue("invalid_name")
    return text


def gender(value: Any, country: str | None) -> str:
    """`m` or `f`; anything else is dropped rather than guessed."""
    try:
        return reference().genders[_text(value).lower()]
    except KeyError:
        raise InvalidValue("invalid_gender") from None


DATE_ORDERS: Final = ("mdy", "dmy", "ymd")


def birth_date(value: Any, country: str | None, *, date_order: str | None = None) -> str:
    """YYYYMMDD from a date, a datetime, or text in the forms people write (see `_parse_date`)."""
    if isinstance(value, dt.datetime):
        day = value.date()
    elif isinstance(value, dt.date):
        day = value
    else:
        day = _parse_date(_ascii_digits(_text(value)), date_order)
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


_MONTHS: Final = {
    name: number
    for number, names in enumerate(
        (("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",),
         ("jun", "june"), ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"),
         ("oct", "october"), ("nov", "november"), ("dec", "december")),
        start=1,
    )
    for name in names
}  # fmt: skip
_ORDINAL_SUFFIXES: Final = frozenset({"st", "nd", "rd", "th"})
_DATE_TEXT: Final = re.compile(r"[0-9a-z ,./-]+")
_DATE_TOKEN: Final = re.compile(r"[0-9]+|[a-z]+")
# A time of day after the date (`1990-12-31T00:00:00Z`, `12/31/1990 10:30`): not part of a birth date.
_TIME_OF_DAY: Final = re.compile(
    r"[t ]+[0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)? *(?:z|utc|gmt|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)


def date_order_note(date_order: str | None) -> str:
    """How ambiguous birth dates read, for the match-quality table."""
    how = {
        None: "month first (01/02/1990 is January 2), day first with dots (01.02.1990 is 1 February)",
        "mdy": "month first (01/02/1990 is January 2)",
        "dmy": "day first (01/02/1990 is 1 February)",
        "ymd": "dropped: only year-first dates and those whose day is above 12 are read",
    }[date_order]
    return f"db: dates whose day and month could swap are {how} (date_order: {date_order or 'unset'})"


def _parse_date(text: str, date_order: str | None) -> dt.date:
    """A calendar date from the forms people write, with or without punctuation (Meta asks for a
    range of month, day and year combinations), and nothing it would have to guess:

    - year first: `1990-12-31`, `1990.12.31`, `1990/12/31`, `19901231`;
    - a month name: `December 31, 1990`, `31 Dec 1990`, `Dec. 31st 1990`;
    - day and month before a four-digit year: `12/31/1990`, `31-12-1990`, `12311990`. When both
      could be the month (`01/02/1990`), `date_order` says which comes first: `mdy`, `dmy`, or
      `ymd` (drop such dates); unset, month first, except with dots (`01.02.1990`), day first.
    Two-digit years and digit runs other than eight (`1990123`) are dropped, never guessed.
    """
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        try:  # the ISO shape most warehouses export, fast
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
    text = _TIME_OF_DAY.sub("", text.lower(), count=1)
    if not _DATE_TEXT.fullmatch(text):
        raise InvalidValue("invalid_date")
    numbers: list[str] = []
    month: int | None = None
    previous = ""
    for token in _DATE_TOKEN.findall(text):
        if token.isdigit():
            numbers.append(token)
        elif token in _ORDINAL_SUFFIXES and previous.isdigit():
            pass
        elif token in _MONTHS and month is None:
            month = _MONTHS[token]
        else:
            raise InvalidValue("invalid_date")
        previous = token
    if month is not None:
        years = [n for n in numbers if len(n) == 4]
        days = [n for n in numbers if len(n) <= 2]
        if len(numbers) != 2 or len(years) != 1 or len(days) != 1:
            raise InvalidValue("invalid_date")
        return _calendar_date(int(years[0]), month, int(days[0]))
    if len(numbers) == 1 and len(run := numbers[0]) == 8:
        try:
            compact = _calendar_date(int(run[:4]), int(run[4:6]), int(run[6:]))
        except InvalidValue:
            pass
        else:
            if 1900 <= compact.year <= _current_year():
                return compact
        return _day_and_month(run[:2], run[2:4], run[4:], date_order, dotted=False)
    if len(numbers) == 3:
        first, second, third = numbers
        if len(first) == 4 and len(second) <= 2 and len(third) <= 2:
            return _calendar_date(int(first), int(second), int(third))
        if len(third) == 4 and len(first) <= 2 and len(second) <= 2:
            dotted = text[len(first) : len(first) + 1] == "."
            return _day_and_month(first, second, third, date_order, dotted=dotted)
    raise InvalidValue("invalid_date")


def _day_and_month(first: str, second: str, year: str, date_order: str | None, *, dotted: bool) -> dt.date:
    """Day and month in either order before the year: whichever is above 12 is the day; when
    both could be the month, `date_order` decides (see `_parse_date`)."""
    a, b = int(first), int(second)
    if a > 12 and b <= 12:
        day, month = a, b
    elif b > 12 or a == b:
        month, day = a, b
    else:
        order = date_order or ("dmy" if dotted else "mdy")
        if order == "mdy":
            month, day = a, b
        elif order == "dmy":
            day, month = a, b
        else:
            raise InvalidValue("invalid_date")
    return _calendar_date(int(year), month, day)


def _calendar_date(year: int, month: int, day: int) -> dt.date:
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise InvalidValue("invalid_date") from None


def city(value: Any, country: str | None) -> str:
    """Lowercase letters only: `New York` -> `newyork`."""
    text = letters(_text(value))
    if not text:
        raise InvalidValue("invalid_city")
    return text


def _subdivision_codes(country: str | None) -> dict[str, str]:
    """Subdivision names, abbreviations and codes of one country (accents folded), mapped to the
    short code Meta expects. Without a country: US states, then Canadian provinces, as Meta's
    own parameter builder reads them (their names and codes do not overlap)."""
    return reference().subdivisions.get(country.lower() if country else "", {})


def state(value: Any, country: str | None) -> str:
    """Two-letter code where the country has one (`California`, `Calif.`, `Califórnia` -> `ca`;
    `Québec` -> `qc`), else lowercase letters; without a country, US and Canadian names count."""
    text = letters(_text(value))
    if not text:
        raise InvalidValue("invalid_state")
    return _subdivision_codes(country).get(fold_accents(text), text)


_ZIP_REMOVED: Final = {ord(ch): None for ch in TRIMMED + "-"}


def zip_code(value: Any, country: str | None) -> str:
    """Lowercase, no spaces or dashes. US rows: the first five digits (`94035-1234`, `12345-6789-1234`
    -> the first five), with the leading zeros a number column lost put back (`2134` -> `02134`);
    rows without a country: the same for the US shapes, five or nine digits."""
    if isinstance(value, int):
        value = f"{value:05d}" if 0 <= value < 100000 else str(value)
    text = _ascii_digits(_text(value)).lower().translate(_ZIP_REMOVED)
    if not text or not text.isalnum():
        raise InvalidValue("invalid_zip")
    if text.isdigit() and text.isascii():
        if country == "us":
            return text[:5] if len(text) >= 5 else text.zfill(5) if len(text) >= 3 else text
        if country is None and len(text) in (5, 9):
            return text[:5]
    return text


def country_code(value: Any, country: str | None = None) -> str:
    """ISO 3166-1 alpha-2, lowercase, from a code (`US`, `USA`, `840`) or a name as people write it
    (`United-States`, `(US)`, `Türkiye`, `Ivory Coast`, `Great Britain`); never guessed."""
    return _country_code_of(_text(value))


@lru_cache(maxsize=1024)
def _country_code_of(text: str) -> str:  # cached on the text: a row's value may be a dict or a list
    try:
        return reference().countries[country_key(text)]
    except KeyError:
        raise InvalidValue("unknown_country") from None


def country_key(text: str) -> str:
    """Lowercase letters and digits, accents folded: `Côte d'Ivoire` -> `cotedivoire`."""
    return "".join(ch for ch in fold_accents(text.lower()) if ch.isalnum())


def external_id(value: Any, country: str | None) -> str:
    """Trimmed and lowercased so it hashes like the id the pixel sends."""
    text = _opaque_text(value).lower()
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


def lead_id(value: Any, country: str | None) -> str:
    """Meta's lead id: the 15 or 16-digit `leadgen_id` of a lead form; sent as it is, never hashed."""
    text = integer_id(value, country)
    if len(text) not in LEAD_ID_DIGITS:
        raise InvalidValue("invalid_lead_id")
    return text


def plain(value: Any, country: str | None) -> str:
    """Sent as given, trimmed."""
    text = _opaque_text(value)
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
    "lead_id": lead_id,
}


def normalizer_for(key: str) -> Normalizer:
    return NORMALIZERS.get(key, plain)
