"""capi-sync: warehouse rows to Meta Conversions API events, normalized, hashed and deduplicated.

Usage from Python, the same path the CLI takes:

    from capi_sync import RunOptions, StateStore, load_config, run_pipeline

    project = load_config("pipelines.yaml")
    with StateStore("sqlite:///state.db") as store:
        report = run_pipeline(project, "purchases", store, RunOptions(dry_run=True))
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported on first use: `import capi_sync` stays cheap, and the warehouse drivers load only when used.
_EXPORTS = {
    "PipelineConfig": "capi_sync.config",
    "ProjectConfig": "capi_sync.config",
    "load_config": "capi_sync.config",
    "BackfillRefused": "capi_sync.errors",
    "CapiSyncError": "capi_sync.errors",
    "ConfigError": "capi_sync.errors",
    "EventNotSerializable": "capi_sync.errors",
    "InvalidValue": "capi_sync.errors",
    "MetaAuthError": "capi_sync.errors",
    "MetaError": "capi_sync.errors",
    "MetaFatalError": "capi_sync.errors",
    "MetaPermissionError": "capi_sync.errors",
    "MetaRequestError": "capi_sync.errors",
    "MetaRetryableError": "capi_sync.errors",
    "MetaTooLargeError": "capi_sync.errors",
    "MetricsNotExported": "capi_sync.errors",
    "MissingDependency": "capi_sync.errors",
    "NativeUnsupported": "capi_sync.errors",
    "PipelineLocked": "capi_sync.errors",
    "PushdownError": "capi_sync.errors",
    "ResultsNotWritten": "capi_sync.errors",
    "SetupError": "capi_sync.errors",
    "SourceError": "capi_sync.errors",
    "StateError": "capi_sync.errors",
    "StateSetupError": "capi_sync.errors",
    "StopRequested": "capi_sync.errors",
    "TemplateProblem": "capi_sync.errors",
    "MatchQuality": "capi_sync.report",
    "RunReport": "capi_sync.report",
    "RunOptions": "capi_sync.runner",
    "run_pipeline": "capi_sync.runner",
    "RunStatus": "capi_sync.state",
    "StateStore": "capi_sync.state",
}

if TYPE_CHECKING:
    from capi_sync.config import PipelineConfig, ProjectConfig, load_config
    from capi_sync.errors import (
        BackfillRefused,
        CapiSyncError,
        ConfigError,
        EventNotSerializable,
        InvalidValue,
        MetaAuthError,
        MetaError,
        MetaFatalError,
        MetaPermissionError,
        MetaRequestError,
        MetaRetryableError,
        MetaTooLargeError,
        MetricsNotExported,
        MissingDependency,
        NativeUnsupported,
        PipelineLocked,
        PushdownError,
        ResultsNotWritten,
        SetupError,
        SourceError,
        StateError,
        StateSetupError,
        StopRequested,
        TemplateProblem,
    )
    from capi_sync.report import MatchQuality, RunReport
    from capi_sync.runner import RunOptions, run_pipeline
    from capi_sync.state import RunStatus, StateStore


def engine() -> str:
    """What maps rows in this installation: the native core (with its build), or pure Python.

    Both write the same events; the bench and `capi-sync --version` say which ran, since speed differs.
    """
    from capi_sync import native  # noqa: PLC0415 (imports the mapping: only when asked)

    return native.engine()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'capi_sync' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BackfillRefused",
    "CapiSyncError",
    "ConfigError",
    "EventNotSerializable",
    "InvalidValue",
    "MatchQuality",
    "MetaAuthError",
    "MetaError",
    "MetaFatalError",
    "MetaPermissionError",
    "MetaRequestError",
    "MetaRetryableError",
    "MetaTooLargeError",
    "MetricsNotExported",
    "MissingDependency",
    "NativeUnsupported",
    "PipelineConfig",
    "PipelineLocked",
    "ProjectConfig",
    "PushdownError",
    "ResultsNotWritten",
    "RunOptions",
    "RunReport",
    "RunStatus",
    "SetupError",
    "SourceError",
    "StateError",
    "StateSetupError",
    "StateStore",
    "StopRequested",
    "TemplateProblem",
    "__version__",
    "engine",
    "load_config",
    "run_pipeline",
]
