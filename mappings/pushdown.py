"""Hash pushdown (`pushdown: true`): customer information normalized and hashed inside the warehouse.

The user's query is wrapped so that each hashed customer-information column leaves the warehouse as
one computed text column instead of its plain value: a SHA-256 hex digest, NULL when blank, or
`!rule` when the value breaks a rule (the same rule `normalize.py` names). The mapper reads these
as it reads pre-hashed values, so every other part of a run is unchanged.

The SQL reproduces `normalize.py` byte for byte on a stated domain and nowhere else (`covers`
says, per value, whether it is inside):
- values trimmed of the same characters (`normalize.TRIMMED`: tabs, newlines, no-break spaces,
  zero-width spaces ...), then text over printable ASCII, those characters, and the Latin letters
  of U+00C0-U+024F that NFKC leaves alone (case mapped with an explicit `translate` table, so no
  collation or locale takes part); phone, zip and date text is ASCII only;
- phones: US/Canadian numbers as `+1`/`001` numbers (or, with no region at all, eleven digits
  starting `1`), or written nationally where the row's country (or `default_phone_region`) is US
  or CA; libphonenumber's NANP metadata, compiled into the SQL, decides validity; no extensions;
- birth dates as DATE columns, `YYYYMMDD`, or two-digit day and month with a four-digit year
  (`1990-12-31`, `1990.12.31`, `31/12/1990`, `12-31-1990`).
A value outside the domain is never guessed at and never sent plain: it comes back as
`!not_normalizable_in_warehouse` and is dropped like any invalid value, with that reason.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from hashlib import sha256
from typing import TYPE_CHECKING, Final

from capi_sync.errors import InvalidValue, PushdownError
from capi_sync.mappings import normalize
from capi_sync.mappings.dialects import DIALECT, Dialect
from capi_sync.mappings.fields import HASHED_USER_FIELDS
from capi_sync.mappings.reference import NanpRegion, reference
from capi_sync.mappings.spec import Column as ColumnSource
from capi_sync.mappings.spec import FieldSource, MappingSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

OUT_OF_DOMAIN: Final = "not_normalizable_in_warehouse"
PREFIX: Final = "capi_pd_"
DIALECTS: Final = ("duckdb", "postgres", "snowflake", "bigquery")
_ASCII_ONLY: Final = frozenset({"ph", "zp", "db"})


def pushed_column(key: str) -> str:
    return f"{PREFIX}{key}"


def pushed_keys(spec: MappingSpec, *, hash_external_id: bool) -> tuple[str, ...]:
    """The customer-information keys whose hashing moves into the warehouse."""
    hashed = [key for key in HASHED_USER_FIELDS if hash_external_id or key != "external_id"]
    return tuple(key for key in hashed if key in spec.customer_info)


def pushed_spec(spec: MappingSpec, *, hash_external_id: bool) -> MappingSpec:
    """The mapping as the mapper sees it: each pushed key reads its computed column."""
    keys = pushed_keys(spec, hash_external_id=hash_external_id)
    customer_info = {**spec.customer_info, **{key: pushed_column(key) for key in keys}}
    return spec.model_copy(update={"customer_info": customer_info})


# --- dialects ---------------------------------------------------------------------------------


# --- the character domain ---------------------------------------------------------------------


@cache
def domain_chars() -> tuple[str, ...]:
    """Characters whose Python handling (NFKC, trim, lower, letters, accent folding) SQL can mirror
    exactly: printable ASCII, the trimmed characters, and Latin letters that NFKC leaves alone,
    that are no mark, control or space, that lowercase to one character that is itself in the
    set, and whose accents fold away to one character.
    """
    chars = {chr(code) for code in range(0x20, 0x7F)} | set(normalize.TRIMMED)
    for code in range(0xC0, 0x250):
        char = chr(code)
        if unicodedata.category(char)[0] in "MCZ" or unicodedata.normalize("NFKC", char) != char:
            continue
        if len(char.lower()) == 1 and len(normalize.fold_accents(char.lower())) == 1:
            chars.add(char)
    while True:  # drop characters whose lowercase form left the set
        kept = {char for char in chars if char.lower() in chars}
        if kept == chars:
            return tuple(sorted(chars))
        chars = kept


@cache
def _ascii_domain() -> tuple[str, ...]:
    return tuple(sorted({chr(code) for code in range(0x20, 0x7F)} | set(normalize.TRIMMED)))


def in_domain(text: str, *, ascii_only: bool = False) -> bool:
    """What the generated SQL checks of a trimmed value first (used by `covers`, tests and docs)."""
    allowed = set(_ascii_domain() if ascii_only else domain_chars())
    return all(char in allowed for char in text)


def covers(key: str, value: object, country: object = None, default_region: str | None = None) -> bool:
    """Whether the SQL promises `normalize.py`'s answer for this raw text value of `key`, in a row
    whose raw country is `country`: the documented domain, value by value. Outside it the SQL
    answers `!not_normalizable_in_warehouse`, never a different digest.
    """
    text = str(value).strip(normalize.TRIMMED)
    if not text:
        return True
    if not in_domain(text, ascii_only=key in _ASCII_ONLY):
        return False
    if len(text) == 64 and all(char in "0123456789abcdefABCDEF" for char in text):
        return True
    country_text = None if country is None else str(country).strip(normalize.TRIMMED)
    if key in ("ph", "zp", "st") and country_text and not in_domain(country_text):
        return False
    if key == "ph":
        try:
            code = normalize.country_code(country_text) if country_text else None
        except InvalidValue:
            code = None
        return _phone_covered(text, code or default_region)
    if key == "db":
        return _date_covered(text)
    return True


def _phone_covered(text: str, region: str | None) -> bool:
    digits = "".join(char for char in text if char.isdigit())
    if not digits:
        return True  # invalid_phone either way
    if "(0)" in text or not re.fullmatch(r"[+]?[0-9 ().-]+", text):
        return False
    if text.startswith("+") or digits.startswith("00") or region is None:
        significant = digits.lstrip("0")
        return len(significant) == 11 and significant[0] == "1" and significant[1] not in "01"
    if region.lower() not in ("us", "ca") or "+" in text:
        return False
    national = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
    return len(national) == 10 and national[0] not in "01" and normalize._nanp_is_valid(national)


def _date_covered(text: str) -> bool:
    if re.fullmatch(r"[0-9]{4}[-/.][0-9]{2}[-/.][0-9]{2}|[0-9]{2}[-/.][0-9]{2}[-/.][0-9]{4}", text):
        return True
    if re.fullmatch(r"[0-9]{8}", text):  # read as YYYYMMDD in SQL; other readings are Python's
        try:
            return 1900 <= dt.date(int(text[:4]), int(text[4:6]), int(text[6:])).year <= dt.date.today().year
        except ValueError:
            return False
    return False


def _char_class(chars: Iterable[str], *, negate: bool = False) -> str:
    """A bracket expression of code-point ranges; endpoints are letters, digits, or ' '..'~'."""
    codes = sorted({ord(char) for char in chars})
    parts, start = [], None
    for index, code in enumerate(codes):
        if start is None:
            start = code
        if index + 1 == len(codes) or codes[index + 1] != code + 1:
            parts.append(chr(start) if start == code else f"{chr(start)}-{chr(code)}")
            start = None
    if "-" in parts:  # a lone '-' goes first, where it cannot read as a range
        parts.remove("-")
        parts.insert(0, "-")
    body = "".join(parts)
    for special in "]\\^":
        if special in body.replace(" -~", ""):
            raise ValueError(f"character class needs escaping: {special!r}")
    return f"[{'^' if negate else ''}{body}]"


@cache
def _case_maps() -> tuple[str, str]:
    upper = [char for char in domain_chars() if char.lower() != char]
    return "".join(upper), "".join(char.lower() for char in upper)


@cache
def _letter_class() -> str:
    """Lowercase letters of the domain; everything else is removed from names, cities and states."""
    return _char_class((c for c in domain_chars() if c.lower() == c and c.isalpha()), negate=True)


# --- reference tables compiled from the same libraries normalize.py uses ------------------------


@cache
def _fold_maps() -> tuple[str, str]:
    """Lowercase domain letters whose accents fold away (`é` -> `e`), for `translate`."""
    folded = [
        char for char in domain_chars() if char.lower() == char and normalize.fold_accents(char) != char
    ]
    return "".join(folded), "".join(normalize.fold_accents(char) for char in folded)


@cache
def _key_class() -> str:
    """What a country's lookup key keeps of folded, lowercase domain text: its letters and digits."""
    kept = {normalize.fold_accents(c.lower()) for c in domain_chars()}
    return _char_class((c for c in kept if c.isalnum()), negate=True)


@cache
def country_table() -> tuple[tuple[str, str], ...]:
    """Every lookup key `normalize.country_code` knows that domain text can give, with its code."""
    kept = set(_char_class_members(_key_class()))
    return tuple(
        (key, code) for key, code in sorted(reference().countries.items()) if key and set(key) <= kept
    )


def _char_class_members(negated_class: str) -> set[str]:
    """The domain characters a negated class built by `_char_class` does not match."""
    pattern = re.compile(negated_class)
    kept = {normalize.fold_accents(c.lower()) for c in domain_chars()}
    return {char for char in kept if len(char) == 1 and not pattern.fullmatch(char)}


@cache
def state_table() -> tuple[tuple[str, str, str], ...]:
    """(country, folded letters of a subdivision's name or abbreviation, code) wherever
    `normalize.state` maps one to a code; country '' holds the rows read without a country."""
    rows = []
    for code, names in reference().subdivisions.items():
        for name, short in names.items():
            if name != short and in_domain(name):
                rows.append((code, name, short))
    return tuple(sorted(rows))


# --- NANP validity, from libphonenumber's metadata ---------------------------------------------


def _portable_regex(pattern: str) -> str:
    """libphonenumber's patterns in the syntax all four engines share (no `(?:`, `\\d`, `?`)."""
    portable = pattern.replace("(?:", "(").replace("\\d", "[0-9]").replace("?", "{0,1}")
    if re.search(r"[^0-9\[\]()|{},\-]", portable):
        raise ValueError(f"unexpected construct in phone metadata: {pattern}")
    return portable


def _known_type(dialect: Dialect, number: str, region: NanpRegion) -> str:
    """SQL for `_number_type_helper(...) != UNKNOWN`: the general pattern and any specific type's."""
    if region.general is None or not region.types:
        return "false"
    # One alternation instead of a test per type: it fully matches exactly when one of them does.
    union = "|".join(f"({_portable_regex(pattern)})" for pattern in region.types)
    general_sql = dialect.full_match(number, dialect.pattern(_portable_regex(region.general)))
    return f"({general_sql} and {dialect.full_match(number, dialect.pattern(union))})"


def nanp_valid(dialect: Dialect, number: str) -> str:
    """SQL for `phonenumbers.is_valid_number(+1 number)`: the region is chosen as the library does."""
    branches = []
    for region in reference().nanp:
        known = _known_type(dialect, number, region)
        if region.leading is not None:
            lead = dialect.pattern(f"({_portable_regex(region.leading)})[0-9]*")
            branches.append(f"when {dialect.full_match(number, lead)} then {known}")
        else:
            branches.append(f"when {known} then true")
    return f"(case {' '.join(branches)} else false end)"


# --- per-key expressions ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    dialect: Dialect
    country: str  # SQL: the row's normalized country, NULL, or '!' when it is outside the domain
    default_region: str | None
    computed: Mapping[str, str] = field(default_factory=dict)  # expression -> column holding it
    state_code: str = "null"  # SQL: the state's code from the lookup table, NULL if none matched
    date_order: str | None = None  # the pipeline's `date_order`

    def once(self, expr: str) -> str:
        """`expr`, or the column a lower layer of the query computed it into, once per row.

        The rules repeat their working values: a phone's digits appear about eighty times in its
        validity check. Engines do not share those across a CASE's branches, so each repeat was
        a regex replace of its own (DuckDB, phones alone: 0.84 s per 200k rows, against 0.28).
        """
        return self.computed.get(expr, expr)

    def lit(self, text: str) -> str:
        return self.dialect.literal(text)

    def lower(self, expr: str) -> str:
        """Python's `str.lower` on the domain: SQL `lower` for ASCII (A-Z in every engine and
        locale), an explicit `translate` table for the rest (slower, so only where needed)."""
        if self.dialect.lower_matches_python:
            return f"lower({expr})"
        upper, lower = _case_maps()
        ascii_lower = self.dialect.ascii_lower(expr)
        translated = f"translate({expr}, {self.lit(upper)}, {self.lit(lower)})"
        return f"(case when {self.match(expr, '[ -~]*')} then {ascii_lower} else {translated} end)"

    def sha(self, expr: str) -> str:
        return self.dialect.sha256_hex(expr)

    def match(self, expr: str, regex: str) -> str:
        return self.dialect.full_match(expr, self.dialect.pattern(regex))

    def rule(self, rule: str) -> str:
        return self.lit("!" + rule)

    def letters(self, expr: str) -> str:
        return self.dialect.replace_all(self.lower(expr), self.lit(_letter_class()))

    def fold(self, expr: str) -> str:
        """`normalize.fold_accents` on lowercase domain text."""
        accented, plain = _fold_maps()
        return f"translate({expr}, {self.lit(accented)}, {self.lit(plain)})"


def _trim(dialect: Dialect, expr: str) -> str:
    """`str.strip(normalize.TRIMMED)`: SQL's own trim removes spaces only."""
    edge = _char_class(normalize.TRIMMED)
    return dialect.replace_all(expr, dialect.literal(f"^{edge}+|{edge}+$"))


def _country_key(ctx: _Ctx, trimmed: str) -> str:
    """`normalize.country_key` on domain text: lowercase, accents folded, letters and digits."""
    return ctx.dialect.replace_all(ctx.fold(ctx.lower(trimmed)), ctx.lit(_key_class()))


def _email_pattern() -> str:
    """local@domain.tld, where no part holds a space or a trimmed character (the only characters
    of the domain that are not printable)."""
    no = "@" + normalize.TRIMMED
    part, plain = _char_class(no, negate=True), _char_class(no + ".", negate=True)
    return f"{part}+@{part}*{plain}{part}*[.]{part}*{plain}{part}*"


def _email(ctx: _Ctx, t: str) -> str:
    v = ctx.once(_working_value(ctx, "em", t))
    return (
        f"case when {ctx.match(v, _email_pattern())} then {ctx.sha(v)} else {ctx.rule('invalid_email')} end"
    )


def _name_like(rule: str) -> Callable[[_Ctx, str], str]:
    def expression(ctx: _Ctx, t: str) -> str:
        letters = ctx.once(ctx.letters(t))
        return f"case when {letters} = '' then {ctx.rule(rule)} else {ctx.sha(letters)} end"

    return expression


def _gender(ctx: _Ctx, t: str) -> str:
    v = ctx.lower(t)
    cases = []
    for code in ("m", "f"):
        words = ", ".join(ctx.lit(word) for word, value in reference().genders.items() if value == code)
        cases.append(f"when {v} in ({words}) then {ctx.lit(sha256(code.encode()).hexdigest())}")
    return f"case {' '.join(cases)} else {ctx.rule('invalid_gender')} end"


def _external_id(ctx: _Ctx, t: str) -> str:
    return ctx.sha(ctx.lower(t))


def _calendar(ctx: _Ctx, year: str, month: str, day: str, *, otherwise: str = "invalid_date") -> str:
    """`YYYYMMDD` hash if the parts form a real date from 1900 to this year, else `!otherwise`."""
    as_int = ctx.dialect.int_type
    y, m, d = (f"cast({part} as {as_int})" for part in (year, month, day))
    leap = f"(mod({y}, 4) = 0 and (mod({y}, 100) <> 0 or mod({y}, 400) = 0))"
    february = f"(case when {leap} then 29 else 28 end)"
    days = f"(case when {m} = 2 then {february} when {m} in (4, 6, 9, 11) then 30 else 31 end)"
    valid = f"{m} between 1 and 12 and {d} between 1 and {days}"
    in_range = f"{y} between 1900 and extract(year from current_date)"
    return (
        f"case when {valid} and {in_range} then {ctx.sha(f'{year} || {month} || {day}')}"
        f" else {ctx.rule(otherwise)} end"
    )


def _birth_date(ctx: _Ctx, t: str) -> str:
    """`normalize._parse_date` on its fixed-width shapes: year first, YYYYMMDD (other readings of
    eight digits are left to Python), and day and month in either order before the year."""

    def part(start: int, length: int) -> str:
        return f"substr({t}, {start}, {length})"

    year_first = _calendar(ctx, part(1, 4), part(6, 2), part(9, 2))
    compact = _calendar(ctx, part(1, 4), part(5, 2), part(7, 2), otherwise=OUT_OF_DOMAIN)
    first, second, year = part(1, 2), part(4, 2), part(7, 4)
    a, b = (f"cast({p} as {ctx.dialect.int_type})" for p in (first, second))
    month_first = _calendar(ctx, year, first, second)
    day_first = _calendar(ctx, year, second, first)
    if ctx.date_order == "mdy":
        ambiguous = month_first
    elif ctx.date_order == "dmy":
        ambiguous = day_first
    elif ctx.date_order == "ymd":
        ambiguous = ctx.rule("invalid_date")
    else:  # unset: month first, day first with dots
        ambiguous = f"case when {part(3, 1)} = '.' then {day_first} else {month_first} end"
    year_last = (
        f"case when {a} > 12 and {b} <= 12 then {day_first}"
        f" when {b} > 12 or {a} = {b} then {month_first} else {ambiguous} end"
    )
    return (
        f"case when {ctx.match(t, '[0-9]{4}[-/.][0-9]{2}[-/.][0-9]{2}')} then {year_first}"
        f" when {ctx.match(t, '[0-9]{8}')} then {compact}"
        f" when {ctx.match(t, '[0-9]{2}[-/.][0-9]{2}[-/.][0-9]{4}')} then {year_last}"
        f" else {ctx.rule(OUT_OF_DOMAIN)} end"
    )


def _zip(ctx: _Ctx, t: str) -> str:
    z = ctx.once(_working_value(ctx, "zp", t))
    first_five, padded = ctx.sha(f"substr({z}, 1, 5)"), ctx.sha(f"lpad({z}, 5, '0')")
    us, unknown = f"{ctx.country} = 'us'", f"{ctx.country} is null"
    return (
        f"case when not {ctx.match(z, '[a-z0-9]+')} then {ctx.rule('invalid_zip')}"
        f" when {ctx.country} = '!' then {ctx.rule(OUT_OF_DOMAIN)}"
        f" when {us} and {ctx.match(z, '[0-9]{5}[0-9]*')} then {first_five}"
        f" when {us} and {ctx.match(z, '[0-9]{3,4}')} then {padded}"
        f" when {unknown} and {ctx.match(z, '[0-9]{5}([0-9]{4}){0,1}')} then {first_five}"
        f" else {ctx.sha(z)} end"
    )


def _state(ctx: _Ctx, t: str) -> str:
    letters = ctx.once(ctx.letters(t))
    return (
        f"case when {letters} = '' then {ctx.rule('invalid_state')}"
        f" when {ctx.country} = '!' then {ctx.rule(OUT_OF_DOMAIN)}"
        f" else {ctx.sha(f'coalesce({ctx.state_code}, {letters})')} end"
    )


def _phone_digits(ctx: _Ctx, t: str) -> str:
    return ctx.dialect.replace_all(t, ctx.lit("[^0-9]"))


def _phone_international(ctx: _Ctx, t: str, digits: str) -> str:
    return f"(substr({t}, 1, 1) = '+' or substr({digits}, 1, 2) = '00')"


def _phone_region(ctx: _Ctx) -> str:
    default = ctx.lit(ctx.default_region.lower()) if ctx.default_region else "null"
    return f"coalesce({ctx.country}, {default})"


def _phone_nanp(ctx: _Ctx, t: str, digits: str) -> str:
    """The ten digits after `1` that `normalize.phone` checks against the NANP, or NULL where
    the number is not one the SQL reads (then the value is out of the domain)."""
    # A regex, not ltrim(digits, '0'): fakesnow's translation of Snowflake's LTRIM ignores the '0'.
    significant = ctx.dialect.replace_all(digits, ctx.lit("^0+"))
    with_code = _phone_international(ctx, t, digits) + f" or {_phone_region(ctx)} is null"
    return (
        f"case when not {ctx.match(t, '[+]{0,1}[0-9 ().-]+')} or {t} like '%(0)%' then null"
        f" when {with_code} then case when {ctx.match(significant, '1[2-9][0-9]{9}')}"
        f" then substr({significant}, 2, 10) end"
        f" when {_phone_region(ctx)} in ('us', 'ca') and {ctx.match(digits, '1{0,1}[2-9][0-9]{9}')}"
        f" then right({digits}, 10) end"
    )


def _phone(ctx: _Ctx, t: str) -> str:
    digits = ctx.once(_phone_digits(ctx, t))
    ten = ctx.once(_phone_nanp(ctx, t, digits))
    international = _phone_international(ctx, t, digits)
    with_one = ctx.sha("'1' || " + ten)
    return (
        f"case when {digits} = '' then {ctx.rule('invalid_phone')}"
        f" when {ctx.country} = '!' or {ten} is null then {ctx.rule(OUT_OF_DOMAIN)}"
        f" when {nanp_valid(ctx.dialect, ten)} then {with_one}"
        f" when {international} then {ctx.rule('invalid_phone')}"
        f" when {_phone_region(ctx)} is null then {ctx.rule('phone_without_country_code')}"
        f" else {ctx.rule(OUT_OF_DOMAIN)} end"
    )


def _working_value(ctx: _Ctx, key: str, t: str) -> str:
    """What a key's rules test and hash over and over, derived from its trimmed text `t` (a phone's
    digits are one layer lower, where its NANP reading is derived from them)."""
    if key == "ph":
        return _phone_digits(ctx, t)
    if key == "em":
        return ctx.lower(t)
    if key == "zp":
        return ctx.dialect.replace_all(ctx.lower(t), ctx.lit(_char_class(normalize.TRIMMED + "-")))
    return ctx.letters(t)  # names, cities and states


_WORKING_VALUE_KEYS: Final = frozenset({"ph", "em", "zp", "fn", "ln", "ct", "st"})

_EXPRESSIONS: Final[dict[str, Callable[[_Ctx, str], str]]] = {
    "em": _email,
    "ph": _phone,
    "fn": _name_like("invalid_name"),
    "ln": _name_like("invalid_name"),
    "ge": _gender,
    "db": _birth_date,
    "ct": _name_like("invalid_city"),
    "st": _state,
    "zp": _zip,
    "external_id": _external_id,
}


def _value_sql(ctx: _Ctx, key: str, raw: str, kind: str | None) -> str:
    """The computed column for one key: digest, NULL, or '!rule'. `raw` is the column reference."""
    dialect = ctx.dialect
    if kind == "date":
        in_range = f"extract(year from {raw}) between 1900 and extract(year from current_date)"
        digest = ctx.sha(dialect.date_digits(raw))
        invalid = ctx.rule("invalid_date")
        return f"case when {raw} is null then null when {in_range} then {digest} else {invalid} end"
    text = _text(dialect, key, raw, kind)
    domain = _char_class(_ascii_domain() if key in _ASCII_ONLY else domain_chars()) + "*"
    t = ctx.once(_trim(dialect, text))
    negative = f"when {raw} < 0 then {ctx.rule(OUT_OF_DOMAIN)} " if kind == "integer" else ""
    return (
        f"case when {raw} is null then null {negative}"
        f"when {t} = '' then null"
        f" when not {ctx.match(t, domain)} then {ctx.rule(OUT_OF_DOMAIN)}"
        f" when {ctx.match(t, '[0-9a-fA-F]{64}')} then {ctx.lower(t)}"
        f" else {_EXPRESSIONS[key](ctx, t)} end"
    )


def _text(dialect: Dialect, key: str, raw: str, kind: str | None) -> str:
    text = f"cast({raw} as {dialect.text_type})"
    if key == "zp" and kind == "integer":  # `normalize.zip_code` zero-pads integers to five digits
        text = f"(case when {raw} < 100000 then lpad({text}, 5, '0') else {text} end)"
    return text


def _country_sql(ctx: _Ctx, raw: str, kind: str | None, code: str) -> tuple[str, str]:
    """(plain code for other keys: code, NULL or '!'; the computed country column).

    `code` is the lookup table's code for the row; the plain code itself serves as well, since it
    equals that code on every branch that reads it.
    """
    t = _trim(ctx.dialect, f"cast({raw} as {ctx.dialect.text_type})")
    outside = f"not {ctx.match(t, _char_class(domain_chars()) + '*')}"
    plain = (
        f"case when {raw} is null then null when {t} = '' then null when {outside} then '!' else {code} end"
    )
    hashed = (
        f"case when {raw} is null then null when {t} = '' then null"
        f" when {outside} then {ctx.rule(OUT_OF_DOMAIN)}"
        f" when {ctx.match(t, '[0-9a-fA-F]{64}')} then {ctx.lower(t)}"
        f" when {code} is null then {ctx.rule('unknown_country')} else {ctx.sha(code)} end"
    )
    return plain, hashed


# --- the wrapped query ------------------------------------------------------------------------

_KINDS: Final = {"string", "integer"}


@dataclass(frozen=True)
class Pushed:
    """The wrapped query: `query` is what the run's window filters and sorts; `project`, when set,
    computes the digests over that sorted window.

    Where a SELECT keeps its input's order (DuckDB documents it), the digests come after the sort,
    so the sort carries the plain columns instead of a 64-character digest per key (200k bench rows:
    the sort 1.9 -> 0.3 s, 369 -> 285 MB), and the hashing streams while the rows are sent.
    Elsewhere the order is only promised by the outermost ORDER BY, so `query` holds it all.
    """

    query: str
    project: Callable[[str], str] | None

    @property
    def whole(self) -> str:
        """The query with its digests, no window: what `describe` reads."""
        return self.project(self.query) if self.project is not None else self.query


@dataclass(frozen=True)
class PushdownPlan:
    keys: tuple[str, ...]
    sources: dict[str, str]  # key -> the column it reads
    kept: tuple[str, ...]  # columns that still leave the warehouse, as the query returns them

    def wrap(
        self,
        query: str,
        dialect_name: str,
        kinds: dict[str, str | None],
        *,
        default_phone_region: str | None,
        date_order: str | None = None,
    ) -> Pushed:
        """The user's query with the country and state lookups joined on (joins keep no order, so
        they come before the window's sort); then, over it, three layers of plain SELECTs: each
        key's trimmed text, its working value (digits, letters ...), and the digests."""
        dialect = DIALECT[dialect_name]
        q = dialect.quote
        user, rows, base, src = f"{PREFIX}q", f"{PREFIX}in", f"{PREFIX}base", f"{PREFIX}src"
        cc_column, st_column = q(PREFIX + "cc"), q(PREFIX + "st_code")
        country_source = self.sources.get("country")
        lookup_select, lookups = [f"{user}.*"], ""
        plain_country = "null"
        if country_source is not None:
            raw = f"{user}.{q(country_source)}"
            code = f"{PREFIX}countries.code"
            plain_country = _country_sql(_Ctx(dialect, "null", None), raw, kinds.get(country_source), code)[0]
            key = _country_key(
                _Ctx(dialect, "null", None), _trim(dialect, f"cast({raw} as {dialect.text_type})")
            )
            table = dialect.table(f"{PREFIX}countries", ("name", "code"), country_table())
            lookups += f" left join {table} on {PREFIX}countries.name = {key}"
        lookup_select.append(
            f"{plain_country} as {cc_column}"
            if country_source is not None
            else f"cast(null as {dialect.text_type}) as {cc_column}"
        )
        if "st" in self.keys:
            raw = f"{user}.{q(self.sources['st'])}"
            lookup_ctx = _Ctx(dialect, "null", None)
            name = lookup_ctx.fold(lookup_ctx.letters(_trim(dialect, f"cast({raw} as {dialect.text_type})")))
            table = dialect.table(f"{PREFIX}states", ("country", "name", "code"), state_table())
            lookups += (
                f" left join {table} on {PREFIX}states.country = coalesce({plain_country}, '')"
                f" and {PREFIX}states.name = {name}"
            )
            lookup_select.append(f"{PREFIX}states.code as {st_column}")
        lookup_query = f"select {', '.join(lookup_select)} from ({query}) as {user}{lookups}"

        cc = f"{src}.{cc_column}"
        plain_ctx = _Ctx(dialect, cc, default_phone_region, date_order=date_order)
        middle_ctx = _Ctx(dialect, f"{base}.{cc_column}", default_phone_region, date_order=date_order)
        inner_select = [f"{rows}.*"]
        middle_select = [f"{base}.*"]
        if dialect.layer_fence is not None:
            inner_select.append(f"{dialect.layer_fence} as {q(PREFIX + 'fence_in')}")
            middle_select.append(f"{dialect.layer_fence} as {q(PREFIX + 'fence_base')}")
        computed: dict[str, str] = {}
        for key in self.keys:
            kind = kinds.get(self.sources[key])
            if key == "country" or kind == "date":
                continue
            trimmed, working = q(f"{PREFIX}t_{key}"), q(f"{PREFIX}w_{key}")
            column = q(self.sources[key])
            trim_in = _trim(dialect, _text(dialect, key, f"{rows}.{column}", kind))
            inner_select.append(f"{trim_in} as {trimmed}")
            computed[_trim(dialect, _text(dialect, key, f"{src}.{column}", kind))] = f"{src}.{trimmed}"
            if key == "ph":  # digits below, so that their NANP reading can use them
                inner_select.append(f"{_phone_digits(plain_ctx, trim_in)} as {working}")
                nanp = q(f"{PREFIX}n_{key}")
                middle_select.append(
                    f"{_phone_nanp(middle_ctx, f'{base}.{trimmed}', f'{base}.{working}')} as {nanp}"
                )
                computed[_phone_nanp(plain_ctx, f"{src}.{trimmed}", f"{src}.{working}")] = f"{src}.{nanp}"
            elif key in _WORKING_VALUE_KEYS:
                middle_select.append(f"{_working_value(plain_ctx, key, f'{base}.{trimmed}')} as {working}")
            if key in _WORKING_VALUE_KEYS:
                computed[_working_value(plain_ctx, key, f"{src}.{trimmed}")] = f"{src}.{working}"
        ctx = _Ctx(
            dialect,
            cc,
            default_phone_region,
            computed,
            state_code=f"{src}.{st_column}",
            date_order=date_order,
        )
        outer_select = [f"{src}.{q(column)}" for column in self.kept]
        for key in self.keys:
            raw = f"{src}.{q(self.sources[key])}"
            kind = kinds.get(self.sources[key])
            if key == "country":
                digest = _country_sql(ctx, raw, kind, cc)[1]
            else:
                digest = _value_sql(ctx, key, raw, kind)
            outer_select.append(f"{digest} as {q(pushed_column(key))}")

        def digests(read: str) -> str:
            return (
                f"select {', '.join(outer_select)} from (select {', '.join(middle_select)}"
                f" from (select {', '.join(inner_select)} from ({read}) as {rows}) as {base}) as {src}"
            )

        pushed = (
            Pushed(lookup_query, digests)
            if dialect.select_keeps_order
            else Pushed(digests(lookup_query), None)
        )
        if re.search(r":\w", pushed.whole):  # SQLAlchemy's text() would read it as a bind parameter
            raise PushdownError(["pushdown: generated SQL contains ':' before a word character"])
        return pushed


def plan(
    spec: MappingSpec,
    kinds: dict[str, str | None],
    *,
    dialect: str | None,
    hash_external_id: bool,
    hashing_required: bool,
    preset: str | None,
    other_columns: dict[str, str],
) -> PushdownPlan:
    """Check that `spec` can be pushed down against these columns; raise with every reason at once.

    `other_columns` maps each other use of a column (cursor, primary key, ...) to the column: a
    pushed column used elsewhere would leave the warehouse plain, so that is an error.
    """
    from capi_sync.mappings.sources import resolve_column  # noqa: PLC0415 (avoids an import cycle)

    errors: list[str] = []
    if dialect not in DIALECTS:
        errors.append(
            f"pushdown: supported on {', '.join(DIALECTS)} (this warehouse is {dialect or 'unknown'})"
        )
    if not hashing_required:
        errors.append("pushdown: needs hashing_required: true (it is the hashing that moves)")
    if preset is not None:
        errors.append("pushdown: not available with a preset, whose fields read nested paths")
    columns = list(kinds)
    keys = pushed_keys(spec, hash_external_id=hash_external_id)
    sources: dict[str, str] = {}
    for key in keys:
        where = f"mapping.customer_info.{key}"
        source: FieldSource = spec.customer_info[key]
        name = (
            source if isinstance(source, str) else source.column if isinstance(source, ColumnSource) else None
        )
        index = resolve_column(name, columns) if name is not None else None
        if index is None:
            errors.append(
                f"pushdown: {where} must name a column of the query (not a path, value or combination)"
            )
            continue
        column = columns[index]
        kind = kinds[column]
        allowed = _KINDS | ({"date"} if key == "db" else set())
        if kind not in allowed:
            kind_name = kind or "unknown"
            errors.append(
                f"pushdown: {where} reads '{column}' of kind {kind_name} (cast it to text in the query)"
            )
            continue
        if column.startswith(PREFIX):
            errors.append(f"pushdown: column names starting with '{PREFIX}' are reserved ({column})")
        sources[key] = column
    pushed_columns = set(sources.values())
    for use, name in other_columns.items():
        parts = name.split(".")
        found = (resolve_column(".".join(parts[:cut]), columns) for cut in range(len(parts), 0, -1))
        index = next((i for i in found if i is not None), None)
        if index is not None and columns[index] in pushed_columns:
            errors.append(
                f"pushdown: column '{columns[index]}' is hashed in the warehouse but {use} also reads it"
            )
    if errors:
        raise PushdownError(errors)
    kept = tuple(column for column in columns if column not in pushed_columns)
    return PushdownPlan(keys, sources, kept)


def referenced_names(source: FieldSource) -> list[str]:
    """Every column name or path a field source reads (for the 'used elsewhere' check)."""
    if isinstance(source, str):
        return [source]
    if isinstance(source, ColumnSource):
        return [source.column]
    found: list[str] = []
    for attribute in ("first_of", "all_of"):
        for inner in getattr(source, attribute, ()) or ():
            found += referenced_names(inner)
    inner = getattr(source, "lookup", None)
    if inner is not None:
        found += referenced_names(inner)
    return found
