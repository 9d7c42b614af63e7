"""A minimal stand-in for BigQuery's REST API, reached by the real google-cloud-bigquery client.

It answers the four calls a query makes (jobs.insert, jobs.query, jobs.get, jobs.getQueryResults),
runs the GoogleSQL text in DuckDB after transpiling it with sqlglot, binds the positional query
parameters by their declared types, and returns cells the way BigQuery does: strings, TIMESTAMP as
microseconds when asked, DATETIME as ISO text. Paging follows `maxResults` and `pageToken`.
Nothing else of BigQuery is imitated.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import sqlglot
from sqlglot.dialects.bigquery import BigQuery

_ROUTES = [
    ("POST", re.compile(r"^/bigquery/v2/projects/([^/]+)/jobs$"), "insert"),
    ("POST", re.compile(r"^/bigquery/v2/projects/([^/]+)/queries$"), "query"),
    ("GET", re.compile(r"^/bigquery/v2/projects/([^/]+)/jobs/([^/]+)$"), "get"),
    ("GET", re.compile(r"^/bigquery/v2/projects/([^/]+)/queries/([^/]+)$"), "results"),
]
# DuckDB result type -> BigQuery schema type
_TYPES = [
    ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP"), ("TIMESTAMP", "DATETIME"), ("DATE", "DATE"),
    ("BIGINT", "INTEGER"), ("INTEGER", "INTEGER"), ("SMALLINT", "INTEGER"), ("HUGEINT", "INTEGER"),
    ("DECIMAL", "NUMERIC"), ("DOUBLE", "FLOAT"), ("FLOAT", "FLOAT"), ("BOOLEAN", "BOOLEAN"),
    ("JSON", "JSON"), ("VARCHAR", "STRING"),
]  # fmt: skip


@dataclass
class _Job:
    job_id: str
    schema: list[dict[str, str]]
    rows: list[tuple[Any, ...]]


@dataclass
class FakeBigQuery:
    """`with FakeBigQuery(database_path) as bq:`; point `api_endpoint` at `bq.url`."""

    database: str
    project: str = "test-project"
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeBigQuery:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the API ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        for verb, pattern, name in _ROUTES:
            if verb == method and (match := pattern.match(path)):
                self.calls.append(name)
                return getattr(self, f"_{name}")(match, query, body)
        return 404, _error(404, f"no route for {method} {path}", "notFound")

    def _insert(self, _match: re.Match[str], _query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        config = body["configuration"]["query"]
        job_id = (body.get("jobReference") or {}).get("jobId") or uuid.uuid4().hex
        try:
            job = self._execute(job_id, config["query"], config.get("queryParameters") or [])
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, str(exc).splitlines()[0], "invalidQuery")
        return 200, self._job_resource(job)

    def _query(self, _match: re.Match[str], _query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        try:
            job = self._execute(uuid.uuid4().hex, body["query"], body.get("queryParameters") or [])
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, str(exc).splitlines()[0], "invalidQuery")
        page = self._page(job, {"maxResults": [str(body.get("maxResults", 0) or len(job.rows))]}, body)
        return 200, {"kind": "bigquery#queryResponse", **page}

    def _get(self, match: re.Match[str], _query: dict[str, list[str]], _body: Any) -> tuple[int, Any]:
        job = self._jobs.get(match[2])
        if job is None:
            return 404, _error(404, f"Not found: Job {match[2]}", "notFound")
        return 200, self._job_resource(job)

    def _results(self, match: re.Match[str], query: dict[str, list[str]], _body: Any) -> tuple[int, Any]:
        job = self._jobs.get(match[2])
        if job is None:
            return 404, _error(404, f"Not found: Job {match[2]}", "notFound")
        return 200, {"kind": "bigquery#getQueryResultsResponse", **self._page(job, query, {})}

    # -- machinery -------------------------------------------------------------------------------

    def _execute(self, job_id: str, sql: str, parameters: list[dict[str, Any]]) -> _Job:
        statement = _transpiled(sql)
        values = [_parameter_value(p) for p in parameters]
        with duckdb.connect(self.database, read_only=True) as con:
            con.execute("set TimeZone = 'UTC'")
            result = con.execute(statement, values)
            schema = [
                {"name": d[0], "type": _bq_type(str(d[1])), "mode": "NULLABLE"} for d in result.description
            ]
            rows = result.fetchall()
        job = _Job(job_id, schema, rows)
        with self._lock:
            self._jobs[job_id] = job
        return job

    def _job_resource(self, job: _Job) -> dict[str, Any]:
        return {
            "kind": "bigquery#job",
            "id": f"{self.project}:US.{job.job_id}",
            "jobReference": {"projectId": self.project, "jobId": job.job_id, "location": "US"},
            "configuration": {"query": {}, "jobType": "QUERY"},
            "status": {"state": "DONE"},
            "statistics": {"query": {"totalBytesProcessed": "0", "statementType": "SELECT"}},
        }

    def _page(self, job: _Job, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        start = int(_decode_token(query.get("pageToken", [""])[0]) or query.get("startIndex", ["0"])[0])
        size = int(query.get("maxResults", ["0"])[0] or 0) or len(job.rows) or 1
        micros = query.get("formatOptions.useInt64Timestamp", ["false"])[0].lower() == "true" or (
            (body.get("formatOptions") or {}).get("useInt64Timestamp") is True
        )
        chunk = job.rows[start : start + size]
        page: dict[str, Any] = {
            "jobReference": {"projectId": self.project, "jobId": job.job_id, "location": "US"},
            "jobComplete": True,
            "schema": {"fields": job.schema},
            "totalRows": str(len(job.rows)),
            "rows": [{"f": [{"v": _cell(v, micros)} for v in row]} for row in chunk],
        }
        if start + size < len(job.rows):
            page["pageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return page

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                status, payload = fake.handle(method, parts.path, parse_qs(parts.query), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


class _GoogleSQL(BigQuery):
    """BigQuery as sqlglot reads it, minus implicit UNNEST (`FROM t, t.array_column`), which no
    query here uses: looking for it deep-copies every joined subquery, and the pushdown SQL
    joins long lookup tables (7 s a statement instead of 1)."""

    class Parser(BigQuery.Parser):
        SUPPORTS_IMPLICIT_UNNEST = False


@functools.lru_cache(maxsize=64)
def _transpiled(sql: str) -> str:
    """GoogleSQL as DuckDB SQL. Cached: a run sends the same long statement more than once."""
    (statement,) = sqlglot.transpile(sql, read=_GoogleSQL, write="duckdb")
    return statement


def _error(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}


def _decode_token(token: str) -> str:
    return base64.urlsafe_b64decode(token.encode()).decode() if token else ""


def _bq_type(duckdb_type: str) -> str:
    return next((bq for prefix, bq in _TYPES if duckdb_type.startswith(prefix)), "STRING")


def _parameter_value(parameter: dict[str, Any]) -> Any:
    kind = parameter["parameterType"]["type"]
    value = (parameter.get("parameterValue") or {}).get("value")
    if value is None:
        return None
    converters = {
        "INT64": int,
        "FLOAT64": float,
        "NUMERIC": Decimal,
        "BOOL": lambda v: v.lower() == "true",
        "DATE": dt.date.fromisoformat,
        "DATETIME": dt.datetime.fromisoformat,
        "TIMESTAMP": lambda v: dt.datetime.fromisoformat(v.replace(" UTC", "+00:00").replace("Z", "+00:00")),
    }
    return converters.get(kind, str)(value)


def _cell(value: Any, micros: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            seconds = value.timestamp()
            return str(round(seconds * 1_000_000)) if micros else repr(seconds)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)
