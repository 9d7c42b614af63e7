"""Every exception capi-sync raises, grouped by what the caller must do.

    CapiSyncError
    ├── ConfigError(errors)          bad YAML, unknown field, missing ${VAR}, unknown column → exit 2
    │   └── BackfillRefused          a backfill range reaching past what Meta accepts        → exit 2
    ├── MissingDependency            an optional driver is not installed                    → exit 2
    ├── SourceError                  the warehouse failed while reading                      → exit 1
    │   └── SetupError               it could not be opened, or the query not described      → exit 2
    ├── ResultsNotWritten            `--results PATH` could not be written (the run is recorded) → exit 1
    ├── MetricsNotExported           a metrics file, Pushgateway or port failed (run recorded) → exit 1
    ├── StateError                   the state store failed                                  → exit 1
    │   ├── StateSetupError          it could not be opened (bad URL, path, driver)          → exit 2
    │   └── PipelineLocked           another process is running this pipeline                → exit 1
    └── MetaError                    the Graph API refused or could not be reached
        ├── MetaRetryableError       throttling, 5xx, codes 1/2/341/368, timeouts            → retried
        └── MetaFatalError           stops the run                                           → exit 1
            ├── MetaAuthError        code 190: the token is invalid or expired
            ├── MetaPermissionError  codes 3, 10, 200-299
            ├── MetaRequestError     code 100 and other 4xx: the batch itself is invalid
            │   ├── MetaTooLargeError  HTTP 413: split the batch; one event too large is rejected
            │   └── EventNotSerializable  an event JSON cannot carry: split; that event is rejected
    ├── InvalidValue(rule)           a value breaks a normalization rule: the mapper rejects the
    │                                row or drops the value; never leaves the mapper
    ├── PushdownError(reasons)       a pipeline hash pushdown cannot express        → ConfigError
    ├── TemplateProblem              a query template that does not render          → ConfigError
    └── NativeUnsupported            a mapping the native core's plan cannot express: the run
                                     maps in Python and says why; never leaves the runner

    KeyboardInterrupt
    └── StopRequested                the scheduler asks a run to stop: the path Ctrl-C takes

A row that cannot become an event is not an exception: the mapper returns a `Rejection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class CapiSyncError(Exception):
    """Base of every error capi-sync raises on purpose."""


class ConfigError(CapiSyncError):
    """The configuration is wrong; raised before any row is read, listing every problem."""

    def __init__(self, errors: Sequence[str], *, source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {error}" for error in self.errors)
        super().__init__(f"{len(self.errors)} configuration error(s){where}:\n{lines}")


class BackfillRefused(ConfigError):
    """The range reaches past what Meta accepts; the message says which part and what to do."""


class MissingDependency(CapiSyncError, ImportError):
    """An optional driver is missing; the message carries the exact install command."""

    def __init__(self, package: str, extra: str) -> None:
        msg = f"{package} is not installed; install it with: pip install 'capi-sync[{extra}]'"
        super().__init__(msg)


class SourceError(CapiSyncError):
    """The warehouse failed to connect, describe or stream the query."""


class SetupError(SourceError):
    """Opening the warehouse or describing the query failed, before any row was read: a missing
    file, bad credentials, SQL that does not compile. Configuration or setup, so exit 2."""


class ResultsNotWritten(CapiSyncError):
    """`--results PATH` could not be written; the run itself is done and recorded."""


class MetricsNotExported(CapiSyncError):
    """`--metrics-textfile`, `--pushgateway` or `--metrics-port` failed; runs are recorded."""


class StateError(CapiSyncError):
    """The state store could not be read or written."""


class StateSetupError(StateError):
    """The state store could not be opened: a bad --state, a file where its folder goes, no driver."""


class PipelineLocked(StateError):
    """Another process holds this pipeline's lock."""


class MetaError(CapiSyncError):
    """The Graph API answered with an error or could not be reached.

    The message never contains the access token: the client scrubs it before raising.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        user_message: str | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.subcode = subcode
        self.user_message = user_message
        self.fbtrace_id = fbtrace_id
        super().__init__(message)


class MetaRetryableError(MetaError):
    """Throttling, server errors and dropped connections: worth another try after a pause.

    `retry_after`: seconds Meta said the throttle lasts (its usage headers), when it said so.
    """

    retry_after: float | None = None


class MetaFatalError(MetaError):
    """Retrying will not help; the run stops."""


class MetaAuthError(MetaFatalError):
    """Code 190: the access token is invalid or expired."""


class MetaPermissionError(MetaFatalError):
    """Codes 3, 10, 200-299: the token lacks a permission or the app a capability."""


class MetaRequestError(MetaFatalError):
    """Code 100 and other client errors: some event in the batch is invalid."""


class MetaTooLargeError(MetaRequestError):
    """HTTP 413, or a request over `max_request_bytes`: split it; an event too large alone is rejected."""

    rule = "event_too_large"


class EventNotSerializable(MetaRequestError):
    """A value JSON cannot carry reached an event (the mapper should have refused it): split the
    request; the event alone is rejected, never sent, and the run goes on."""

    rule = "unserializable_event"


class InvalidValue(CapiSyncError, ValueError):
    """A value breaks a normalization rule; `rule` is a stable identifier shown to users."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        super().__init__(rule)


class PushdownError(CapiSyncError, ValueError):
    """A pipeline that cannot be pushed down; each reason names the field and the rule."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class TemplateProblem(CapiSyncError, ValueError):
    """A query template that does not render; reported as a config error."""


class NativeUnsupported(CapiSyncError):
    """The native core's plan cannot express this mapping: the run uses the reference, and says why."""


class StopRequested(KeyboardInterrupt):
    """A stop asked for by the scheduler takes the same path as Ctrl-C: drain, commit, interrupted."""
