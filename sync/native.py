"""The native core (`core/`, built into `capi_sync._core`): Arrow record batches in, events out.

The Python mapper stays the reference. `compile_plan` turns a pipeline's mapping into the plan the
core executes, or says why it cannot (then the whole run uses the reference). Per row, the core
writes an event only where it can prove the reference writes the same bytes; every other row (a
rejection, a dropped value, text outside ASCII, a form only the reference reads) comes back and
the reference maps it. The rules' tables (countries, subdivisions, currencies, North American
phone patterns) travel in the plan from the reference's own modules: one copy of each rule.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from capi_sync.errors import NativeUnsupported
from capi_sync.mappings import normalize, urls, validate
from capi_sync.mappings.fields import (
    ACTION_SOURCES,
    CONTENT_TYPES,
    CUSTOM_DATA_TYPES,
    DELIVERY_CATEGORIES,
    HASHED_USER_FIELDS,
    STRONG_USER_FIELDS,
    WEAK_USER_FIELD_SETS,
)
from capi_sync.mappings.mapper import MappedRow
from capi_sync.mappings.reference import reference
from capi_sync.mappings.sources import SourceCompiler
from capi_sync.mappings.spec import AllOf, Column, Constant, FirstOf, Lookup

try:
    from capi_sync import _core

    BUILT = True
except ImportError:  # built without a Rust toolchain: the reference maps every row
    BUILT = False

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import pyarrow as pa

    from capi_sync.mappings.mapper import EventMapper, MapperOptions
    from capi_sync.mappings.spec import FieldSource, MappingSpec

ENGINE_VARIABLE = "CAPI_SYNC_ENGINE"  # `python` maps every row with the reference


def available() -> bool:
    """Whether the core is built into this installation (and not switched off)."""
    return BUILT and os.environ.get(ENGINE_VARIABLE, "").lower() != "python"


def engine() -> str:
    """What maps rows here, as `capi-sync --version` says it."""
    if not BUILT:
        return "pure Python (the native core is not built)"
    if not available():
        return f"pure Python ({ENGINE_VARIABLE}=python)"
    return f"native core {_core.__version__} ({_core.build_profile} build)"


_RULES: dict[normalize.Normalizer, str] = {
    normalize.email: "email",
    normalize.phone: "phone",
    normalize.gender: "gender",
    normalize.birth_date: "birth_date",
    normalize.city: "city",
    normalize.state: "state",
    normalize.zip_code: "zip",
    normalize.country_code: "country",
    normalize.external_id: "external_id",
    normalize.ip_address: "ip_address",
    normalize.integer_id: "integer_id",
    normalize.lead_id: "lead_id",
    normalize.plain: "plain",
}
_SERVER_TEXT = ("event_source_url", "referrer_url")
# The typed server fields, as `mapper._SERVER_CONVERTERS` converts them.
_SERVER_TYPED = {
    "opt_out": "bool",
    "data_processing_options": "str_list",
    "data_processing_options_country": "int",
    "data_processing_options_state": "int",
    "customer_segmentation": "json",
}
_SERVER_READ = frozenset(
    {"event_name", "event_time", "event_id", "action_source", *_SERVER_TEXT, *_SERVER_TYPED}
)


@dataclass(frozen=True)
class NativePlan:
    """A compiled plan and what Python needs around it."""

    plan: _core.Plan
    user_order: tuple[str, ...]
    key_indexes: tuple[int, ...]
    used: tuple[int, ...]  # the columns the mapping reads: the reference gets only these
    paths: tuple[tuple[int, tuple[str, ...]], ...] = ()  # field names into STRUCT columns
    direct: frozenset[int] = frozenset()  # columns read as values (not only through paths)


def compile_plan(
    mapping: MappingSpec,
    options: MapperOptions,
    columns: Sequence[str],
    mapper: EventMapper,
    *,
    preset: str | None = None,
) -> NativePlan:
    """The plan for `mapping` (as the mapper reads it: pushed keys already swapped in) against
    the query's columns; raises `NativeUnsupported` with the reason."""
    if not BUILT:
        raise NativeUnsupported("the native core is not built")
    if _core.unicode_version != unicodedata.unidata_version:
        raise NativeUnsupported(
            f"text under this Python's Unicode {unicodedata.unidata_version} (the core's tables are"
            f" {_core.unicode_version}: run core/scripts/generate_unicode.py and rebuild)"
        )
    if preset == "commanders_act":
        raise NativeUnsupported(f"preset '{preset}' (its derived values are the reference's)")
    if preset is not None:
        raise NativeUnsupported(f"preset '{preset}' (its rules are the reference's)")
    if mapping.app_data:
        raise NativeUnsupported("app_data")
    if mapping.original_event_data:
        raise NativeUnsupported("original_event_data")
    if "event_source" in mapping.custom_data or "event_source" in mapping.custom_properties:
        raise NativeUnsupported("custom_data.event_source (Conversion Leads' rules are the reference's)")
    server = mapping.server_event
    paths: list[tuple[int, tuple[str, ...]]] = []
    direct: set[int] = set(mapper.key_indexes)
    if extra := sorted(set(server) - _SERVER_READ):
        raise NativeUnsupported(f"server_event.{extra[0]}")

    def constant_of(constant: Any, where: str) -> Any:
        if constant is not None and not isinstance(constant, str | int | float | bool):
            raise NativeUnsupported(f"{where}: a constant of type {type(constant).__name__}")
        if isinstance(constant, int) and not isinstance(constant, bool) and not -(2**63) <= constant < 2**63:
            raise NativeUnsupported(f"{where}: a constant beyond 64 bits")
        return constant

    def source(value: FieldSource, where: str) -> dict[str, Any]:
        if isinstance(value, Constant):
            return {"constant": constant_of(value.value, where)}
        if isinstance(value, FirstOf):
            return {"first_of": [source(each, where) for each in value.first_of]}
        if isinstance(value, AllOf):
            if not where.startswith("customer_info.") or where == "customer_info.country":
                raise NativeUnsupported(f"{where}: all_of outside customer information")
            return {"all_of": [source(each, where) for each in value.all_of]}
        if isinstance(value, Lookup):
            return {
                "lookup": source(value.lookup, where),
                "values": {key: constant_of(found, where) for key, found in value.values.items()},
                "default": constant_of(value.default, where),
            }
        name = value.column if isinstance(value, Column) else value
        if not isinstance(name, str):
            raise NativeUnsupported(f"{where}: a {type(value).__name__.lower()} source")
        found = SourceCompiler(columns).path(name)
        if found is None:
            raise NativeUnsupported(f"{where}: '{name}' is not a column")
        index, parts = found
        if not parts:
            direct.add(index)
            return {"column": index}
        if not all(part.isascii() for part in parts):  # `str.isdigit` reads more than ASCII digits
            raise NativeUnsupported(f"{where}: '{name}' is a path of non-ASCII names")
        if (index, parts) not in paths:  # STRUCT fields, or JSON text walked row by row
            paths.append((index, parts))
        return {"path": paths.index((index, parts))}

    def user_field(key: str, value: FieldSource) -> dict[str, Any]:
        if key in options.pushed_keys:
            rule = "pushed"
        else:
            found = "name" if key in ("fn", "ln") else _RULES.get(mapper.normalizer_of(key))
            if found is None:
                raise NativeUnsupported(f"customer_info.{key}: its rule")
            rule = found
        hashed = key in HASHED_USER_FIELDS and (key != "external_id" or options.hash_external_id)
        return {"key": key, "source": source(value, f"customer_info.{key}"), "rule": rule, "hashed": hashed}

    user = dict(mapping.customer_info)
    country = user.pop("country", None)
    custom = []
    for key, value in mapping.custom_data.items():
        custom.append(
            {"key": key, "source": source(value, f"custom_data.{key}"), "type": CUSTOM_DATA_TYPES[key]}
        )
    tables = reference()
    spec: dict[str, Any] = {
        "pipeline": options.pipeline,
        "key_columns": list(mapper.key_indexes),
        "event_name": source(server["event_name"], "server_event.event_name"),
        "event_time": source(server["event_time"], "server_event.event_time"),
        "event_id": source(server["event_id"], "server_event.event_id") if "event_id" in server else None,
        "action_source": (
            source(server["action_source"], "server_event.action_source")
            if "action_source" in server
            else None
        ),
        "default_action_source": options.action_source,
        "urls": [
            [name, source(server[name], f"server_event.{name}")] for name in _SERVER_TEXT if name in server
        ],
        "server_typed": [
            {"key": key, "source": source(value, f"server_event.{key}"), "type": _SERVER_TYPED[key]}
            for key, value in server.items()
            if key in _SERVER_TYPED
        ],
        "renames": dict(options.event_renames),
        "country": user_field("country", country) if country is not None else None,
        "user": [user_field(key, value) for key, value in user.items()],
        "custom": custom,
        "properties": [
            {"key": key, "source": source(value, f"custom_properties.{key}")}
            for key, value in mapping.custom_properties.items()
        ],
        "utc": options.timezone == "UTC",
        "fbc_from_fbclid": options.fbc_from_fbclid,
        "hashing_required": options.hashing_required,
        "consent": (
            {
                "source": source(options.consent_column, "settings.consent_column"),
                "category": options.consent_category,
            }
            if options.consent_column is not None
            else None
        ),
        "url_redaction": options.url_redaction,
        "redacted_path": urls.REDACTED_PATH,
        "strong_key_required": options.strong_match_key_required,
        "default_phone_region": options.default_phone_region,
        "current_year": normalize._current_year(),
        # a chat's events (business_messaging) go to the reference, which knows their rules
        "action_sources": [name for name in ACTION_SOURCES if name != "business_messaging"],
        "strong_keys": sorted(STRONG_USER_FIELDS),
        "weak_key_sets": [sorted(weak) for weak in WEAK_USER_FIELD_SETS],
        "currencies": sorted(tables.currencies),
        "content_types": sorted(CONTENT_TYPES),
        "delivery_categories": sorted(DELIVERY_CATEGORIES),
        "countries": tables.countries,
        "subdivisions": tables.subdivisions,
        "nanp": [
            {
                "leading": region.leading,
                "general": region.general,
                "types": "|".join(f"(?:{pattern})" for pattern in region.types) or None,
            }
            for region in tables.nanp
        ],
        "max_age_seconds": validate.MAX_AGE_SECONDS,
        "max_age_seconds_physical_store": validate.MAX_AGE_SECONDS_PHYSICAL_STORE,
        "max_future_seconds": validate.MAX_FUTURE_SECONDS,
    }
    spec["paths"] = [[index, list(parts)] for index, parts in paths]  # after every source is read
    try:
        plan = _core.Plan(orjson.dumps(spec).decode())
    except ValueError as exc:
        raise NativeUnsupported(str(exc)) from None
    used = mapper.columns_used if mapper.columns_used is not None else range(len(columns))
    return NativePlan(
        plan, tuple(plan.user_order), tuple(mapper.key_indexes), tuple(used), tuple(paths), frozenset(direct)
    )


def readable(schema: pa.Schema, native: NativePlan) -> str | None:
    """None when the core reads the columns and STRUCT fields `native` uses as Python reads them;
    else the first that it does not (the run then reads rows the reference's way)."""
    for index in sorted(native.direct):
        field = schema.field(index)
        if not _reads(field.type):
            return f"column '{field.name}' is {field.type}"
    for index, parts in native.paths:
        field = schema.field(index)
        kind, walked = field.type, field.name
        if _is_text(kind):
            continue  # JSON text: the core walks each row's value as `sources.walk` does
        for part in parts:
            names = [kind.field(i).name for i in range(kind.num_fields)] if _is_struct(kind) else []
            if names.count(part) != 1:
                return f"'{walked}.{part}' (the core reads paths through STRUCT fields)"
            kind, walked = kind.field(names.index(part)).type, f"{walked}.{part}"
        if not _reads(kind):
            return f"'{walked}', which is {kind}"
    return None


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa  # noqa: PLC0415 (a dependency of the Arrow path only)

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _is_struct(kind: pa.DataType) -> bool:
    import pyarrow as pa  # noqa: PLC0415 (a dependency of the Arrow path only)

    return bool(pa.types.is_struct(kind))


def _reads(kind: pa.DataType) -> bool:
    """The Arrow types the core reads exactly as Python reads the same values (`value.rs`)."""
    import pyarrow as pa  # noqa: PLC0415

    if pa.types.is_timestamp(kind):
        return bool(kind.unit != "ns")
    return bool(
        pa.types.is_null(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_float32(kind)
        or pa.types.is_float64(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_decimal128(kind)
    )


class Built:
    """One record batch through the core: its events, row keys and key values, in row order.

    `all_native` says every row became an event the core wrote; then the lists line up with the
    rows and the runner takes them as blocks. Otherwise `mapped_rows` gives each row's outcome,
    the reference mapping the rows the core handed back.
    """

    def __init__(self, native: NativePlan, mapper: EventMapper, batch: pa.RecordBatch, now: float) -> None:
        built = _core.build(native.plan, batch, now)
        self._native: NativePlan = native
        self._mapper: EventMapper = mapper
        self._batch: pa.RecordBatch = batch
        self._now: float = now
        self.flags: bytes = built.native
        self.row_keys: list[str | None] = built.row_keys
        self.events: list[bytes] = built.events
        self.shapes: list[int] = built.shapes
        self.event_names: list[str] = built.event_names
        key_columns = [batch.column(index).to_pylist() for index in native.key_indexes]
        self.key_values: list[tuple[Any, ...]] = list(zip(*key_columns, strict=True))
        self.all_native: bool = len(self.events) == batch.num_rows
        self._shape_keys: dict[int, tuple[str, ...]] = {}

    def user_keys(self, shape: int) -> tuple[str, ...]:
        """The customer-information keys of a shape, in the order the event carries them."""
        found = self._shape_keys.get(shape)
        if found is None:
            order = self._native.user_order
            found = self._shape_keys[shape] = tuple(k for i, k in enumerate(order) if shape >> i & 1)
        return found

    def event_name(self, shape: int) -> str:
        """The name of the event a shape belongs to (the core keeps it above the key bits)."""
        return self.event_names[shape >> _core.NAME_SHIFT]

    def mapped_rows(self) -> Iterator[MappedRow]:
        """Every row, in order, as the reference would map it (events the core wrote are bytes)."""
        events, shapes = iter(self.events), iter(self.shapes)
        rows: list[Any] | None = None
        for position, flag in enumerate(self.flags):
            if flag:
                shape = next(shapes)
                row_key = self.row_keys[position]
                yield MappedRow(
                    row_key,  # type: ignore[arg-type]
                    next(events),
                    (),
                    self.key_values[position],
                    user_keys=self.user_keys(shape),
                    event_name=self.event_name(shape),
                )
                continue
            if rows is None:  # the reference reads Python values, as the row path would hand them over
                rows = _rows_of(self._batch, self._native.used)
            yield self._mapper.map_row(rows[position], self._now)


def map_batch(
    native: NativePlan, mapper: EventMapper, batch: pa.RecordBatch, now: float | None = None
) -> Iterator[MappedRow]:
    """Every row of `batch`, in order, as the reference would map it: written by the core where it
    could, by the reference elsewhere. Events written by the core are JSON bytes."""
    return Built(native, mapper, batch, mapper.now() if now is None else now).mapped_rows()


def _rows_of(batch: pa.RecordBatch, used: Sequence[int]) -> list[tuple[Any, ...]]:
    """The batch as row tuples, with values in the columns the mapping reads (None elsewhere)."""
    unread = [None] * batch.num_rows
    columns = [unread] * batch.num_columns
    for index in used:
        columns[index] = batch.column(index).to_pylist()
    return list(zip(*columns, strict=True))
