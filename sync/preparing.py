"""Before any row is read: describe the query, compile the mapping (and the native core's plan,
and the pushdown SQL), and check that the pipeline can send. Every configuration error surfaces
here, so a run that starts has nothing left to refuse.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capi_sync import native
from capi_sync.building import effective_mapping, mapper_for
from capi_sync.connectors import Source, Window, open_source
from capi_sync.connectors.arrow import ArrowSource, ChunkConverter, Converted
from capi_sync.errors import (
    CapiSyncError,
    ConfigError,
    NativeUnsupported,
    PushdownError,
    SetupError,
    SourceError,
)
from capi_sync.mappings import pushdown
from capi_sync.mappings.sources import resolve_column
from capi_sync.mappings.spec import GROUPS

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from capi_sync.config import PipelineConfig, ProjectConfig
    from capi_sync.connectors.base import Chunk, Column, Projection
    from capi_sync.mappings.mapper import EventMapper
    from capi_sync.native import NativePlan


@dataclass(frozen=True)
class Prepared:
    """What describing the query and compiling the mapping yield, before any row is read."""

    mapper: EventMapper
    columns: list[str]
    kinds: dict[str, str | None]
    # What is read: the pipeline's query, or its pushdown wrapping, whose digests may be a
    # projection over the sorted window. Read through `stream` and `sql`, which never drop it.
    query: str
    project: Projection | None = None
    native: NativePlan | None = None  # set when the native core maps this run's Arrow batches
    engine_note: str | None = None  # why the reference maps every row, where the core could run

    def index(self, column: str | None) -> int | None:
        return column_index(column, self.columns)

    def kind(self, column: str | None) -> str | None:
        index = self.index(column)
        return self.kinds[self.columns[index]] if index is not None else None

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(self.columns[i] for i in self.mapper.key_indexes)

    def stream(self, source: Source, window: Window, chunk_size: int) -> Iterator[Chunk]:
        """Rows as read, in the query's column order."""
        return source.stream(self.query, window, chunk_size, self.project)

    def batches(
        self, source: Source, window: Window, chunk_size: int, cursor: int | None
    ) -> Iterator[Converted]:
        """Rows as Arrow record batches, for the native core: as the source reads them where it
        reads Arrow, else each chunk of rows converted where Arrow keeps every value exactly."""
        if isinstance(source, ArrowSource):
            for batch in source.arrow_batches(self.query, window, chunk_size, self.project):
                yield Converted(batch, ())
            return
        assert self.native is not None
        convert = ChunkConverter(self.columns, {*self.native.used, *([] if cursor is None else [cursor])})
        for chunk in self.stream(source, window, chunk_size):
            yield convert(chunk)

    def sql(self, source: Source, window: Window) -> tuple[str, list[Any]]:
        return source.sql(self.query, window, self.project)


@contextmanager
def setup_stage(pipeline: PipelineConfig) -> Iterator[None]:
    """Warehouse errors while opening the source and describing the query are setup errors (exit 2)."""
    try:
        yield
    except SetupError:
        raise
    except SourceError as exc:
        raise SetupError(f"pipeline '{pipeline.name}': {exc}") from exc


def prepare(pipeline: PipelineConfig, source: Source) -> Prepared:
    """Describe the query and compile the mapping: every config error surfaces before a row is read."""
    described: list[Column] = source.describe(pipeline.query)
    query, project = pipeline.query, None
    if pipeline.pushdown:
        source.prepare_for_pushdown()
        pushed = _pushdown_query(pipeline, source, described)
        query, project = pushed.query, pushed.project
        described = source.describe(pushed.whole)  # the generated SQL runs once here, before a row is read
    columns = [column.name for column in described]
    mapper = mapper_for(pipeline, columns)
    for setting, name in (("cursor", pipeline.cursor), ("backfill_column", pipeline.backfill_column)):
        if name is not None and column_index(name, columns) is None:
            raise ConfigError(
                [
                    f"pipeline '{pipeline.name}': {setting}: column '{name}' is not"
                    f" returned by the query (columns: {', '.join(columns)})"
                ]
            )
    kinds = {column.name: column.kind for column in described}
    plan, note = _native_plan(pipeline, source, query, columns, mapper)
    return Prepared(mapper, columns, kinds, query, project, native=plan, engine_note=note)


def _native_plan(
    pipeline: PipelineConfig, source: Source, query: str, columns: list[str], mapper: EventMapper
) -> tuple[NativePlan | None, str | None]:
    """The core's plan for this run, or why the reference maps every row instead."""
    if not native.available():
        return None, None
    try:
        plan = native.compile_plan(
            effective_mapping(pipeline), mapper.options, columns, mapper, preset=pipeline.preset
        )
    except NativeUnsupported as exc:
        return None, f"the native core does not map {exc} yet: rows were mapped in Python"
    # Other sources' rows become Arrow chunk by chunk, only in types the core reads (`record_batch`).
    unreadable = (
        native.readable(source.arrow_schema(query), plan) if isinstance(source, ArrowSource) else None
    )
    if unreadable is not None:
        return None, f"the native core does not read {unreadable} yet: rows were mapped in Python"
    return plan, None


def _pushdown_query(pipeline: PipelineConfig, source: Source, described: list[Column]) -> pushdown.Pushed:
    """The pipeline's query wrapped so that hashed customer information leaves only as digests."""
    settings = pipeline.settings
    others = {f"primary_key '{name}'": name for name in pipeline.primary_key}
    for setting in ("cursor", "backfill_column"):
        if (name := getattr(pipeline, setting)) is not None:
            others[setting] = name
    if settings.consent_column is not None:
        others["settings.consent_column"] = settings.consent_column
    pushed = set(pushdown.pushed_keys(pipeline.mapping, hash_external_id=settings.hash_external_id))
    for group in GROUPS:
        for key, source_spec in getattr(pipeline.mapping, group).items():
            if group == "customer_info" and key in pushed:
                continue
            for index, name in enumerate(pushdown.referenced_names(source_spec)):
                others[f"mapping.{group}.{key}" + (f" [{index}]" if index else "")] = name
    kinds = {column.name: column.kind for column in described}
    try:
        plan = pushdown.plan(
            pipeline.mapping,
            kinds,
            dialect=getattr(source, "dialect", None),
            hash_external_id=settings.hash_external_id,
            hashing_required=settings.hashing_required,
            preset=pipeline.preset,
            other_columns=others,
        )
    except PushdownError as exc:
        raise ConfigError([f"pipeline '{pipeline.name}': {reason}" for reason in exc.reasons]) from None
    return plan.wrap(
        pipeline.query,
        source.dialect,
        kinds,
        default_phone_region=settings.default_phone_region,
        date_order=settings.date_order,
    )


def setup_problems(project: ProjectConfig, pipelines: Iterable[PipelineConfig]) -> list[str]:
    """Open each pipeline's warehouse and check its query against its mapping; every problem found.

    `validate` reports them; `schedule` refuses to start on them, rather than failing every run.
    """
    problems: list[str] = []
    for pipeline in pipelines:
        try:
            with open_source(project.warehouse_of(pipeline)) as source:
                prepare(pipeline, source)
        except ConfigError as exc:
            problems += exc.errors
        except CapiSyncError as exc:
            problems.append(f"pipeline '{pipeline.name}': {exc}")
    return problems


def check_sendable(project: ProjectConfig, pipeline: PipelineConfig) -> None:
    destination = project.destination_of(pipeline)
    errors = []
    if not destination.pixel_id:
        errors.append(f"destination '{pipeline.destination}': pixel_id is empty")
    if not destination.access_token.get_secret_value():
        errors.append(f"destination '{pipeline.destination}': access_token is empty")
    if errors:
        raise ConfigError(
            [f"pipeline '{pipeline.name}': {e} (needed to send; --dry-run works without)" for e in errors]
        )


def column_index(name: str | None, columns: list[str]) -> int | None:
    return resolve_column(name, columns) if name else None
