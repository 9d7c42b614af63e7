"""SHA-256 as Meta expects it: lowercase hex of the UTF-8 bytes, never of an empty string."""

from __future__ import annotations

from hashlib import sha256

_HEX = frozenset("0123456789abcdefABCDEF")


def sha256_hex(normalized: str) -> str:
    """Hash a value that is already normalized; callers never pass an empty string."""
    return sha256(normalized.encode()).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """True only for exactly 64 hex characters (anchored: a digest inside a longer string is not one)."""
    return len(value) == 64 and _HEX.issuperset(value)
