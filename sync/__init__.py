"""capi-sync: warehouse rows to Meta Conversions API events, normalized, hashed and deduplicated.

Usage from Python, the same path the CLI takes:

    from capi_sync import RunOptions, StateStore, load_config, run_pipeline

    project = load_config("pipelines.yaml")
    with StateStore("sqlite:///state.db") as store:
        report = run_pipeline(project, "purchases", store, RunOptions(dry_run=True))
"""

__version__ = "0.1.0"

from capi_sync.config import PipelineConfig, ProjectConfig, load_config
from capi_sync.errors import (
    CapiSyncError,
    ConfigError,
    MetaError,
    MissingDependency,
    PipelineLocked,
    SourceError,
    StateError,
)
from capi_sync.report import MatchQuality, RunReport
from capi_sync.runner import RunOptions, run_pipeline
from capi_sync.state import RunStatus, StateStore

__all__ = [
    "CapiSyncError",
    "ConfigError",
    "MatchQuality",
    "MetaError",
    "MissingDependency",
    "PipelineConfig",
    "PipelineLocked",
    "ProjectConfig",
    "RunOptions",
    "RunReport",
    "RunStatus",
    "SourceError",
    "StateError",
    "StateStore",
    "__version__",
    "load_config",
    "run_pipeline",
]
