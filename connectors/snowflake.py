"""Snowflake through snowflake-connector-python, with server-side binding (`qmark`) and UTC sessions.

The session's TIMEZONE is UTC, so TIMESTAMP_LTZ and TIMESTAMP_TZ arrive as aware UTC datetimes
and TIMESTAMP_NTZ as naive wall time (read in the pipeline's `timezone`). `fetchmany` pulls the
result's chunks from Snowflake as it goes, so memory holds about one chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capi_sync.connectors.base import DBAPISource, first_line
from capi_sync.errors import MissingDependency, SourceError

if TYPE_CHECKING:
    from capi_sync.config import SnowflakeWarehouse

# snowflake.connector.constants.FIELD_ID_TO_NAME, the type codes of cursor.description
_TYPE_NAMES = {
    0: "NUMBER", 1: "FLOAT", 2: "TEXT", 3: "DATE", 4: "TIMESTAMP_NTZ", 5: "VARIANT",
    6: "TIMESTAMP_LTZ", 7: "TIMESTAMP_TZ", 8: "TIMESTAMP_NTZ", 9: "OBJECT", 10: "ARRAY",
    11: "BINARY", 12: "TIME", 13: "BOOLEAN",
}  # fmt: skip


class SnowflakeSource(DBAPISource):
    _label = "Snowflake"
    dialect = "snowflake"

    def __init__(self, config: SnowflakeWarehouse) -> None:
        try:
            import snowflake.connector  # noqa: PLC0415  (optional extra)
        except ModuleNotFoundError as exc:
            raise MissingDependency("snowflake-connector-python", "snowflake") from exc
        self._errors: tuple[type[Exception], ...] = (snowflake.connector.Error,)
        options: dict[str, Any] = {
            "account": config.account,
            "user": config.user,
            "paramstyle": "qmark",  # bound by Snowflake, not interpolated by the client
            "session_parameters": {"TIMEZONE": "UTC", "QUERY_TAG": "capi-sync"},
            "application": "capi-sync",
            **{
                key: value
                for key, value in {
                    "warehouse": config.warehouse,
                    "database": config.database,
                    "schema": config.schema_,
                    "role": config.role,
                    "host": config.host,
                    "port": config.port,
                    "protocol": config.protocol,
                    "authenticator": config.authenticator,
                }.items()
                if value is not None
            },
        }
        if config.password is not None:
            options["password"] = config.password.get_secret_value()
        if config.private_key_file is not None:
            options["private_key_file"] = str(config.private_key_file)
            if config.private_key_file_pwd is not None:
                options["private_key_file_pwd"] = config.private_key_file_pwd.get_secret_value()
        extra = dict(config.connect_args)
        options["session_parameters"] |= extra.pop("session_parameters", {})
        try:
            self._connection = snowflake.connector.connect(**options, **extra)
        except self._errors as exc:
            raise SourceError(
                f"cannot connect to Snowflake account {config.account}: {first_line(exc)}"
            ) from exc

    def _type_name(self, description: Any) -> str | None:
        name = _TYPE_NAMES.get(description.type_code)
        if name == "NUMBER" and description.scale == 0:
            return "BIGINT"
        return name
