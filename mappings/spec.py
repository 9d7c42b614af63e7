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


GROUPS = ("server_event", "customer_info", "custom_data", "custom_properties", "app_data")

FieldSource = str | Constant | Column
"""A plain string names a column of the query result; `{value: ...}` is a constant."""


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
