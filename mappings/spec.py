"""The mapping section of a pipeline, as data: four field groups, each field a column or a constant."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from capi_sync.mappings.fields import (
    CUSTOM_DATA_FIELDS,
    MAPPING_GROUPS,
    REQUIRED_SERVER_EVENT_FIELDS,
    USER_FIELD_ALIASES,
    USER_FIELDS,
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Constant(BaseModel):
    """`{value: Purchase}`: the same value on every event."""

    model_config = _FROZEN
    value: Any


class Column(BaseModel):
    """`{column: email}`: the long form of writing a column name."""

    model_config = _FROZEN
    column: str


class FirstOf(BaseModel):
    """`{first_of: [a, b, {value: x}]}`: the first source that holds a non-empty value."""

    model_config = _FROZEN
    first_of: tuple[FieldSource, ...]


class AllOf(BaseModel):
    """`{all_of: [user.id, user.tcId]}`: every non-empty value, as a list (e.g. several external ids)."""

    model_config = _FROZEN
    all_of: tuple[FieldSource, ...]


class Lookup(BaseModel):
    """`{lookup: type, values: {offline: physical_store}, default: website}`: translate a value."""

    model_config = _FROZEN
    lookup: FieldSource
    values: dict[str, Any]
    default: Any = None


class Derived(BaseModel):
    """`{derive: name}`: a value computed by a preset from several fields (see `presets.py`)."""

    model_config = _FROZEN
    derive: str


GROUPS = (
    "server_event",
    "customer_info",
    "custom_data",
    "custom_properties",
    "app_data",
    "original_event_data",
)

FieldSource = str | Constant | Column | FirstOf | AllOf | Lookup | Derived
"""A plain string names a column of the query result, or a path into a JSON/STRUCT column
(`user.email`, `items.0.price`); `{value: ...}` is a constant."""

for _model in (FirstOf, AllOf, Lookup):
    _model.model_rebuild()


def column_of(source: FieldSource) -> str | None:
    if isinstance(source, str):
        return source
    if isinstance(source, Column):
        return source.column
    return None


def _unknown(group: str, key: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(known))}"
    return f"unknown {group} field '{key}'{hint}"


class MappingSpec(BaseModel):
    """Castled's four groups. Customer information keys may use readable aliases (`email` = `em`)."""

    model_config = _FROZEN
    server_event: dict[str, FieldSource] = {}
    customer_info: dict[str, FieldSource] = {}
    custom_data: dict[str, FieldSource] = {}
    custom_properties: dict[str, FieldSource] = {}
    app_data: dict[str, FieldSource] = {}
    original_event_data: dict[str, FieldSource] = {}  # the earlier event this one updates
    preset: str | None = None  # copied from the pipeline's `preset`, which provides the required fields

    @field_validator("customer_info", mode="after")
    @classmethod
    def _resolve_aliases(cls, fields: dict[str, FieldSource]) -> dict[str, FieldSource]:
        resolved: dict[str, FieldSource] = {}
        for key, source in fields.items():
            canonical = USER_FIELD_ALIASES.get(key, key)
            if canonical in resolved:
                msg = f"'{key}' and another key both map customer information field '{canonical}'"
                raise ValueError(msg)
            resolved[canonical] = source
        return resolved

    @model_validator(mode="after")
    def _check_fields(self) -> MappingSpec:
        errors = []
        for group, known in MAPPING_GROUPS.items():
            names = known | set(USER_FIELD_ALIASES) if known is USER_FIELDS else known
            errors += [_unknown(group, key, names) for key in getattr(self, group) if key not in known]
        if self.preset is None:  # a preset's own check says what it needs
            errors += [
                f"server_event.{key} is required"
                for key in REQUIRED_SERVER_EVENT_FIELDS
                if key not in self.server_event
            ]
            if not self.customer_info:
                errors.append("customer_info needs at least one field (Meta matches events on them)")
        errors += [
            f"custom_properties.{key} collides with the standard custom_data field '{key}';"
            " map it under custom_data instead"
            for key in self.custom_properties
            if key in CUSTOM_DATA_FIELDS
        ]
        if self.original_event_data:
            errors += [
                f"original_event_data.{key} is required when the group is mapped"
                for key in ("event_name", "event_time")
                if key not in self.original_event_data
            ]
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def columns(self) -> dict[str, str]:
        """Every referenced column, keyed by where it is used (`customer_info.em`)."""
        return {
            f"{group}.{key}": column
            for group in GROUPS
            for key, source in getattr(self, group).items()
            if (column := column_of(source)) is not None
        }
