"""Event names onto Meta's standard events, from the seeds' tables (Commanders Act, Freshpaint).

Names compare case-insensitively and ignore how words are separated, so `product added`,
`Product_added` and `productAdded` are one name. Names in no table stay as they are (custom events).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

STANDARD_EVENTS = (
    "AddPaymentInfo", "AddToCart", "AddToWishlist", "CompleteRegistration", "Contact",
    "CustomizeProduct", "Donate", "FindLocation", "InitiateCheckout", "Lead", "PageView",
    "Purchase", "Schedule", "Search", "StartTrial", "SubmitApplication", "Subscribe", "ViewContent",
)  # fmt: skip

# Commanders Act's "Mapping: event_name" table (seed 000).
COMMANDERS_ACT_EVENTS = {
    "begin_checkout": "InitiateCheckout", "purchase": "Purchase", "add_to_cart": "AddToCart",
    "view_item": "ViewContent", "view_item_list": "ViewContent", "search": "Search",
    "add_payment_info": "AddPaymentInfo", "add_to_wishlist": "AddToWishlist", "generate_lead": "Lead",
    "page_view": "PageView", "sign_up": "CompleteRegistration", "contact": "Contact",
    "customize_product": "CustomizeProduct", "donate": "Donate", "find_location": "FindLocation",
    "schedule": "Schedule", "start_trial": "StartTrial", "submit_application": "SubmitApplication",
    "subscribe": "Subscribe",
}  # fmt: skip

# Freshpaint's aliases (seed 003): Segment-style spec names.
FRESHPAINT_ALIASES = {
    "product added": "AddToCart", "added product": "AddToCart",
    "checkout started": "InitiateCheckout", "started checkout": "InitiateCheckout",
    "products searched": "Search", "searched products": "Search",
    "product list viewed": "ViewContent", "viewed product list": "ViewContent",
    "product category viewed": "ViewContent", "viewed product category": "ViewContent",
    "product viewed": "ViewContent", "viewed product": "ViewContent",
}  # fmt: skip

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[\s_\-]+")


def name_key(name: str) -> str:
    """`Product_added`, `product added`, `productAdded` -> `productadded`."""
    return _SEPARATORS.sub("", _CAMEL.sub(" ", name.strip())).lower()


def build_renames(extra: Mapping[str, str] | None = None, *, standard: bool = True) -> dict[str, str]:
    """The lookup table by `name_key`; the user's own renames win over the seeds'."""
    table: dict[str, str] = {}
    if standard:
        table.update({name_key(name): name for name in STANDARD_EVENTS})
        table.update({name_key(name): target for name, target in COMMANDERS_ACT_EVENTS.items()})
        table.update({name_key(name): target for name, target in FRESHPAINT_ALIASES.items()})
    table.update({name_key(name): target for name, target in (extra or {}).items()})
    return table


def rename(name: str, table: Mapping[str, str]) -> str:
    return table.get(name_key(name), name)
