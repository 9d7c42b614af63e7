"""The reference path: Meta's own `facebook-business` SDK sending the same rows.

Rows are streamed from the same DuckDB file with `fetchmany`, turned into the SDK's serverside
`UserData`/`CustomData`/`Content`/`Event` objects (which normalize and hash PII themselves) and
sent with `EventRequest`, 1,000 events per request, one request at a time, as its docs show.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re

import duckdb
import orjson
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.content import Content
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.gender import Gender
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi, FacebookSession

GENDERS = {"m": Gender.MALE, "f": Gender.FEMALE}
NOT_DIGITS = re.compile(r"\D")


def us_phone(text: str) -> str:
    """The SDK refuses formatted numbers; an SDK user cleans them first, as here."""
    digits = NOT_DIGITS.sub("", text)
    return "1" + digits if len(digits) == 10 else digits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--graph-url", required=True)
    args = parser.parse_args()
    FacebookSession.GRAPH = args.graph_url
    FacebookAdsApi.init(access_token="bench-token", api_version="v26.0")
    con = duckdb.connect(args.database, read_only=True)
    cursor = con.execute("select * from conversions order by updated_at, order_id")
    names = [d[0] for d in cursor.description]
    events: list[Event] = []
    while chunk := cursor.fetchmany(10_000):
        for values in chunk:
            row = dict(zip(names, values, strict=True))
            user = UserData(
                emails=[row["email"].strip()], phones=[us_phone(row["phone"])],
                first_names=[row["first_name"]], last_names=[row["last_name"]],
                genders=[GENDERS[row["gender"][0].lower()]],
                dates_of_birth=[row["birth_date"].replace("-", "")], cities=[row["city"]],
                states=[row["state"]], zip_codes=[row["zip"][:5]], country_codes=[row["country"]],
                external_ids=[row["customer_id"]], client_ip_address=row["ip"],
                client_user_agent=row["user_agent"], fbp=row["fbp"], fbc=row["fbc"],
            )  # fmt: skip
            items = orjson.loads(row["items"])
            custom = CustomData(
                value=float(row["amount"]), currency=row["currency"].lower(), order_id=str(row["order_id"]),
                contents=[
                    Content(product_id=i["id"], quantity=i["quantity"], item_price=i["price"]) for i in items
                ],
            )  # fmt: skip
            events.append(
                Event(
                    event_name="Purchase",
                    event_time=int(row["created_at"].replace(tzinfo=dt.UTC).timestamp()),
                    event_id=str(row["order_id"]),
                    event_source_url=row["page_url"],
                    action_source=ActionSource.WEBSITE,
                    user_data=user,
                    custom_data=custom,
                )
            )
            if len(events) == 1000:
                EventRequest(pixel_id="1234567890", events=events).execute()
                events = []
    if events:
        EventRequest(pixel_id="1234567890", events=events).execute()


if __name__ == "__main__":
    main()
