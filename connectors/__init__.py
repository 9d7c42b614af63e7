"""Warehouse sources and the Meta client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from capi_sync.connectors.base import Source, Window

if TYPE_CHECKING:
    from capi_sync.config import DuckDBWarehouse, SQLAlchemyWarehouse

__all__ = ["Source", "Window", "open_source"]


def open_source(config: DuckDBWarehouse | SQLAlchemyWarehouse) -> Source:
    """Connect to the configured warehouse; drivers are imported only when used."""
    if config.type == "duckdb":
        from capi_sync.connectors.duckdb import DuckDBSource

        return DuckDBSource(config)
    from capi_sync.connectors.sqlalchemy import SQLAlchemySource

    return SQLAlchemySource(config)
