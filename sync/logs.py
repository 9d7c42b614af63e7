"""Where capi-sync's lines go: text for people, or one JSON object per line for machines.

`--log-format json` (or `CAPI_SYNC_LOG_FORMAT=json`) turns every line written to stdout and stderr
into a JSON object with `ts` (ISO 8601, UTC), `level` and `event`; inside a run also `run_id` and
`pipeline`. Results and reports go to stdout (`capi_sync.out`), diagnostics to stderr. The JSON is
written by python-json-logger through the standard `logging` module, so a library user's own
handlers see the same records. Every string is scrubbed of secrets before it is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pythonjsonlogger.orjson import OrjsonFormatter

from capi_sync.secrets import ScrubbingFilter, scrub

if TYPE_CHECKING:
    from collections.abc import Iterator

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

logger = logging.getLogger("capi_sync")
output = logging.getLogger("capi_sync.out")  # what a command reports: stdout

# The run a line belongs to: set around a run, read by every record made inside it.
_run: ContextVar[dict[str, Any] | None] = ContextVar("capi_sync_run", default=None)


@dataclass
class Settings:
    format: LogFormat = "text"
    level: int = logging.INFO


settings = Settings()


def json_mode() -> bool:
    return settings.format == "json"


class _RunContext(logging.Filter):
    """Adds `run_id` and `pipeline` to records made inside a run, and `event` where none is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (run := _run.get()) is not None:
            for key, value in run.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        if not hasattr(record, "event"):
            record.event = "log"
        return True


class _JsonLines(OrjsonFormatter):
    """`ts`, `level`, `event` first, then the message and the record's extra fields."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname.lower()
        log_data["event"] = getattr(record, "event", "log")
        super().add_fields(log_data, record, message_dict)
        log_data.pop("levelname", None)
        if not log_data.get("message"):
            log_data.pop("message", None)
        if record.exc_info and "exc_info" in log_data:  # the traceback of a bug, scrubbed below
            log_data["exc_info"] = scrub(str(log_data["exc_info"]))

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class _Text(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="seconds")


class _StandardStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` or `sys.stderr` is at the time (a test's capture, say),
    not the stream that was current when logging was configured."""

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        super().__init__()
        self._name = name

    @property
    def stream(self) -> Any:
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(log_format: LogFormat = "text", level: str | int = "info") -> None:
    """Set the format and level for this process's lines (the CLI calls it once, first)."""
    settings.format = log_format
    settings.level = level if isinstance(level, int) else logging.getLevelName(level.upper())
    streams: tuple[tuple[str, Literal["stdout", "stderr"]], ...] = (
        ("capi_sync", "stderr"),
        ("capi_sync.out", "stdout"),
    )
    for name, stream in streams:
        target = logging.getLogger(name)
        for handler in list(target.handlers):
            target.removeHandler(handler)
        handler = _StandardStream(stream)
        handler.addFilter(_RunContext())
        handler.addFilter(ScrubbingFilter())
        if log_format == "json":
            handler.setFormatter(_JsonLines("%(message)s"))
        elif name == "capi_sync":
            handler.setFormatter(_Text("%(asctime)s %(levelname)s %(message)s"))
        target.addHandler(handler)
        target.propagate = False
        target.setLevel(settings.level)
    # other libraries' records (urllib3, the warehouses' drivers): warnings and above, in the
    # same format, instead of Python's bare last-resort lines
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "capi_sync", False)]:
        root.removeHandler(handler)
    others = _StandardStream("stderr")
    others.capi_sync = True  # type: ignore[attr-defined]
    others.addFilter(_RunContext())
    others.addFilter(ScrubbingFilter())
    others.setFormatter(
        _JsonLines("%(message)s")
        if log_format == "json"
        else _Text("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(others)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(log_format == "json")  # a library's warnings.warn() as a JSON line too


def emit(
    event: str, message: str = "", *, level: int = logging.INFO, to_stdout: bool = False, **fields: Any
) -> None:
    """One structured line: a JSON object in JSON mode; in text mode the message, if any, as a log line."""
    target = output if to_stdout else logger
    if not json_mode() and (to_stdout or not message):
        return  # text mode shows people the console's version of it instead
    target.log(level, message, extra={"event": event, **fields})


@contextlib.contextmanager
def run_context(run_id: str, pipeline: str) -> Iterator[None]:
    """Every line written inside carries this run's id and pipeline."""
    token = _run.set({"run_id": run_id, "pipeline": pipeline})
    try:
        yield
    finally:
        _run.reset(token)
