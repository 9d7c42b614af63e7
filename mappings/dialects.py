"""The SQL dialects hash pushdown writes: per warehouse, the few functions and literal rules the
generated SQL needs (`pushdown.py` writes the rules once, against this interface).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence


@dataclass(frozen=True)
class Dialect:
    """The few functions the generated SQL needs, spelled per warehouse."""

    name: str
    text_type: str
    int_type: str
    full_match: Callable[[str, str], str]  # (expression, SQL literal of a pattern)
    replace_all: Callable[[str, str], str]  # (expression, SQL literal of a pattern) -> deleted matches
    sha256_hex: Callable[[str], str]
    date_digits: Callable[[str], str]  # DATE -> 'YYYYMMDD'
    quote: Callable[[str], str]
    literal: Callable[[str], str]
    ascii_lower: Callable[[str], str] = lambda e: f"lower({e})"
    anchored: bool = False  # full_match needs ^( )$ written into the pattern
    # Its `lower` maps every domain character as Python does (a test checks each one).
    lower_matches_python: bool = False
    # An expression that keeps the planner from merging the query's layers back into one, where
    # it would (PostgreSQL inlines subqueries, so every shared value was computed again per use).
    # It must be volatile: that keeps the layers apart yet lets the window's filter reach the table.
    layer_fence: str | None = None
    # A SELECT over an ordered subquery keeps that order, as the engine documents: the digests can
    # then be computed after the window's sort instead of being sorted with the rows.
    select_keeps_order: bool = False

    def pattern(self, regex: str) -> str:
        return self.literal(f"^({regex})$" if self.anchored else regex)

    def table(self, alias: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
        """An inline table of text literals."""
        rows = list(rows)
        if self.name == "bigquery":
            structs = ", ".join(
                "struct("
                + ", ".join(f"{self.literal(v)} as {c}" for v, c in zip(row, columns, strict=True))
                + ")"
                for row in rows
            )
            return f"unnest([{structs}]) as {alias}"
        values = ", ".join("(" + ", ".join(self.literal(v) for v in row) + ")" for row in rows)
        return f"(values {values}) as {alias}({', '.join(columns)})"


def _double_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ansi_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _escape_controls(text: str) -> str:
    """Control and line-separator characters as `\\uhhhh`: these engines read backslash escapes,
    and BigQuery refuses a raw newline inside a quoted string."""
    return "".join(f"\\u{ord(ch):04x}" if ch in _ESCAPED else ch for ch in text)


_ESCAPED: Final = frozenset(
    [chr(code) for code in range(0x20)] + [chr(code) for code in range(0x7F, 0xA0)] + ["\u2028", "\u2029"]
)


def _backslash_literal(text: str) -> str:
    return "'" + _escape_controls(text.replace("\\", "\\\\").replace("'", "\\'")) + "'"


def _snowflake_literal(text: str) -> str:
    return "'" + _escape_controls(text.replace("\\", "\\\\").replace("'", "''")) + "'"


DIALECT: Final[dict[str, Dialect]] = {
    "duckdb": Dialect(
        name="duckdb",
        text_type="varchar",
        int_type="integer",
        full_match=lambda e, p: f"regexp_full_match({e}, {p})",
        replace_all=lambda e, p: f"regexp_replace({e}, {p}, '', 'g')",
        sha256_hex=lambda e: f"sha256({e})",
        date_digits=lambda e: f"strftime({e}, '%Y%m%d')",
        quote=_double_quote,
        literal=_ansi_literal,
        lower_matches_python=True,
        select_keeps_order=True,  # duckdb.org/docs/stable/sql/dialect/order_preservation
    ),
    "postgres": Dialect(
        name="postgres",
        text_type="text",
        int_type="integer",
        full_match=lambda e, p: f"({e} ~ {p})",
        replace_all=lambda e, p: f"regexp_replace({e}, {p}, '', 'g')",
        sha256_hex=lambda e: f"encode(sha256(convert_to({e}, 'UTF8')), 'hex')",
        date_digits=lambda e: f"to_char({e}, 'YYYYMMDD')",
        quote=_double_quote,
        literal=_ansi_literal,
        ascii_lower=lambda e: f'lower(({e}) collate "C")',  # no locale rule (Turkish i) applies
        anchored=True,
        layer_fence="random()",  # 200k bench rows: 13.8-16.8 s against 21.9-23.4 merged
    ),
    "snowflake": Dialect(
        name="snowflake",
        text_type="varchar",
        int_type="integer",
        full_match=lambda e, p: f"regexp_like({e}, {p})",  # implicitly anchored at both ends
        replace_all=lambda e, p: f"regexp_replace({e}, {p}, '')",
        sha256_hex=lambda e: f"sha2({e}, 256)",
        date_digits=lambda e: f"to_char({e}, 'YYYYMMDD')",
        quote=_double_quote,
        literal=_snowflake_literal,
    ),
    "bigquery": Dialect(
        name="bigquery",
        text_type="string",
        int_type="int64",
        full_match=lambda e, p: f"regexp_contains({e}, {p})",
        replace_all=lambda e, p: f"regexp_replace({e}, {p}, '')",
        sha256_hex=lambda e: f"to_hex(sha256({e}))",
        date_digits=lambda e: f"format_date('%Y%m%d', {e})",
        quote=lambda name: "`" + name.replace("`", "\\`") + "`",
        literal=_backslash_literal,
        anchored=True,
    ),
}
