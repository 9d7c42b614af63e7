"""A warehouse row becomes a Conversions API event here, and only here.

`compile_mapping` resolves every column and normalizer once per pipeline; `EventMapper.map_row`
then does only per-row work. A row that cannot become a valid event comes back as a rejection
with its reasons, never as an exception, so one bad row never stops the good ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from hashlib import sha256
from operator import itemgetter
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

from capi_sync.errors import ConfigError, InvalidValue
from capi_sync.mappings import normalize, urls, values
from capi_sync.mappings.events import rename
from capi_sync.mappings.fields import (
    ACTION_SOURCES,
    CONTENT_TYPES,
    CUSTOM_DATA_TYPES,
    DELIVERY_CATEGORIES,
    EXTINFO_SLOTS,
    EXTINFO_VERSIONS,
    HASHED_USER_FIELDS,
    LEAD_CREATED_AT,
)
from capi_sync.mappings.hashing import is_sha256_hex, sha256_hex
from capi_sync.mappings.reference import reference
from capi_sync.mappings.sources import DerivedFactory, SourceCompiler, resolve_column
from capi_sync.mappings.spec import GROUPS, Derived, FieldSource, MappingSpec
from capi_sync.mappings.validate import Problem, validate_event

Row = Sequence[Any]
Getter = Callable[[Row], Any]
_HASHED = frozenset(HASHED_USER_FIELDS)


class MappedRow(NamedTuple):
    """One row's outcome: an event plus warnings (dropped values), or no event plus the reasons."""

    row_key: str
    event: dict[str, Any] | bytes | None  # bytes: the event's JSON, written by the native core
    problems: tuple[Problem, ...]
    key: tuple[Any, ...] = ()  # the primary key's values, typed, to find the row again
    skipped: str | None = None  # a rule that holds the row back without rejecting it (consent)
    user_keys: tuple[str, ...] | None = None  # the customer-information keys of a JSON event
    event_name: str = ""  # the name of a JSON event


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row kept back, with everything a user needs to find and fix it."""

    pipeline: str
    row_key: str
    problems: tuple[Problem, ...]
    key_values: tuple[Any, ...] | None = None

    def __str__(self) -> str:
        reasons = "; ".join(str(problem) for problem in self.problems)
        return f"pipeline '{self.pipeline}', row {self.row_key}: {reasons}"


@dataclass(frozen=True, slots=True)
class MapperOptions:
    """The pipeline settings the mapper needs, decoupled from the config module."""

    pipeline: str
    primary_key: tuple[str, ...]
    action_source: str | None = None
    hashing_required: bool = True
    default_phone_region: str | None = None
    date_order: str | None = None  # mdy | dmy | ymd: how ambiguous birth dates read; None: as documented
    strong_match_key_required: bool = False
    hash_external_id: bool = True
    timezone: str = "UTC"
    event_renames: Mapping[str, str] = field(default_factory=dict)  # by `events.name_key`
    consent_column: str | None = None
    consent_category: str | None = None
    fbc_from_fbclid: bool = True
    url_redaction: str = "none"  # none | query | path
    warn_missing_standard_fields: bool = False
    pushed_keys: frozenset[str] = frozenset()  # hashed in the warehouse: rows hold digests or '!rule'


def derive_event_id(pipeline: str, row_key: str) -> str:
    """Deterministic id for rows without one, so a re-sent row is a duplicate Meta drops."""
    return sha256(f"capi-sync\x1f{pipeline}\x1f{row_key}".encode()).hexdigest()[:32]


class EventMapper:
    """Turns rows (tuples in the query's column order) into events; built by `compile_mapping`."""

    def __init__(
        self,
        options: MapperOptions,
        getters: dict[str, dict[str, Getter]],
        key_indexes: tuple[int, ...],
        clock: Callable[[], float] = time.time,
        *,
        consent: Getter | None = None,
        custom_defaults: Getter | None = None,
        custom_overrides: Getter | None = None,
        columns_used: tuple[int, ...] | None = None,
    ) -> None:
        self.options = options
        # Positions of the columns the mapping reads (all of them when unknown): workers get only these.
        self.columns_used = columns_used
        self._consent = consent
        self._custom_defaults = custom_defaults  # a dict merged under the mapped custom data
        self._custom_overrides = custom_overrides  # a dict merged over it
        self._zone = ZoneInfo(options.timezone)
        self._server = getters["server_event"]
        self._user = getters["customer_info"]
        self._properties = getters["custom_properties"]
        # Typed fields resolve their converter once here, not per row.
        self._server_typed = [
            (key, getter, _SERVER_CONVERTERS[key])
            for key, getter in self._server.items()
            if key in _SERVER_CONVERTERS
        ]
        self._custom_typed = [
            (key, getter, _CUSTOM_CONVERTERS[CUSTOM_DATA_TYPES[key]])
            for key, getter in getters["custom_data"].items()
        ]
        self._app_typed = [
            (key, getter, _APP_CONVERTERS.get(key, values.to_text))
            for key, getter in getters["app_data"].items()
        ]
        self._original = getters.get("original_event_data", {})
        self._lead_created_at = self._server.get(LEAD_CREATED_AT)
        self.key_indexes = key_indexes
        self._key = itemgetter(*key_indexes) if len(key_indexes) > 1 else (lambda row: (row[key_indexes[0]],))
        self._clock = clock
        self._country_getter = self._user.get("country")
        self._ordered_user = [(k, g) for k, g in self._user.items() if k != "country"]
        self._normalizers = {key: normalize.normalizer_for(key) for key in self._user}
        self._renames = options.event_renames
        # Names, cities, states, countries repeat across rows: their normalized hash is memoized.
        self._memos = {key: _Memo() for key in self._user}
        self._hashed = _HASHED if options.hash_external_id else _HASHED - {"external_id"}
        if not options.hash_external_id:
            self._normalizers["external_id"] = normalize.plain  # sent as the pixel sends it
        if "ph" in self._user:
            self._normalizers["ph"] = partial(normalize.phone, default_region=options.default_phone_region)
        if "db" in self._user:
            self._normalizers["db"] = partial(normalize.birth_date, date_order=options.date_order)
        # Per key, a fast path for the common case (one text value), resolved once, not per row.
        self._user_plan: list[tuple[str, Getter, _TextPath | None]] = []
        for index, (key, getter) in enumerate(self._ordered_user):
            # A memo that switches itself off hands its key the bare normalize-and-hash: one call
            # per value instead of two, on the keys that never repeat (emails, phones, click ids).
            use_uncached = partial(self._replace_path, index, key, getter)
            self._user_plan.append((key, getter, self._scalar_text_path(key, on_memo_off=use_uncached)))
        self._country_path = self._scalar_text_path("country") if self._country_getter else None

    def now(self) -> float:
        """The clock events are checked against (too old, in the future)."""
        return self._clock()

    def normalizer_of(self, key: str) -> normalize.Normalizer:
        """The rule a customer-information key is normalized by (settings bound to it aside)."""
        found = self._normalizers[key]
        return found.func if isinstance(found, partial) else found

    def row_key(self, row: Row) -> str:
        """The primary key as one string (`|`-joined when composite): names the row everywhere."""
        return _join_key(self._key(row))

    def map_row(self, row: Row, now: float | None = None) -> MappedRow:
        """The row's event, or its rejection with reasons: never an exception, whatever the values."""
        try:
            return self._map_row(row, now)
        except Exception as exc:
            return self._unmappable(row, exc)

    def _unmappable(self, row: Row, exc: Exception) -> MappedRow:
        """A rejection for a row whose values broke the mapper itself; its message is not kept, as
        it may quote a plain value, only the rule or the kind of error."""
        try:
            key_values = self._key(row)
            row_key = _join_key(key_values)
        except Exception:
            key_values, row_key = (), "(unreadable primary key)"
        if isinstance(exc, InvalidValue):
            problem = Problem("row", exc.rule)
        else:
            problem = Problem("row", "unmappable_value", detail=f"a value raised {type(exc).__name__}")
        return MappedRow(row_key, None, (problem,), key_values)

    def _map_row(self, row: Row, now: float | None) -> MappedRow:
        key_values = self._key(row)
        row_key = _join_key(key_values)
        if any(value is None for value in key_values):
            missing = Problem(",".join(self.options.primary_key), "missing_primary_key")
            return MappedRow(row_key, None, (missing,), key_values)
        if self._consent is not None:
            try:
                consented = self._consented(row)
            except InvalidValue as exc:  # unreadable consent is no consent we can prove
                problem = Problem(str(self.options.consent_column), f"consent_{exc.rule}")
                return MappedRow(row_key, None, (problem,), key_values)
            if not consented:
                return MappedRow(row_key, None, (), key_values, skipped="no_consent")
        rejected: list[Problem] = []
        dropped: list[Problem] = []
        event = self._server_event(row, row_key, rejected)
        user_data = self._user_data(row, rejected, dropped)
        event["user_data"] = user_data
        self._click_and_url(event, user_data)
        custom_data = self._custom_data(row, dropped)
        if custom_data:
            event["custom_data"] = custom_data
        if self._app_typed:
            app_data: dict[str, Any] = {}
            _convert_fields(row, self._app_typed, "app_data.", app_data, rejected)
            if app_data:
                event["app_data"] = app_data
        if self._original:
            self._original_event_data(row, event, rejected)
        if self._lead_created_at is not None:
            self._check_lead_created(row, event, rejected)
        if not rejected:
            rejected += validate_event(
                event,
                now=self._clock() if now is None else now,
                strong_key_required=self.options.strong_match_key_required,
            )
            if self.options.warn_missing_standard_fields:
                warned = [p for p in rejected if p.rule == "required_for_purchase"]
                rejected = [p for p in rejected if p.rule != "required_for_purchase"]
                dropped += warned
        if rejected:
            # Dropped values explain many rejections (an invalid email leaves too little to match).
            return MappedRow(row_key, None, (*rejected, *dropped), key_values)
        return MappedRow(row_key, event, tuple(dropped), key_values)

    def _server_event(self, row: Row, row_key: str, rejected: list[Problem]) -> dict[str, Any]:
        event: dict[str, Any] = {}
        get = self._server
        name = get["event_name"](row)
        if name is None or not (name := values.to_text(name)):
            rejected.append(Problem("event_name", "required"))
        else:
            event["event_name"] = rename(name, self._renames) if self._renames else name
        raw_time = get["event_time"](row)
        if raw_time is None:
            rejected.append(Problem("event_time", "required"))
        else:
            try:
                event["event_time"] = values.unix_seconds(raw_time, self._zone)
            except InvalidValue as exc:
                rejected.append(Problem("event_time", exc.rule, values.to_text(raw_time)[:64]))
        event_id = get["event_id"](row) if "event_id" in get else None
        event_id = values.to_text(event_id) if event_id is not None else ""
        event["event_id"] = event_id or derive_event_id(self.options.pipeline, row_key)
        source = get["action_source"](row) if "action_source" in get else None
        source = values.to_text(source).lower() if source is not None else self.options.action_source
        if source is None:
            rejected.append(Problem("action_source", "required"))
        elif source not in ACTION_SOURCES:
            rejected.append(
                Problem(
                    "action_source",
                    "unknown_action_source",
                    source[:64],
                    f"one of {', '.join(ACTION_SOURCES)}",
                )
            )
        else:
            event["action_source"] = source
        for name in ("event_source_url", "referrer_url", "messaging_channel"):
            if name in get and (text := _text_or_none(get[name](row))) is not None:
                event[name] = text
        _convert_fields(row, self._server_typed, "", event, rejected)
        return event

    def _original_event_data(self, row: Row, event: dict[str, Any], rejected: list[Problem]) -> None:
        """`original_event_data`: the earlier event this one updates, its name and time required."""
        original: dict[str, Any] = {}
        for key, getter in self._original.items():
            raw = getter(row)
            if raw is None or _is_empty(raw):
                continue
            try:
                if key == "event_time":
                    original[key] = values.unix_seconds(raw, self._zone)
                else:
                    original[key] = values.to_text(raw)
            except InvalidValue as exc:
                rejected.append(Problem(f"original_event_data.{key}", exc.rule, values.to_text(raw)[:64]))
                return
        missing = [key for key in ("event_name", "event_time") if not original.get(key)]
        if len(missing) == 2 and not original:
            return  # the row updates no earlier event
        for key in missing:
            rejected.append(Problem(f"original_event_data.{key}", "required_in_original_event_data"))
        if not missing:
            event["original_event_data"] = original

    def _check_lead_created(self, row: Row, event: dict[str, Any], rejected: list[Problem]) -> None:
        """Meta discards a lead's event dated before the lead was created: reject it here."""
        assert self._lead_created_at is not None
        raw = self._lead_created_at(row)
        if raw is None or "event_time" not in event:
            return
        try:
            created = values.unix_seconds(raw, self._zone)
        except InvalidValue as exc:
            rejected.append(Problem(f"server_event.{LEAD_CREATED_AT}", exc.rule, values.to_text(raw)[:64]))
            return
        if event["event_time"] < created:
            detail = f"event_time {event['event_time']} is before the lead was created ({created})"
            rejected.append(Problem("event_time", "before_lead_created", detail=detail))

    def _user_data(self, row: Row, rejected: list[Problem], dropped: list[Problem]) -> dict[str, Any]:
        user: dict[str, Any] = {}
        country: str | None = None
        if self._country_getter is not None:
            raw_country = self._country_getter(row)
            if raw_country is not None:
                country = self._user_field(
                    "country",
                    raw_country,
                    None,
                    self._country_path,
                    user=user,
                    rejected=rejected,
                    dropped=dropped,
                )
        for key, getter, text_path in self._user_plan:
            raw = getter(row)
            if raw is None:
                continue
            if text_path is _pushed_text_path:  # a digest or '!rule' computed by the warehouse
                if raw[:1] != "!":
                    user[key] = raw
                else:
                    dropped.append(Problem(f"customer_info.{key}", raw[1:]))
                continue
            if raw.__class__ is str and text_path is not None:  # the common case, inlined
                found = text_path(raw, country)
                if found is not None:
                    if found[2] is None:
                        user[key] = found[1]
                    else:
                        dropped.append(Problem(f"customer_info.{key}", found[2], self._shown(key, raw)))
                continue
            self._user_field(key, raw, country, text_path, user=user, rejected=rejected, dropped=dropped)
        return user

    def _user_field(
        self,
        key: str,
        raw: Any,
        country: str | None,
        text_path: _TextPath | None,
        *,
        user: dict[str, Any],
        rejected: list[Problem],
        dropped: list[Problem],
    ) -> str | None:
        """One customer-information value into `user`; returns its plain form (the row's country)."""
        if raw.__class__ is not str or text_path is None:
            if raw is None or _is_empty(raw):
                return None
            return self._user_value(key, raw, country, user=user, rejected=rejected, dropped=dropped)
        found = text_path(raw, country)
        if found is None:
            return None  # blank
        value, out, rule = found
        if rule is not None:
            dropped.append(Problem(f"customer_info.{key}", rule, self._shown(key, raw)))
            return None
        user[key] = out
        return str(value)

    def _shown(self, key: str, raw: Any) -> str | None:
        """A dropped value as reports show it; a pushed-down one was never seen outside the warehouse."""
        return None if key in self.options.pushed_keys else values.redact(raw)

    def _replace_path(self, index: int, key: str, getter: Getter, text_path: _TextPath) -> None:
        self._user_plan[index] = (key, getter, text_path)

    def _scalar_text_path(
        self, key: str, on_memo_off: Callable[[_TextPath], None] | None = None
    ) -> _TextPath | None:
        """Normalize-and-hash for a single string, memoized; None where rows need the full rules.

        This runs once per key per row, so it is one closure with its memo inlined: a value seen
        before costs one dict lookup, keyed by the string alone unless the key reads the country.
        """
        hashed = key in self._hashed
        if key in self.options.pushed_keys:
            return _pushed_text_path
        if hashed and not self.options.hashing_required:
            return None  # plain values are rejected there: `_user_value` says why
        normalizer = self._normalizers[key]
        invalid = InvalidValue
        by_country = key in normalize.READS_COUNTRY

        def uncached(raw: str, country: str | None) -> tuple[Any, Any, str | None] | None:
            text = raw.strip(normalize.TRIMMED)
            if not text:
                return None
            if hashed and len(text) == 64 and is_sha256_hex(text):
                return None, text.lower(), None  # already hashed upstream: never hash twice
            try:
                value = normalizer(raw, country)
            except invalid as exc:
                return None, None, exc.rule
            return value, sha256(value.encode()).hexdigest() if hashed else value, None

        memo: dict[Any, tuple[Any, Any, str | None] | None] = {}
        lookups = hits = 0
        on = True

        def text_path(raw: str, country: str | None) -> tuple[Any, Any, str | None] | None:
            nonlocal lookups, hits, on
            if not on:
                return uncached(raw, country)
            memo_key = (raw, country) if by_country else raw
            found = memo.get(memo_key, _MISSING)
            if lookups < MEMO_TRIAL:
                lookups += 1
                hits += found is not _MISSING
                if lookups == MEMO_TRIAL and hits * 5 < lookups:
                    on = False  # under 20% hits (emails, phones): hashing is cheaper than remembering
                    memo.clear()
                    if on_memo_off is not None:
                        on_memo_off(uncached)
            if found is _MISSING:
                found = uncached(raw, country)
                if on:
                    if len(memo) >= MEMO_LIMIT:
                        memo.clear()
                    memo[memo_key] = found
            return cast("tuple[Any, Any, str | None] | None", found)

        return text_path

    def _user_value(
        self,
        key: str,
        raw: Any,
        country: str | None,
        *,
        user: dict[str, Any],
        rejected: list[Problem],
        dropped: list[Problem],
    ) -> str | None:
        """Normalize (and hash) one customer-information value into `user`; return the plain form."""
        items = raw if isinstance(raw, list | tuple) else (raw,)
        sent: list[str] = []
        plain: str | None = None
        for item in items:
            if item is None or _is_empty(item):
                continue
            text = item.strip(normalize.TRIMMED) if isinstance(item, str) else None
            if key in self._hashed and text is not None and is_sha256_hex(text):
                sent.append(text.lower())  # already hashed upstream: never hash twice
                continue
            if key in self._hashed and not self.options.hashing_required:
                rejected.append(
                    Problem(
                        f"customer_info.{key}",
                        "not_a_sha256",
                        values.redact(item),
                        "hashing_required is false, so values must be SHA-256 hex",
                    )
                )
                continue
            memo = self._memos.get(key)
            if memo is not None and isinstance(item, str | int):
                found = memo.lookup((item, country))
                if found is None:
                    found = self._normalize_and_hash(key, item, country)
                    memo.store((item, country), found)
            else:
                found = self._normalize_and_hash(key, item, country)
            value, out, rule = found
            if rule is not None:
                dropped.append(Problem(f"customer_info.{key}", rule, values.redact(item)))
                continue
            plain = plain or value
            sent.append(out)
        if sent:
            user[key] = sent[0] if len(sent) == 1 and not isinstance(raw, list | tuple) else sent
        return plain

    def _normalize_and_hash(self, key: str, item: Any, country: str | None) -> tuple[Any, Any, str | None]:
        """(plain value, value to send, None) or (None, None, rule): the pure part, safe to memoize."""
        try:
            value = self._normalizers[key](item, country)
        except InvalidValue as exc:
            return None, None, exc.rule
        return value, sha256_hex(value) if key in self._hashed else value, None

    def _custom_data(self, row: Row, dropped: list[Problem]) -> dict[str, Any]:
        custom: dict[str, Any] = {}
        if self._custom_defaults is not None:
            custom.update(self._custom_defaults(row) or {})
        _convert_fields(row, self._custom_typed, "custom_data.", custom, dropped)
        for key, getter in self._properties.items():
            raw = getter(row)
            if raw is not None:
                custom[key] = values.to_json(raw)
        if self._custom_overrides is not None:
            for key, raw in (self._custom_overrides(row) or {}).items():
                converter = _CUSTOM_CONVERTERS.get(CUSTOM_DATA_TYPES.get(key, ""), values.to_json)
                try:
                    custom[key] = converter(raw)
                except InvalidValue as exc:
                    dropped.append(Problem(f"custom_data.{key}", exc.rule, values.to_text(raw)[:64]))
        return custom

    def _consented(self, row: Row) -> bool:
        """The category is among the row's consents (a list, JSON array or comma-separated text)."""
        assert self._consent is not None
        granted = self._consent(row)
        if isinstance(granted, str) and not granted.lstrip().startswith("["):
            granted = granted.split(",")
        wanted = self.options.consent_category
        return any(str(item).strip() == wanted for item in values.to_list(granted) if item is not None)

    def _click_and_url(self, event: dict[str, Any], user_data: dict[str, Any]) -> None:
        """fbc from a landing URL's fbclid (Meta's format), then URL redaction, in that order."""
        url = event.get("event_source_url")
        if url and self.options.fbc_from_fbclid and "fbc" not in user_data and "fbclid=" in url:
            fbclid = urls.query_value(url, "fbclid")
            if fbclid and "event_time" in event:
                user_data["fbc"] = f"fb.1.{event['event_time'] * 1000}.{fbclid}"
        if self.options.url_redaction != "none":
            for key in ("event_source_url", "referrer_url"):
                if key in event:
                    event[key] = urls.redact(event[key], self.options.url_redaction)


_SERVER_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "opt_out": values.to_bool,
    "data_processing_options": lambda v: [str(x) for x in values.to_list(v)],
    "data_processing_options_country": values.to_int,
    "data_processing_options_state": values.to_int,
    "customer_segmentation": values.to_json,
}


def _extinfo(value: Any) -> list[str]:
    """Exactly 16 strings from an array or JSON column; slot 0 says Android (`a2`) or iOS (`i2`).

    Comma-separated text is refused: device models such as `iPhone5,1` contain commas.
    """
    if isinstance(value, str) and not value.strip().startswith("["):
        raise InvalidValue("extinfo_not_an_array")
    slots = ["" if slot is None else str(slot) for slot in values.to_list(value)]
    if len(slots) != EXTINFO_SLOTS:
        raise InvalidValue("extinfo_needs_16_slots")
    if slots[0] not in EXTINFO_VERSIONS:
        raise InvalidValue("extinfo_version_not_a2_or_i2")
    return slots


def _flag(value: Any) -> int:
    return int(values.to_bool(value))


_APP_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "advertiser_tracking_enabled": _flag,
    "application_tracking_enabled": _flag,
    "extinfo": _extinfo,
    "campaign_ids": values.to_text,
    "url_schemes": lambda v: [values.to_text(x) for x in values.to_list(v)],
}


TypedField = tuple[str, Getter, Callable[[Any], Any]]


def _pushed_text_path(computed: str, _country: str | None) -> tuple[Any, Any, str | None]:
    """A column the warehouse computed (see `pushdown.py`): a digest, or `!rule` for a dropped value."""
    if computed[:1] == "!":
        return None, None, computed[1:]
    return None, computed, None


_TextPath = Callable[[str, "str | None"], "tuple[Any, Any, str | None] | None"]


def _convert_fields(
    row: Row, fields: list[TypedField], prefix: str, into: dict[str, Any], problems: list[Problem]
) -> None:
    """Convert each present value into `into`; an invalid one becomes a problem named by its rule.

    Whether that problem rejects the row or only drops the value is the caller's choice of list.
    """
    for key, getter, convert in fields:
        raw = getter(row)
        if raw is None or _is_empty(raw):
            continue
        try:
            into[key] = convert(raw)
        except InvalidValue as exc:
            problems.append(Problem(prefix + key, exc.rule, values.to_text(raw)[:64]))


MEMO_LIMIT = 20_000  # entries per key before a memo starts over
MEMO_TRIAL = 5_000  # lookups after which a memo that rarely hits switches itself off
_MISSING: Any = object()


class _Memo:
    """A bounded cache that switches itself off for columns whose values rarely repeat (emails)."""

    __slots__ = ("entries", "hits", "lookups", "on")
    LIMIT = MEMO_LIMIT
    TRIAL = MEMO_TRIAL

    def __init__(self) -> None:
        self.entries: dict[Any, tuple[Any, Any, str | None]] = {}
        self.hits = self.lookups = 0
        self.on = True

    def lookup(self, key: Any) -> tuple[Any, Any, str | None] | None:
        if not self.on:
            return None
        self.lookups += 1
        found = self.entries.get(key)
        if found is not None:
            self.hits += 1
        if self.lookups == self.TRIAL and self.hits * 5 < self.lookups:
            self.on = False  # under 20% hits: hashing is cheaper than remembering
            self.entries.clear()
        return found

    def store(self, key: Any, value: tuple[Any, Any, str | None]) -> None:
        if self.on:
            if len(self.entries) >= self.LIMIT:
                self.entries.clear()
            self.entries[key] = value


def _join_key(values: tuple[Any, ...]) -> str:
    if len(values) == 1:  # the usual single-column key, without a generator per row
        key = "" if (value := values[0]) is None else str(value)
    else:
        key = "|".join("" if value is None else str(value) for value in values)
    return key if len(key) <= MAX_ROW_KEY_CHARS else _shortened(key)


MAX_ROW_KEY_CHARS = 300  # the state store keeps row keys in columns of 500 characters


def _shortened(key: str) -> str:
    """A key too long to store, as its start and a digest of the whole: still one per row."""
    return f"{key[:200]}...{sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}"


def _is_empty(value: Any) -> bool:
    return isinstance(value, str) and normalize.is_blank(value)


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = values.to_text(value)
    return text or None


def _currency(value: Any) -> str:
    return _currency_code(str(value).strip().upper())


def _currency_code(code: str) -> str:
    if code not in reference().currencies:
        raise InvalidValue("unknown_currency")
    return code


def _contents(value: Any) -> list[dict[str, Any]]:
    items = []
    for item in values.to_list(value):
        if not isinstance(item, dict) or (product := item.get("id")) is None:
            raise InvalidValue("invalid_contents")
        content: dict[str, Any] = {"id": product if product.__class__ is str else str(product)}
        if (quantity := item.get("quantity")) is not None:
            # An int is the usual quantity; `to_int` refuses the rest, booleans included.
            content["quantity"] = values.to_int(quantity)
        if (price := item.get("item_price")) is not None:
            content["item_price"] = values.to_float(price)
        if (category := item.get("delivery_category")) is not None:
            content["delivery_category"] = _delivery_category(category)
        items.append(content)
    return items


def _one_of(allowed: frozenset[str], rule: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise InvalidValue(rule)
        return text

    return convert


_delivery_category = _one_of(DELIVERY_CATEGORIES, "unknown_delivery_category")

_CUSTOM_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "content_type": _one_of(CONTENT_TYPES, "unknown_content_type"),
    "delivery_category": _delivery_category,
    "float": values.to_float,
    "int": values.to_int,
    "str": values.to_text,
    "currency": _currency,
    "str_list": lambda v: [values.to_text(x) for x in values.to_list(v)],
    "contents": _contents,
}


def compile_mapping(
    spec: MappingSpec,
    options: MapperOptions,
    columns: Sequence[str],
    clock: Callable[[], float] = time.time,
    *,
    derived: dict[str, DerivedFactory] | None = None,
    preset: dict[str, dict[str, FieldSource]] | None = None,
) -> EventMapper:
    """Resolve every field against the query's columns once; report all unknown columns together."""
    compiler = SourceCompiler(columns, derived)
    errors = compiler.errors
    getters: dict[str, dict[str, Getter]] = {}
    for group in GROUPS:
        # A preset fills the fields the user did not map; its paths may be absent from the table.
        defaults = (preset or {}).get(group, {})
        getters[group] = {
            key: compiler.getter(source, f"mapping.{group}.{key}", required=False)
            for key, source in defaults.items()
            if key not in getattr(spec, group)
        } | {
            key: compiler.getter(source, f"mapping.{group}.{key}")
            for key, source in getattr(spec, group).items()
        }
    key_indexes = []
    for name in options.primary_key:
        index = resolve_column(name, columns)
        if index is None:
            errors.append(f"primary_key: column '{name}' is not returned by the query")
        else:
            key_indexes.append(index)
    consent = None
    if options.consent_column is not None:
        consent = compiler.getter(options.consent_column, "settings.consent_column")
    hooks = {name: compiler.getter(Derived(derive=name), name) for name in HOOKS if name in (derived or {})}
    if errors:
        raise ConfigError([f"pipeline '{options.pipeline}': {error}" for error in errors])

    return EventMapper(
        options,
        getters,
        tuple(key_indexes),
        clock,
        consent=consent,
        custom_defaults=hooks.get("custom_data_defaults"),
        custom_overrides=hooks.get("custom_data_overrides"),
        columns_used=tuple(sorted(compiler.used | set(key_indexes))),
    )


HOOKS = ("custom_data_defaults", "custom_data_overrides")  # derived values a preset may provide
