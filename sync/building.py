"""What a pipeline's config builds: its compiled mapping and its Meta client."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from capi_sync import __version__
from capi_sync.connectors.meta import MetaClient
from capi_sync.mappings import normalize, pushdown
from capi_sync.mappings.events import build_renames
from capi_sync.mappings.mapper import EventMapper, MapperOptions, compile_mapping
from capi_sync.mappings.presets import derived_values, preset_fields

if TYPE_CHECKING:
    from collections.abc import Callable

    from capi_sync.config import PipelineConfig, ProjectConfig
    from capi_sync.mappings.spec import MappingSpec


def mapper_for(
    pipeline: PipelineConfig, columns: list[str], clock: Callable[[], float] = time.time
) -> EventMapper:
    """The pipeline's mapping compiled against the query's columns (raises ConfigError)."""
    settings = pipeline.settings
    options = MapperOptions(
        pipeline=pipeline.name,
        primary_key=pipeline.primary_key,
        action_source=settings.action_source,
        hashing_required=settings.hashing_required,
        default_phone_region=settings.default_phone_region,
        date_order=settings.date_order,
        strong_match_key_required=settings.strong_match_key_required,
        hash_external_id=settings.hash_external_id,
        timezone=pipeline.timezone,
        event_renames=build_renames(
            settings.event_names,
            standard=settings.standard_event_names or pipeline.preset == "commanders_act",
        ),
        consent_column=settings.consent_column,
        consent_category=settings.consent_category,
        fbc_from_fbclid=settings.fbc_from_fbclid,
        url_redaction=settings.url_redaction,
        warn_missing_standard_fields=settings.missing_standard_fields == "warn",
    )
    preset_options = pipeline.preset_options.model_dump()
    mapping = effective_mapping(pipeline)
    if pipeline.pushdown:
        options = replace(
            options,
            pushed_keys=frozenset(pushdown.pushed_keys(mapping, hash_external_id=settings.hash_external_id)),
        )
    return compile_mapping(
        mapping,
        options,
        columns,
        clock,
        derived=derived_values(pipeline.preset, preset_options),
        preset=preset_fields(pipeline.preset, preset_options),
    )


def effective_mapping(pipeline: PipelineConfig) -> MappingSpec:
    """The mapping as rows are read: with pushdown, each hashed key reads the digest its
    pushed-down column holds."""
    if not pipeline.pushdown:
        return pipeline.mapping
    return pushdown.pushed_spec(pipeline.mapping, hash_external_id=pipeline.settings.hash_external_id)


# The platform name Meta's agent filter knows capi-sync's events by: Meta documents `partner_agent`
# as `[partner_name]_[majorVersion]_[minorVersion]` and filters the Dataset Quality API with the
# lowercase partner name alone (`agent_name`), so the name itself carries no `_`.
PARTNER_NAME = "capisync"


def partner_agent(version: str = __version__) -> str:
    """`capisync_<major>_<minor>`: the form Meta's Dataset Quality API filters on (`agent_name`)."""
    numbers = [int(part) if part.isdigit() else 0 for part in version.split(".")[:2]]
    major, minor = (*numbers, 0, 0)[:2]
    return f"{PARTNER_NAME}_{major}_{minor}"


def make_client(project: ProjectConfig, pipeline: PipelineConfig) -> MetaClient:
    """The pipeline's destination as a client; the token stays inside it."""
    destination = project.destination_of(pipeline)
    return MetaClient(
        destination.pixel_id,
        destination.access_token.get_secret_value(),
        api_version=destination.api_version,
        graph_url=destination.graph_url,
        timeout=destination.timeout,
        max_request_bytes=destination.max_request_bytes,
        test_event_code=pipeline.settings.test_event_code,
        partner_agent=partner_agent(),
        app_secret=destination.app_secret.get_secret_value() if destination.app_secret else None,
    )


def quality_notes(pipeline: PipelineConfig) -> list[str]:
    """What the match-quality table should say about the settings that decide how values read."""
    if "db" not in pipeline.mapping.customer_info and pipeline.preset is None:  # presets map db
        return []
    return [normalize.date_order_note(pipeline.settings.date_order)]
