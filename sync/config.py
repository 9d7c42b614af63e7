"""Pipelines YAML -> frozen, validated config objects; every problem reported at once, before any row."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from capi_sync import secrets
from capi_sync.connectors.base import TEMPLATE_VARIABLES, is_template, render_query
from capi_sync.connectors.retry import RetryPolicy
from capi_sync.envsubst import substitute
from capi_sync.errors import ConfigError, TemplateProblem
from capi_sync.mappings.fields import ACTION_SOURCES
from capi_sync.mappings.reference import reference
from capi_sync.mappings.spec import MappingSpec
from capi_sync.schedules import make_trigger
from capi_sync.windows import CursorClock, parse_duration, parse_start

if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_FILES = ("pipelines.yaml", "pipelines.example.yaml")
DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v26.0"
# Meta documents no byte limit; 4 MiB holds 1,000 ordinary events (about 1.5 KB each) twice over.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_BATCH_SIZE = 1000  # Meta's limit per request

_FROZEN = ConfigDict(frozen=True, extra="forbid")
ActionSource = Literal[
    "email", "website", "app", "phone_call", "chat", "physical_store",
    "system_generated", "business_messaging", "other",
]  # fmt: skip
assert set(ActionSource.__args__) == set(ACTION_SOURCES)  # type: ignore[attr-defined]


class DuckDBWarehouse(BaseModel):
    """The embedded default. `setup` runs once per connection (load extensions, attach, views)."""

    model_config = _FROZEN
    type: Literal["duckdb"]
    path: str = ":memory:"
    setup: tuple[str, ...] = ()
    # DuckDB's buffer for the sorted read; beyond it, it spills to disk. Unset, it starts at 96MB
    # and doubles (up to 2GB) when a sort needs more; set, it is a hard limit.
    memory_limit: str | None = None
    # The same, for pipelines with `pushdown: true`, whose digests stream on every core after the
    # sort (unset: 96MB, doubling likewise).
    pushdown_memory_limit: str | None = None
    threads: int = Field(1, ge=1)
    base_dir: Path = Path()  # relative file paths in `path` and queries resolve against the YAML's folder

    def database(self) -> str:
        if self.path == ":memory:" or Path(self.path).is_absolute():
            return self.path
        return str(self.base_dir / self.path)


class SQLAlchemyWarehouse(BaseModel):
    """Any database SQLAlchemy has a dialect for; the URL may carry a password, so it is secret."""

    model_config = _FROZEN
    type: Literal["sqlalchemy"]
    url: SecretStr
    connect_args: dict[str, Any] = {}


class SnowflakeWarehouse(BaseModel):
    """snowflake-connector-python; password or key-pair auth. `host`/`port`/`protocol` reach a proxy or
    a local stand-in (the tests use fakesnow's server)."""

    model_config = _FROZEN
    type: Literal["snowflake"]
    account: str
    user: str
    password: SecretStr | None = None
    private_key_file: Path | None = None
    private_key_file_pwd: SecretStr | None = None
    authenticator: str | None = None  # e.g. externalbrowser, oauth
    warehouse: str | None = None
    database: str | None = None
    schema_: str | None = Field(None, alias="schema")
    role: str | None = None
    host: str | None = None
    port: int | None = None
    protocol: Literal["https", "http"] | None = None
    connect_args: dict[str, Any] = {}

    @model_validator(mode="after")
    def _credentials(self) -> SnowflakeWarehouse:
        if self.password is None and self.private_key_file is None and self.authenticator is None:
            raise ValueError("set password, private_key_file or authenticator")
        return self


class BigQueryWarehouse(BaseModel):
    """google-cloud-bigquery; a service-account file, or application default credentials."""

    model_config = _FROZEN
    type: Literal["bigquery"]
    project: str
    dataset: str | None = None  # unqualified table names in queries resolve here
    location: str | None = None
    credentials_file: Path | None = None
    anonymous: bool = False  # no credentials at all: only for a local endpoint
    api_endpoint: str | None = None  # another REST endpoint (a proxy, or the tests' fake)


Warehouse = Annotated[
    DuckDBWarehouse | SQLAlchemyWarehouse | SnowflakeWarehouse | BigQueryWarehouse,
    Field(discriminator="type"),
]
AnyWarehouse = DuckDBWarehouse | SQLAlchemyWarehouse | SnowflakeWarehouse | BigQueryWarehouse
WAREHOUSE_TYPES = ("duckdb", "sqlalchemy", "snowflake", "bigquery")


def parse_size(text: str) -> int:
    """`4MB`, `512 KB`, `1048576`: a byte count (units of 1,024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?i?b?)\s*", text.lower())
    if match is None:
        msg = f"a size looks like 4MB, 512KB or 1048576, got {text!r}"
        raise ValueError(msg)
    unit = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2][:1] if match[2] != "b" else ""]
    return int(float(match[1]) * unit)


class MetaDestination(BaseModel):
    """A pixel (or dataset) and the token allowed to send to it."""

    model_config = _FROZEN
    pixel_id: str
    access_token: SecretStr = SecretStr("")
    api_version: str = DEFAULT_API_VERSION
    graph_url: str = DEFAULT_GRAPH_URL
    app_secret: SecretStr | None = None
    timeout: float = Field(30.0, gt=0)
    retry_base_seconds: float = Field(1.0, gt=0)  # first backoff pause; doubles, with jitter
    retry_max_seconds: float = Field(300.0, ge=0)  # total waiting allowed for one batch
    # Requests are split to stay under this; one event bigger than it is rejected (event_too_large).
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=64 * 1024)

    @field_validator("max_request_bytes", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(base_delay=self.retry_base_seconds, max_elapsed=self.retry_max_seconds)

    @field_validator("pixel_id")
    @classmethod
    def _digits(cls, value: str) -> str:
        value = value.strip()
        if value and not value.isdigit():
            msg = f"pixel_id must be the numeric pixel or dataset id, got {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"v\d+\.\d+", value):
            msg = f"api_version looks like 'v26.0', got {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("graph_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            msg = f"graph_url must be an http(s) URL, got {value!r}"
            raise ValueError(msg)
        return value.rstrip("/")


class SyncSettings(BaseModel):
    """Castled's three sync settings, plus the knobs a warehouse sync needs."""

    model_config = _FROZEN
    action_source: ActionSource | None = None
    test_event_code: str | None = None
    hashing_required: bool = True
    default_phone_region: str | None = None
    # How a birth date whose day and month could swap (01/02/1990) reads: month first, day first,
    # or dropped (ymd). Unset: month first, but day first when written with dots (01.02.1990).
    date_order: Literal["mdy", "dmy", "ymd"] | None = None
    strong_match_key_required: bool = False
    hash_external_id: bool = True  # false: send external_id as is (it must match the pixel's)
    batch_size: int = Field(MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    # No longer used (pending rows are retried until delivered or too old); accepted so older files load.
    transient_retry_cap: int = Field(3, ge=0)
    max_in_flight: int = Field(4, ge=1, le=32)  # concurrent requests; the cursor still commits in order
    standard_event_names: bool = False  # purchase, begin_checkout, "product added" -> Meta's names
    event_names: dict[str, str] = {}  # your own renames, e.g. {checkout_done: Purchase}
    consent_column: str | None = None  # a column or path holding the user's consented categories
    consent_category: str | None = None  # rows whose consent lacks it are skipped, counted, never sent
    fbc_from_fbclid: bool = True  # no fbc but the URL has ?fbclid=: fb.1.<event ms>.<fbclid>
    url_redaction: Literal["none", "query", "path"] = "none"  # strip ?query#fragment, or the path too
    missing_standard_fields: Literal["reject", "warn"] = "reject"  # Purchase without value/currency
    fetch_quality: bool = False  # after each successful run, Meta's Event Match Quality into its results

    @model_validator(mode="after")
    def _consent_pair(self) -> SyncSettings:
        if (self.consent_column is None) != (self.consent_category is None):
            raise ValueError("consent_column and consent_category go together")
        return self

    @field_validator("default_phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower() not in reference().country_codes:
            msg = f"default_phone_region must be an ISO 3166-1 alpha-2 code like 'US', got {value!r}"
            raise ValueError(msg)
        return value.lower()


class PresetOptions(BaseModel):
    """A preset's settings: Commanders Act's destination settings, or the CRM's name."""

    model_config = _FROZEN
    app_tracking: bool = False  # "Enable App tracking": action_source app, app_data, madid
    send_all_properties: bool = False  # string/number/boolean root properties as custom data
    content_type: Literal["product", "product_group"] | None = None
    lead_event_source: str | None = None  # crm_leads: the CRM's name (HubSpot, Salesforce, ...)


AlertTrigger = Literal["failed", "rejected", "stranded", "coverage_drop", "quality_drop", "stale"]
ALERT_TRIGGERS: tuple[AlertTrigger, ...] = (
    "failed",
    "rejected",
    "stranded",
    "coverage_drop",
    "quality_drop",
    "stale",
)


class AlertConfig(BaseModel):
    """A webhook told when runs go wrong (`alerts:` at the top of the file)."""

    model_config = _FROZEN
    webhook: SecretStr  # Slack's incoming-webhook URLs carry their token in the path
    format: Literal["json", "slack"] = "json"
    on: tuple[AlertTrigger, ...] = ALERT_TRIGGERS
    rejected_share: float = Field(0.05, ge=0, le=1)  # `5%` or 0.05: above it, `rejected` fires
    coverage_drop: float = Field(10.0, gt=0, le=100)  # points below the median of 10 good runs
    quality_drop: float = Field(1.0, gt=0, le=10)  # Meta's score (of 10) below its median, `fetch_quality`
    stale_after: dt.timedelta = dt.timedelta(hours=24)  # under `schedule`: no success this long
    timeout: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        """YAML 1.1 reads a bare `on:` key as the boolean true (as in GitHub Actions files)."""
        if isinstance(data, dict) and True in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("rejected_share", mode="before")
    @classmethod
    def _share(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1]) / 100
            except ValueError:
                raise ValueError(f"not a share: {value!r} (use e.g. 5% or 0.05)") from None
        return value

    @field_validator("stale_after", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in {"http", "https"}:
            raise ValueError("webhook must be an http(s) URL")
        return value


class PipelineConfig(BaseModel):
    """One query, one mapping, one destination."""

    model_config = _FROZEN
    name: str = Field(max_length=150)  # the state store keeps it (and backfill names) in 200 characters
    warehouse: str
    destination: str
    query: str
    primary_key: tuple[str, ...]
    cursor: str | None = None
    settle_delay: dt.timedelta = dt.timedelta(minutes=5)  # rows newer than now - this wait a run
    lookback: dt.timedelta = dt.timedelta(0)  # re-read this far behind the cursor for late rows
    start: str | None = None  # first run only: "7 days ago", a date or a timestamp
    backfill_column: str | None = None  # default: the column mapped to event_time, else the cursor
    schedule: str | None = None
    timezone: str = "UTC"  # naive timestamps (cursor, event_time, schedule) are in this zone
    chunk_size: int = Field(5_000, ge=1)  # 10,000 ran no faster and held 20 MB more
    # Deprecated and ignored: worker processes are gone; the native core maps on every core from
    # the run's one process. Still accepted so that existing pipelines files load.
    workers: Literal["auto"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    # Normalize and hash customer information in the warehouse's SQL: plain PII never leaves it.
    pushdown: bool = False
    settings: SyncSettings = SyncSettings()
    # default mappings: a table of collected events, or a CRM's lead stages (Conversion Leads)
    preset: Literal["commanders_act", "crm_leads"] | None = None
    preset_options: PresetOptions = PresetOptions()
    mapping: MappingSpec = MappingSpec(preset="commanders_act")  # only valid with a preset; checked below
    alerts: tuple[str, ...] | None = None  # names from the top-level `alerts:`; None: every one

    @model_validator(mode="before")
    @classmethod
    def _mapping_knows_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            mapping = data.get("mapping")
            data["mapping"] = {**(mapping if isinstance(mapping, dict) else {}), "preset": data["preset"]}
        return data

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("primary_key")
    @classmethod
    def _key_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("primary_key needs at least one column")
        return value

    @field_validator("settle_delay", "lookback", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("settle_delay", "lookback")
    @classmethod
    def _not_negative(cls, value: dt.timedelta) -> dt.timedelta:
        if value < dt.timedelta(0):
            raise ValueError("must not be negative")
        return value

    @field_validator("start")
    @classmethod
    def _start_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_start(value, CursorClock(None, ZoneInfo("UTC")), dt.datetime.now(dt.UTC))
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, value: str | None) -> str | None:
        if value is not None:
            make_trigger(value, "UTC")
        return value

    @field_validator("query")
    @classmethod
    def _strip_query(cls, value: str) -> str:
        value = value.strip().rstrip(";").strip()
        if not value:
            raise ValueError("query is empty")
        if is_template(value):  # syntax errors and unknown variables surface before any connection
            try:
                render_query(value, None, lambda _i: "?", [])
            except TemplateProblem as exc:
                raise ValueError(f"{exc} (variables: {', '.join(TEMPLATE_VARIABLES)})") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            msg = f"unknown timezone {value!r}; use an IANA name like 'Europe/Paris'"
            raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _action_source_known(self) -> PipelineConfig:
        if self.preset is None and self.mapping.preset is not None:
            raise ValueError("mapping is required (or set preset: commanders_act)")
        if self.preset == "crm_leads":
            self._check_crm_leads()
        has_source = "action_source" in self.mapping.server_event or self.preset is not None
        if self.settings.action_source is None and not has_source:
            msg = "action_source is required: set settings.action_source or map server_event.action_source"
            raise ValueError(msg)
        if self.lookback and self.cursor is None:
            raise ValueError("lookback needs a cursor column")
        return self

    def _check_crm_leads(self) -> None:
        """What Meta's Conversion Leads need that the preset cannot fill in."""
        problems = [
            f"preset crm_leads needs {name}"
            for name, mapped in (
                (
                    "mapping.customer_info.lead_id (Meta's 15 or 16-digit lead id)",
                    "lead_id" in self.mapping.customer_info,
                ),
                (
                    "mapping.server_event.event_name (the lead's stage)",
                    "event_name" in self.mapping.server_event,
                ),
                (
                    "mapping.server_event.event_time (when the stage changed)",
                    "event_time" in self.mapping.server_event,
                ),
                (
                    "preset_options.lead_event_source (the CRM's name)",
                    self.preset_options.lead_event_source or "lead_event_source" in self.mapping.custom_data,
                ),
            )
            if not mapped
        ]
        if self.settings.action_source not in (None, "system_generated"):
            problems.append("preset crm_leads sends action_source system_generated, as Meta requires")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ProjectConfig(BaseModel):
    """The whole pipelines file."""

    model_config = _FROZEN
    warehouses: dict[str, Warehouse]
    destinations: dict[str, MetaDestination]
    pipelines: dict[str, PipelineConfig]
    alerts: dict[str, AlertConfig] = {}
    path: Path | None = None

    @model_validator(mode="after")
    def _references(self) -> ProjectConfig:
        errors = []
        for name, pipeline in self.pipelines.items():
            if pipeline.warehouse not in self.warehouses:
                errors.append(_missing_ref(name, "warehouse", pipeline.warehouse, self.warehouses))
            if pipeline.destination not in self.destinations:
                errors.append(_missing_ref(name, "destination", pipeline.destination, self.destinations))
            errors += [
                _missing_ref(name, "alert", a, self.alerts)
                for a in pipeline.alerts or ()
                if a not in self.alerts
            ]
        errors += self._secrets_in_pipelines()
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def _secrets_in_pipelines(self) -> list[str]:
        """A secret's value in a query, constant or template would be sent to Meta in every event,
        or printed by `render`: that is a configuration error, never a run."""
        found = [s for s in self.secrets() if len(s) >= secrets.MIN_SUBSTRING]
        if not found:
            return []
        errors = []
        for name, pipeline in self.pipelines.items():
            dump = pipeline.model_dump(mode="json", exclude={"name"})
            for where, text in _strings(dump, ""):
                if any(secret in text for secret in found):
                    errors.append(
                        f"pipeline '{name}': {where} holds the value of a secret (an access token,"
                        " app secret or password): it would reach Meta or the console; remove it"
                    )
        return errors

    def secrets(self) -> list[str]:
        """Every secret value in the file (tokens, passwords, URL passwords), to scrub from messages."""
        found: list[str] = []
        for model in (*self.warehouses.values(), *self.destinations.values(), *self.alerts.values()):
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, SecretStr) and (secret := value.get_secret_value()):
                    found.append(secret)
                    if "://" in secret and (password := urlsplit(secret).password):
                        found.append(password)
        return sorted(set(found), key=len, reverse=True)

    def pipeline(self, name: str) -> PipelineConfig:
        try:
            return self.pipelines[name]
        except KeyError:
            known = ", ".join(sorted(self.pipelines)) or "none"
            raise ConfigError(
                [f"no pipeline named '{name}' (pipelines: {known})"], source=str(self.path)
            ) from None

    def warehouse_of(self, pipeline: PipelineConfig) -> AnyWarehouse:
        return self.warehouses[pipeline.warehouse]

    def destination_of(self, pipeline: PipelineConfig) -> MetaDestination:
        return self.destinations[pipeline.destination]

    def alerts_of(self, pipeline: PipelineConfig) -> dict[str, AlertConfig]:
        """The alerts a pipeline's runs go to: those it names, or every alert in the file."""
        names = self.alerts if pipeline.alerts is None else pipeline.alerts
        return {name: self.alerts[name] for name in names}


def _strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a dumped config, with where it sits (`mapping.custom_data.note.value`)."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{where}[{index}]")


def _missing_ref(pipeline: str, kind: str, name: str, known: dict[str, Any]) -> str:
    listed = ", ".join(sorted(known)) or "none defined"
    return f"pipeline '{pipeline}': {kind} '{name}' is not defined ({kind}s: {listed})"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; a config typo deserves an error."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """Refuse a key written twice; keys merged in with `<<: *anchor` may be overridden."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


MAX_YAML_VALUES = 100_000  # after aliases are expanded; a real pipelines file has a few hundred


def _load_yaml(text: str) -> Any:
    """Safe YAML, refusing a document whose aliases expand past `MAX_YAML_VALUES` values.

    Aliases share one node, so a "billion laughs" file composes in a blink, then hangs whatever
    walks the result (substitution, validation) for minutes: its expanded size is counted first.
    """
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node, {})
        if expanded > MAX_YAML_VALUES:
            msg = (
                f"the file expands to more than {MAX_YAML_VALUES:,} values through its aliases"
                " (`*name`); is it an alias bomb?"
            )
            raise yaml.YAMLError(msg)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is copied out (memoized per node)."""
    if (known := sizes.get(id(node))) is not None:
        return known
    sizes[id(node)] = MAX_YAML_VALUES + 1  # a node inside itself (a recursive alias) is refused
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, sizes)
            if total > MAX_YAML_VALUES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded_size(key, sizes) + _expanded_size(value, sizes)
            if total > MAX_YAML_VALUES:
                break
    sizes[id(node)] = total
    return total


def find_config(path: str | Path | None) -> Path:
    """The given file, else `pipelines.yaml`, else `pipelines.example.yaml` in the current folder."""
    if path is not None:
        candidate = Path(path)
        if not candidate.is_file():
            raise ConfigError([f"pipelines file not found: {candidate}"])
        return candidate
    for name in DEFAULT_FILES:
        if Path(name).is_file():
            return Path(name)
    raise ConfigError([f"no pipelines file: pass -f FILE or create {DEFAULT_FILES[0]}"])


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> ProjectConfig:
    """Read, substitute and validate a pipelines file; raise one `ConfigError` listing every problem."""
    file = find_config(path)
    try:
        raw = _load_yaml(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(file)) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], source=str(file)) from None
    except RecursionError:
        raise ConfigError(["values are nested too deeply to read"], source=str(file)) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            ["the file must be a mapping with warehouses, destinations and pipelines"],
            source=str(file),
        )
    document, errors = substitute(raw, env)
    if errors:
        raise ConfigError(_with_pipeline_names(errors), source=str(file))
    return parse_config(document, base_dir=file.resolve().parent, path=file)


def parse_config(document: dict[str, Any], *, base_dir: Path, path: Path | None = None) -> ProjectConfig:
    for name, pipeline in (document.get("pipelines") or {}).items():
        if isinstance(pipeline, dict):
            pipeline.setdefault("name", name)
    for warehouse in (document.get("warehouses") or {}).values():
        if isinstance(warehouse, dict) and warehouse.get("type") == "duckdb":
            warehouse.setdefault("base_dir", base_dir)
    try:
        project = ProjectConfig.model_validate({**document, "path": path})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source=str(path) if path else None) from None
    secrets.register(project.secrets())
    return project


def _with_pipeline_names(errors: list[str]) -> list[str]:
    named = []
    for error in errors:
        match = re.match(r"pipelines\.([^.\[:]+)\.(.*)", error)
        named.append(f"pipeline '{match[1]}': {match[2]}" if match else error)
    return named


def _known_fields(loc: list[str]) -> list[str]:
    """The keys the file may hold at `loc` (a path of keys from the top), for "did you mean"."""
    node: Any = ProjectConfig
    for part in loc:
        node = _step(node, part)
        if node is None:
            return []
    model = _model_in(node, None)
    return [field.alias or name for name, field in model.model_fields.items()] if model else []


def _step(node: Any, part: str) -> Any:
    """One key down from a type: a model's field, a dict's value, a tagged union's member."""
    if get_origin(node) is Annotated:
        node = get_args(node)[0]
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    if get_origin(node) is dict:
        return get_args(node)[1]
    return _model_in(node, part)


def _model_in(node: Any, tag: str | None) -> type[BaseModel] | None:
    """The model a type stands for: itself, the one member of an optional, or the union member
    whose `type` is `tag` (a warehouse)."""
    if get_origin(node) is Annotated:
        node = get_args(node)[0]
    if isinstance(node, type) and issubclass(node, BaseModel):
        return node
    members = [arg for arg in get_args(node) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    for member in members:
        kind = member.model_fields.get("type")
        if tag is not None and kind is not None and get_args(kind.annotation) == (tag,):
            return member
    return members[0] if len(members) == 1 else None


def _format_errors(exc: ValidationError) -> list[str]:
    messages = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _known_fields(loc[:-1]), n=1)
            error["msg"] = "unknown field" + (f"; did you mean '{close[0]}'?" if close else "")
        # Discriminated unions add the tag to the path (warehouses.shop.duckdb.path): drop it.
        if (
            len(loc) > 2
            and loc[0] == "warehouses"
            and loc[2] in ("duckdb", "sqlalchemy", "snowflake", "bigquery")
        ):
            del loc[2]
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(loc)
        if loc[:1] == ["pipelines"] and len(loc) > 1:
            where = f"pipeline '{loc[1]}': " + ".".join(loc[2:])
        messages.append(f"{where}: {message}" if where else message)
    return messages
