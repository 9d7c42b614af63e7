"""Meta's Marketing API versions and their end of life, for `capi-sync check`.

The Conversions API is part of the Marketing API, whose versions live much shorter than the Graph
API's (about a year, against two). Source: Meta's "Marketing API version history",
https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions
as read on `CHECKED_ON`. "TBD" there is None here. Update the table with each Meta release.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

SOURCE = "https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions"
CHECKED_ON = dt.date(2026, 12, 4)
WARN_DAYS = 90  # `check` warns this long before a version's end of life

_D = dt.date
# (version, released, expires)
VERSIONS: tuple[tuple[str, dt.date, dt.date | None], ...] = (
    ("v27.0", _D(2026, 11, 4), None),
    ("v26.0", _D(2026, 7, 29), None),
    ("v25.0", _D(2026, 2, 18), _D(2027, 2, 23)),
    ("v24.0", _D(2025, 10, 8), _D(2026, 11, 10)),
    ("v23.0", _D(2025, 5, 29), _D(2026, 6, 9)),
    ("v22.0", _D(2025, 1, 21), _D(2026, 2, 19)),
    ("v21.0", _D(2024, 10, 2), _D(2025, 9, 9)),
    ("v20.0", _D(2024, 5, 21), _D(2025, 5, 6)),
    ("v19.0", _D(2024, 1, 23), _D(2025, 2, 4)),
    ("v18.0", _D(2023, 9, 12), _D(2024, 8, 13)),
    ("v17.0", _D(2023, 5, 23), _D(2024, 5, 14)),
    ("v16.0", _D(2023, 2, 2), _D(2024, 2, 6)),
    ("v15.0", _D(2022, 9, 15), _D(2023, 9, 20)),
    ("v14.0", _D(2022, 5, 25), _D(2023, 9, 20)),
    ("v13.0", _D(2022, 2, 8), _D(2023, 1, 25)),
    ("v12.0", _D(2021, 9, 14), _D(2022, 8, 9)),
)


@dataclass(frozen=True)
class VersionVerdict:
    """What `check` says of an `api_version`: `ok` False for past or near its end of life."""

    ok: bool
    message: str


def verdict(version: str, today: dt.date | None = None) -> VersionVerdict:
    """Whether `version` is past Meta's end of life, or within `WARN_DAYS` of it, on `today`."""
    today = today or dt.datetime.now(dt.UTC).date()
    known = {name: expires for name, _released, expires in VERSIONS}
    newest = VERSIONS[0][0]
    where = f"(Meta's Marketing API versions, {SOURCE}, as of {CHECKED_ON:%Y-%m-%d})"
    if version not in known:
        if _number(version) > _number(newest):
            return VersionVerdict(True, f"{version} is newer than capi-sync's table {where}")
        oldest = VERSIONS[-1]
        return VersionVerdict(
            False,
            f"{version} reached its end of life by {oldest[2]:%Y-%m-%d} at the latest {where}: use {newest}",
        )
    expires = known[version]
    if expires is None:
        return VersionVerdict(True, f"{version}: no end of life announced yet {where}")
    days = (expires - today).days
    if days < 0:
        return VersionVerdict(
            False, f"{version} reached its end of life on {expires:%Y-%m-%d} {where}: use {newest}"
        )
    if days <= WARN_DAYS:
        return VersionVerdict(
            False,
            f"{version} reaches its end of life on {expires:%Y-%m-%d}, in {days} days {where}: use {newest}",
        )
    return VersionVerdict(True, f"{version}: supported until {expires:%Y-%m-%d} {where}")


def _number(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)
