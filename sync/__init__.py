"""capi-sync: warehouse rows to Meta Conversions API events, normalized, hashed and deduplicated."""

__version__ = "0.1.0"
