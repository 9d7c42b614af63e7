"""The Conversions API's field catalog: which keys exist in each mapping group, and their rules.

Kept as data so that config validation, the mapper and the docs agree on one list.
"""

from __future__ import annotations

from typing import Final

STANDARD_EVENTS: Final = frozenset(
    {
        "AddPaymentInfo", "AddToCart", "AddToWishlist", "CompleteRegistration", "Contact",
        "CustomizeProduct", "Donate", "FindLocation", "InitiateCheckout", "Lead", "PageView",
        "Purchase", "Schedule", "Search", "StartTrial", "SubmitApplication", "Subscribe",
        "ViewContent",
    }
)  # fmt: skip

ACTION_SOURCES: Final = (
    "email", "website", "app", "phone_call", "chat", "physical_store",
    "system_generated", "business_messaging", "other",
)  # fmt: skip

# Server event parameters (capi-rules.md section 3).
SERVER_EVENT_FIELDS: Final = frozenset(
    {
        "event_name", "event_time", "event_id", "event_source_url", "action_source",
        "opt_out", "referrer_url", "data_processing_options",
        "data_processing_options_country", "data_processing_options_state",
        "customer_segmentation", "messaging_channel",
    }
)  # fmt: skip
REQUIRED_SERVER_EVENT_FIELDS: Final = ("event_name", "event_time")

# Customer information parameters (section 4). Hashed keys are normalized, then SHA-256'd.
HASHED_USER_FIELDS: Final = (
    "em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id",
)  # fmt: skip
UNHASHED_USER_FIELDS: Final = (
    "client_ip_address", "client_user_agent", "fbc", "fbp", "subscription_id",
    "fb_login_id", "lead_id", "anon_id", "madid", "ctwa_clid", "page_id",
    "page_scoped_user_id", "ig_account_id", "ig_sid", "whatsapp_business_account_id",
)  # fmt: skip
USER_FIELDS: Final = frozenset(HASHED_USER_FIELDS + UNHASHED_USER_FIELDS)

# Readable aliases users may write instead of Meta's two-letter keys.
USER_FIELD_ALIASES: Final = {
    "email": "em", "phone": "ph", "first_name": "fn", "last_name": "ln", "gender": "ge",
    "date_of_birth": "db", "birthdate": "db", "city": "ct", "state": "st", "zip": "zp",
    "zipcode": "zp", "postal_code": "zp", "ip": "client_ip_address",
    "user_agent": "client_user_agent",
}  # fmt: skip

# Sets of keys that alone are too weak for Meta to match (section 4, "matching floor").
WEAK_USER_FIELD_SETS: Final = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)
# The seed's stricter gate: at least one of these identifies a person on its own. A lead's id and
# the ids of a chat (Messenger's page-scoped user, Instagram's scoped id, a click to WhatsApp) do.
STRONG_USER_FIELDS: Final = frozenset(
    {"em", "ph", "external_id", "fbp", "fbc", "lead_id", "page_scoped_user_id", "ig_sid", "ctwa_clid"}
)

# Business messaging (`action_source: business_messaging`): per `messaging_channel`, the ids its
# events carry in user_data (Meta's "Conversions API for Business Messaging" and its customer
# information parameters: page_id with page_scoped_user_id, ig_account_id with ig_sid,
# whatsapp_business_account_id with ctwa_clid).
MESSAGING_CHANNEL_KEYS: Final = {
    "messenger": ("page_id", "page_scoped_user_id"),
    "instagram": ("ig_account_id", "ig_sid"),
    "whatsapp": ("whatsapp_business_account_id", "ctwa_clid"),
}
# The event names Meta takes from business messaging; it refuses others (subcode 2804066).
BUSINESS_MESSAGING_EVENTS: Final = frozenset(
    {
        "Purchase", "InitiateCheckout", "AddToCart", "ViewContent", "LeadSubmitted", "QualifiedLead",
        "OrderCreated", "OrderShipped", "OrderDelivered", "OrderCanceled", "OrderReturned",
        "CartAbandoned", "RatingProvided", "ReviewProvided",
    }
)  # fmt: skip
# Conversion Leads (CRM) events: `custom_data.event_source: crm` (Meta's "Conversion Leads
# integration, payload specification").
CRM_EVENT_SOURCE: Final = "crm"
LEAD_ID_DIGITS: Final = (15, 16)

# `original_event_data`: the event an event updates, named as Meta's SDK names its fields.
ORIGINAL_EVENT_FIELDS: Final = frozenset({"event_name", "event_time", "order_id", "event_id"})

# Custom data parameters (section 5) and the type each is sent as.
CUSTOM_DATA_TYPES: Final = {
    "value": "float", "currency": "currency", "content_name": "str",
    "content_category": "str", "content_ids": "str_list", "contents": "contents",
    "content_type": "content_type", "order_id": "str", "predicted_ltv": "float",
    "net_revenue": "float", "num_items": "int", "search_string": "str", "status": "str",
    "delivery_category": "delivery_category", "event_source": "str", "lead_event_source": "str",
}  # fmt: skip
CUSTOM_DATA_FIELDS: Final = frozenset(CUSTOM_DATA_TYPES)

CONTENT_TYPES: Final = frozenset({"product", "product_group"})
DELIVERY_CATEGORIES: Final = frozenset({"in_store", "curbside", "home_delivery"})

# App data parameters: required when action_source is `app`.
APP_DATA_FIELDS: Final = frozenset(
    {
        "advertiser_tracking_enabled", "application_tracking_enabled", "extinfo",
        "campaign_ids", "install_referrer", "installer_package", "url_schemes",
        "windows_attribution_id", "vendor_id",
    }
)  # fmt: skip
EXTINFO_SLOTS: Final = 16
EXTINFO_VERSIONS: Final = frozenset({"a2", "i2"})  # extinfo[0]: Android or iOS

MAPPING_GROUPS: Final = {
    "server_event": SERVER_EVENT_FIELDS | {"lead_created_at"},
    "customer_info": USER_FIELDS,
    "custom_data": CUSTOM_DATA_FIELDS,
    "app_data": APP_DATA_FIELDS,
    "original_event_data": ORIGINAL_EVENT_FIELDS,
}
# capi-sync's own server_event field, never sent: when the lead was created (Meta discards a lead
# event dated before it).
LEAD_CREATED_AT: Final = "lead_created_at"
