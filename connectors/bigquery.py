"""BigQuery through google-cloud-bigquery: positional query parameters, results read page by page.

BigQuery's TIMESTAMP is an instant (aware, UTC) and DATETIME a wall time (naive, read in the
pipeline's `timezone`); the kinds below say so. Only one page of `chunk_size` rows is in memory.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from capi_sync.connectors.base import (
    Chunk,
    ClosingSource,
    Column,
    Projection,
    Window,
    column_of,
    count_null_sql,
    describe_sql,
    first_line,
    window_sql,
)
from capi_sync.errors import MissingDependency, SourceError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from capi_sync.config import BigQueryWarehouse

# BigQuery type -> the name `kind_of_type` understands
_TYPE_NAMES = {
    "TIMESTAMP": "TIMESTAMP WITH TIME ZONE", "DATETIME": "TIMESTAMP", "DATE": "DATE",
    "INTEGER": "BIGINT", "INT64": "BIGINT", "NUMERIC": "NUMERIC", "BIGNUMERIC": "NUMERIC",
    "FLOAT": "DOUBLE", "FLOAT64": "DOUBLE", "STRING": "VARCHAR",
}  # fmt: skip


class BigQuerySource(ClosingSource):
    dialect = "bigquery"

    def __init__(self, config: BigQueryWarehouse) -> None:
        try:
            from google.api_core import exceptions  # noqa: PLC0415  (optional extra)
            from google.cloud import bigquery  # noqa: PLC0415
        except ModuleNotFoundError as exc:
            raise MissingDependency("google-cloud-bigquery", "bigquery") from exc
        self._bigquery = bigquery
        self._errors = (exceptions.GoogleAPIError,)
        credentials: Any = None
        try:
            if config.anonymous:
                from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415

                credentials = AnonymousCredentials()
            elif config.credentials_file is not None:
                from google.oauth2 import service_account  # noqa: PLC0415

                credentials = service_account.Credentials.from_service_account_file(
                    str(config.credentials_file)
                )
            options = {"api_endpoint": config.api_endpoint} if config.api_endpoint else None
            self._client = bigquery.Client(
                project=config.project,
                credentials=credentials,
                location=config.location,
                client_options=options,
            )
        except (OSError, ValueError, *self._errors) as exc:
            raise SourceError(f"BigQuery project {config.project}: {first_line(exc)}") from exc
        except Exception as exc:  # google.auth's DefaultCredentialsError and friends
            raise SourceError(f"BigQuery credentials: {first_line(exc)}") from exc
        self._dataset = f"{config.project}.{config.dataset}" if config.dataset else None

    def _run(self, sql: str, params: list[Any], page_size: int | None = None) -> Any:
        job_config = self._bigquery.QueryJobConfig(
            query_parameters=[self._parameter(value) for value in params],
            default_dataset=self._dataset,
            labels={"tool": "capi-sync"},
        )
        try:
            return self._client.query(sql, job_config=job_config).result(page_size=page_size)
        except self._errors as exc:
            raise SourceError(f"BigQuery: {first_line(exc)}") from exc

    def _parameter(self, value: Any) -> Any:
        """A positional parameter typed the way BigQuery compares it with the column."""
        kind = "STRING"
        if isinstance(value, bool):
            kind = "BOOL"
        elif isinstance(value, int):
            kind = "INT64"
        elif isinstance(value, float):
            kind = "FLOAT64"
        elif isinstance(value, Decimal):
            kind = "NUMERIC"
        elif isinstance(value, dt.datetime):
            kind = "DATETIME" if value.tzinfo is None else "TIMESTAMP"
        elif isinstance(value, dt.date):
            kind = "DATE"
        return self._bigquery.ScalarQueryParameter(None, kind, value)

    def describe(self, query: str) -> list[Column]:
        rows = self._run(*describe_sql(query, _positional))
        return [column_of(field.name, _TYPE_NAMES.get(field.field_type)) for field in rows.schema]

    def count_null(self, query: str, columns: Sequence[str]) -> int:
        rows = self._run(*count_null_sql(query, [quote(c) for c in columns], _positional))
        return next((int(row[0]) for row in rows), 0)

    def sql(self, query: str, window: Window, project: Projection | None = None) -> tuple[str, list[Any]]:
        return window_sql(query, window, quote, _positional, project)

    def stream(
        self, query: str, window: Window, chunk_size: int, project: Projection | None = None
    ) -> Iterator[Chunk]:
        rows = self._run(*self.sql(query, window, project), page_size=chunk_size)
        try:
            for page in rows.pages:
                yield [tuple(row.values()) for row in page]
        except self._errors as exc:
            raise SourceError(f"BigQuery failed while reading: {first_line(exc)}") from exc

    def close(self) -> None:
        self._client.close()


def quote(name: str) -> str:
    """BigQuery quotes identifiers with backticks; double quotes would make a string."""
    return "`" + name.replace("`", "\\`") + "`"


def _positional(_index: int) -> str:
    return "?"
