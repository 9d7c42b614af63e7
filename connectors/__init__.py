"""Warehouse sources and the Meta client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from capi_sync.connectors.base import Source, Window

if TYPE_CHECKING:
    from capi_sync.config import AnyWarehouse

__all__ = ["Source", "Window", "open_source"]


def open_source(config: AnyWarehouse) -> Source:
    """Connect to the configured warehouse; drivers are imported only when used."""
    if config.type == "duckdb":
        from capi_sync.connectors.duckdb import DuckDBSource

        return DuckDBSource(config)
    if config.type == "snowflake":
        from capi_sync.connectors.snowflake import SnowflakeSource

        return SnowflakeSource(config)
    if config.type == "bigquery":
        from capi_sync.connectors.bigquery import BigQuerySource

        return BigQuerySource(config)
    from capi_sync.connectors.sqlalchemy import SQLAlchemySource

    return SQLAlchemySource(config)
