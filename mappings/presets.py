"""Default mappings: for tables of collected events, from the seeds (`preset: commanders_act`),
and for a CRM's lead stages (`preset: crm_leads`).

A preset fills every field the user did not map. Its paths are optional: a table without an
`integrations` column simply has no overrides. What a path cannot express (contents built from
items, the 16 `extinfo` slots, "send all properties") is a derived value defined here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capi_sync.mappings.sources import parse_nested
from capi_sync.mappings.spec import AllOf, Constant, Derived, FieldSource, FirstOf, Lookup

if TYPE_CHECKING:
    from collections.abc import Callable

    from capi_sync.mappings.sources import Getter, Row, SourceCompiler

PRESETS = ("commanders_act", "crm_leads")
_FB = "integrations.facebook"
_USER_OVERRIDE = f"{_FB}.user_data"

# Commanders Act user properties -> customer information keys ("Mapping: user_data").
_USER_FIELDS = {
    "em": "user.email", "ph": "user.phone", "ge": "user.gender", "db": "user.birthdate",
    "ln": "user.lastname", "fn": "user.firstname", "ct": "user.city", "st": "user.state",
    "zp": "user.zipcode", "country": "user.country",
}  # fmt: skip
# extinfo slots ("Mapping: app_data"); None: no default field
_EXTINFO = (
    None, "app.namespace", "app.build", "app.version", "os.version", "model", "language", None,
    "network.carrier", "screen.width", "screen.height", "screen.density", None, None, None, "timezone",
)  # fmt: skip
# Not copied by "send all event properties": they are the event's structure, not its properties.
_STRUCTURE = frozenset({"event_name", "type", "context", "user", "items", "integrations", "source_key"})


def _override_first(key: str, *paths: FieldSource) -> FirstOf:
    """integrations.facebook.user_data.<key> wins, then integrations.facebook.<key>, then the rest."""
    return FirstOf(first_of=(f"{_USER_OVERRIDE}.{key}", f"{_FB}.{key}", *paths))


def commanders_act(options: dict[str, Any]) -> dict[str, dict[str, FieldSource]]:
    """The seed's tables as field sources, per mapping group."""
    app = bool(options.get("app_tracking"))
    default_source = "app" if app else "website"
    server: dict[str, FieldSource] = {
        "event_name": "event_name",
        "event_time": FirstOf(first_of=("context.event_timestamp", "event_timestamp")),
        "event_id": FirstOf(first_of=(f"{_FB}.event_id", "event_id", "context.event_id")),
        "event_source_url": FirstOf(first_of=("context.page.url", "context.page.location.href")),
        "referrer_url": "context.page.referrer",
        "action_source": FirstOf(
            first_of=(
                f"{_FB}.action_source",
                Lookup(lookup="type", values={"offline": "physical_store"}, default=default_source),
            )
        ),
    }
    for key in ("opt_out", "data_processing_options", "data_processing_options_country",
                "data_processing_options_state"):  # fmt: skip
        server[key] = FirstOf(first_of=(f"{_FB}.{key}", key))
    user: dict[str, FieldSource] = {
        key: FirstOf(first_of=(f"{_USER_OVERRIDE}.{key}", path)) for key, path in _USER_FIELDS.items()
    }
    user["external_id"] = FirstOf(
        first_of=(
            f"{_USER_OVERRIDE}.external_id",
            AllOf(
                all_of=(
                    "user.id",
                    "context.device.sdk_id",
                    FirstOf(first_of=("user.tcId", "user.tcid", "user.tc_id")),
                )
            ),
        )
    )
    user["client_ip_address"] = _override_first("client_ip_address", "ip", "context.device.ip")
    user["client_user_agent"] = _override_first(
        "client_user_agent", "user_agent", "context.device.user_agent"
    )
    user["fbc"] = _override_first("fbc", "fbc", "context.cookie._fbc")
    user["fbp"] = _override_first("fbp", "fbp", "context.cookie._fbp")
    if app:
        user["madid"] = _override_first("madid", "context.device.advertising_id")
    custom: dict[str, FieldSource] = {
        "value": "value",
        "currency": FirstOf(first_of=("currency", "items.0.currency")),
        "order_id": "id",
        "search_string": "search_term",
        "status": "status",
        "num_items": "items.length",
        "content_name": "items.0.product.name",
        "content_category": "items.0.product.category_1",
        "contents": Derived(derive="commanders_act.contents"),
        "content_ids": Derived(derive="commanders_act.content_ids"),
    }
    if content_type := options.get("content_type"):
        custom["content_type"] = Constant(value=content_type)
    groups: dict[str, dict[str, FieldSource]] = {
        "server_event": server,
        "customer_info": user,
        "custom_data": custom,
    }
    if app:
        groups["app_data"] = {
            "advertiser_tracking_enabled": "context.device.ad_tracking_enabled",
            "application_tracking_enabled": "context.device.application_tracking_enabled",
            "campaign_ids": "context.campaign.name",
            "install_referrer": FirstOf(first_of=(f"{_FB}.install_referrer", "install_referrer")),
            "installer_package": FirstOf(first_of=(f"{_FB}.installer_package", "installer_package")),
            "url_schemes": FirstOf(first_of=(f"{_FB}.url_schemes", "url_schemes")),
            "windows_attribution_id": FirstOf(
                first_of=(f"{_FB}.windows_attribution_id", "windows_attribution_id")
            ),
            "extinfo": Derived(derive="commanders_act.extinfo"),
        }
    return groups


# -- derived values -------------------------------------------------------------------------------


def _items(compiler: SourceCompiler) -> Callable[[Row], list[dict[str, Any]]]:
    get = compiler.optional("items")

    def items(row: Row) -> list[dict[str, Any]]:
        value = parse_nested(get(row))
        return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []

    return items


def _first(item: dict[str, Any], *paths: tuple[str, ...]) -> Any:
    """The example's spelling first (`product.id`, `item_quantity`, `price`), then the table's."""
    for path in paths:
        value: Any = item
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and value != "":
            return value
    return None


def _item_fields(item: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (
        _first(item, ("product", "id"), ("id",)),
        _first(item, ("item_quantity",), ("quantity",)),
        _first(item, ("price",), ("product", "price")),
    )


def _contents(compiler: SourceCompiler) -> Getter:
    items = _items(compiler)

    def contents(row: Row) -> list[dict[str, Any]] | None:
        found = [_item_fields(item) for item in items(row)]
        if not found or any(value is None for fields in found for value in fields):
            return None  # not every item is complete: content_ids instead
        return [{"id": i, "quantity": q, "item_price": p} for i, q, p in found]

    return contents


def _content_ids(compiler: SourceCompiler) -> Getter:
    items, contents = _items(compiler), _contents(compiler)

    def content_ids(row: Row) -> list[str] | None:
        if contents(row) is not None:
            return None  # mutually exclusive with contents
        ids = [str(i) for i, _, _ in map(_item_fields, items(row)) if i is not None]
        return ids or None

    return content_ids


def _extinfo(compiler: SourceCompiler) -> Getter:
    device_type = compiler.optional("context.device.type")
    slots = [compiler.optional(f"context.device.{path}") if path else None for path in _EXTINFO]

    def extinfo(row: Row) -> list[str] | None:
        kind = str(device_type(row) or "").strip().lower()
        version = {"android": "a2", "ios": "i2"}.get(kind)
        if version is None:
            return None
        return [version] + ["" if get is None or (v := get(row)) is None else str(v) for get in slots[1:]]

    return extinfo


def _all_properties(compiler: SourceCompiler) -> Getter:
    """Every root property of type string, number or boolean, as custom data."""
    columns = [(index, name) for index, name in enumerate(compiler.columns) if name.lower() not in _STRUCTURE]

    def properties(row: Row) -> dict[str, Any]:
        return {
            name: row[index]
            for index, name in columns
            if isinstance(row[index], str | int | float | bool) and not _nested_text(row[index])
        }

    return properties


def _nested_text(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip()[:1] in ("{", "[")


def _custom_overrides(compiler: SourceCompiler) -> Getter:
    get = compiler.optional(f"{_FB}.custom_data")
    return lambda row: value if isinstance(value := get(row), dict) else None


def crm_leads(options: dict[str, Any]) -> dict[str, dict[str, FieldSource]]:
    """Conversion Leads from a CRM, as Meta's payload specification has them: `system_generated`,
    `custom_data.event_source: crm` and the CRM's name as `lead_event_source`. The user maps the
    lead's id (`customer_info.lead_id`), its stage (`event_name`) and when it changed (`event_time`),
    and may map `server_event.lead_created_at` so that an event dated before the lead is rejected."""
    custom: dict[str, FieldSource] = {"event_source": Constant(value="crm")}
    if options.get("lead_event_source"):
        custom["lead_event_source"] = Constant(value=options["lead_event_source"])
    return {
        "server_event": {"action_source": Constant(value="system_generated")},
        "custom_data": custom,
    }


def preset_fields(preset: str | None, options: dict[str, Any]) -> dict[str, dict[str, FieldSource]] | None:
    """The fields a pipeline's preset fills where the mapping leaves them out."""
    if preset == "commanders_act":
        return commanders_act(options)
    if preset == "crm_leads":
        return crm_leads(options)
    return None


def derived_values(
    preset: str | None, options: dict[str, Any]
) -> dict[str, Callable[[SourceCompiler], Getter]]:
    """The derived values (and custom-data hooks) a pipeline's preset provides."""
    if preset != "commanders_act":
        return {}
    derived: dict[str, Callable[[SourceCompiler], Getter]] = {
        "commanders_act.contents": _contents,
        "commanders_act.content_ids": _content_ids,
        "commanders_act.extinfo": _extinfo,
        "custom_data_overrides": _custom_overrides,
    }
    if options.get("send_all_properties"):
        derived["custom_data_defaults"] = _all_properties
    return derived
