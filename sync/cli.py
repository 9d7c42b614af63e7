"""The `capi-sync` command. Commands are thin: load config, call the library, print, exit.

Exit codes are assigned only in `main`: 0 ok, 1 the run failed, 2 usage or configuration error.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from enum import IntEnum
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from capi_sync import __version__, engine, jobs, logs, quality, results
from capi_sync.alerts import Alerter
from capi_sync.backfill import Day, backfill_column, backfill_prefix, plan_backfill
from capi_sync.building import PARTNER_NAME, make_client, quality_notes
from capi_sync.config import PipelineConfig, ProjectConfig, load_config
from capi_sync.connectors import Window, api_versions, open_source
from capi_sync.errors import (
    CapiSyncError,
    ConfigError,
    MetaAuthError,
    MetaError,
    MissingDependency,
    SetupError,
    StateSetupError,
)
from capi_sync.metrics import Metrics
from capi_sync.preparing import prepare, setup_problems, setup_stage
from capi_sync.report import MatchQuality
from capi_sync.runner import RunOptions, plan_incremental, run_pipeline
from capi_sync.secrets import scrub
from capi_sync.starter import WAREHOUSE_TYPES, env_example, pipelines_yaml
from capi_sync.state import StateStore, default_state_url
from capi_sync.windows import CursorClock, kind_of_value, parse_cursor_value

if TYPE_CHECKING:
    from capi_sync.report import RunReport

F = TypeVar("F", bound=Callable[..., Any])


class _Console(Console):
    """Prints values as they are (no markup: `[value ...]` in a reason or `capi-sync[snowflake]` in
    a hint is data) and scrubs every secret of the loaded config from whatever it writes."""

    def _render_buffer(self, buffer: Any) -> str:
        text = scrub(super()._render_buffer(buffer))
        if not logs.json_mode():
            return text
        # `--log-format json`: whatever a command prints becomes one JSON object per line
        level = "warning" if self.stderr else "info"
        return "".join(
            orjson.dumps(
                {
                    "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "level": "error" if line.startswith("error:") else level,
                    "event": "message",
                    "message": line.rstrip(),
                }
            ).decode()
            + "\n"
            for line in text.splitlines()
            if line.strip()
        )


def _console(*, stderr: bool) -> _Console:
    """Rich wraps and folds to the terminal's width; without a terminal (a log file, a pipe,
    cron) nothing is cut: lines and tables keep their full width."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else UNLIMITED_WIDTH
    return _Console(stderr=stderr, highlight=False, markup=False, width=width)


UNLIMITED_WIDTH = 100_000
out = _console(stderr=False)
err = _console(stderr=True)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text with some parts coloured: `styled(("ok", "green"), " connected")`."""
    return Text.assemble(*parts)


class ExitCode(IntEnum):
    OK = 0
    RUN_FAILED = 1
    USAGE = 2
    INTERRUPTED = 130  # the shell's convention for SIGINT


class RunFailed(click.ClickException):
    exit_code = ExitCode.RUN_FAILED

    def show(self, file: Any = None) -> None:  # the report was printed already
        pass


class SetupFailed(RunFailed):
    """A report (`check`) found configuration or setup problems: exit 2, as any command would."""

    exit_code = ExitCode.USAGE


_GLOBAL_OPTIONS = ("config_file", "state_url", "log_format", "log_level", "verbose", "quiet")


def project_options(fn: F) -> F:
    """`-f FILE`, `--state URL` and the logging options, declared once for the group and every
    command: they work before the subcommand (`capi-sync -f x.yaml run p`) and after it."""
    options = [
        click.option(
            "-f",
            "--file",
            "config_file",
            envvar="CAPI_SYNC_FILE",
            type=click.Path(dir_okay=False),
            help="Pipelines file [default: pipelines.yaml, then pipelines.example.yaml].",
        ),
        click.option(
            "--state",
            "state_url",
            envvar="CAPI_SYNC_STATE",
            help="State store URL [default: sqlite .capi-sync/state.db beside the file].",
        ),
        click.option(
            "--log-format",
            type=click.Choice(logs.LOG_FORMATS),
            envvar="CAPI_SYNC_LOG_FORMAT",
            help="text, or json: every line on stdout and stderr one JSON object [default: text].",
        ),
        click.option("--log-level", type=click.Choice(logs.LEVELS), help="[default: info]"),
        click.option("-v", "--verbose", is_flag=True, default=None, help="Log level debug."),
        click.option("-q", "--quiet", is_flag=True, default=None, help="Warnings and errors only."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _merged_options(given: dict[str, Any]) -> dict[str, Any]:
    """The command's own global options, else those given before the subcommand."""
    root = click.get_current_context().find_root()
    before = root.obj if isinstance(root.obj, dict) else {}
    return {
        name: given.get(name) if given.get(name) is not None else before.get(name) for name in _GLOBAL_OPTIONS
    }


def configure_output(options: dict[str, Any]) -> None:
    """Logging format and level for the whole process; `-q` also silences reports."""
    level = options.get("log_level") or (
        "debug" if options.get("verbose") else "warning" if options.get("quiet") else "info"
    )
    logs.configure(options.get("log_format") or "text", level)
    out.quiet = logs.settings.level > logging.INFO


class Context:
    def __init__(self, config_file: str | None, state_url: str | None) -> None:
        self.project: ProjectConfig = load_config(config_file)
        self._state_url = state_url

    @property
    def state_url(self) -> str:
        return self._state_url or default_state_url(self.project.path)

    def store(self) -> StateStore:
        return StateStore(self.state_url)


def with_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        options = _merged_options({name: kwargs.pop(name, None) for name in _GLOBAL_OPTIONS})
        configure_output(options)
        return fn(Context(options["config_file"], options["state_url"]), **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__,
    prog_name="capi-sync",
    message="%(prog)s %(version)s (" + engine() + ")",
)
@project_options
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Sync conversions from your warehouse to Meta's Conversions API."""
    ctx.obj = options
    configure_output(options)


def _workers(ctx: click.Context, param: click.Parameter, value: str | None) -> int | Literal["auto"] | None:
    """`auto` or a count, as the pipeline's `workers` setting takes them (then ignored)."""
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise click.BadParameter(f"{value!r} is neither auto nor a count from 1 to 64", ctx, param)
    return count


workers_option = click.option(
    "--workers",
    metavar="auto|N",
    callback=_workers,
    hidden=True,
    help="Deprecated and ignored: one process maps (on every core) and sends.",
)


def _share(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """`2%` or `0.02`: a share of rows, as `--fail-on-rejected` takes it."""
    if value is None:
        return None
    text = value.strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise click.BadParameter(f"{value!r} is not a share of rows like 2% or 0.02", ctx, param)
    return share


results_option = click.option(
    "--results",
    "results_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run's results as one JSON document here (schema: capi_sync/run_results.schema.json).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the results document on stdout instead of the summary."
)


def metrics_options(fn: F) -> F:
    """`--metrics-textfile` and `--pushgateway`: the runs' metrics, once the command is done."""
    fn = click.option(
        "--pushgateway",
        metavar="URL",
        envvar="CAPI_SYNC_PUSHGATEWAY",
        help="Push the runs' metrics to this Prometheus Pushgateway (job capi_sync).",
    )(fn)
    return click.option(
        "--metrics-textfile",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the runs' metrics here for node_exporter's textfile collector (*.prom).",
    )(fn)


fail_on_rejected_option = click.option(
    "--fail-on-rejected",
    metavar="SHARE",
    callback=_share,
    help="Exit 1 when more than this share of the rows read was rejected (2% or 0.02).",
)


@cli.command()
@click.argument("pipelines", nargs=-1)
@project_options
@click.option("--all", "run_all", is_flag=True, help="Run every pipeline in the file, one after another.")
@click.option(
    "--dry-run", is_flag=True, help="Build the exact requests but send nothing; state is untouched."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --dry-run: write each event as one JSON line to this file.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many rows.")
@results_option
@json_option
@fail_on_rejected_option
@metrics_options
@workers_option
@with_context
def run(
    ctx: Context,
    pipelines: tuple[str, ...],
    *,
    run_all: bool,
    dry_run: bool,
    output: Path | None,
    limit: int | None,
    results_path: Path | None,
    as_json: bool,
    fail_on_rejected: float | None,
    metrics_textfile: Path | None,
    pushgateway: str | None,
    workers: int | Literal["auto"] | None,
) -> None:
    """Run PIPELINES incrementally (or --all): send the rows past each one's cursor."""
    names = _chosen(ctx.project, pipelines, run_all)
    if output is not None and not dry_run:
        raise click.UsageError("--output goes with --dry-run")
    if output is not None and len(names) > 1:
        raise click.UsageError("--output takes one pipeline")
    reports = []
    with ctx.store() as store:
        for name in names:
            with _progress(name, total=limit) as on_progress:
                report = jobs.sync(
                    ctx.project,
                    name,
                    store,
                    options=RunOptions(dry_run=dry_run, output=output, limit=limit, workers=workers),
                    progress=on_progress,
                )
            reports.append(report)
            print_report(report, output, as_json=as_json)
    _export_metrics(ctx.project, reports, metrics_textfile, pushgateway)
    _finish(reports, results_path, fail_on_rejected, "run failed")


def _chosen(project: ProjectConfig, pipelines: tuple[str, ...], run_all: bool) -> list[str]:
    """The pipelines a command runs, all checked to exist before the first one starts."""
    if run_all and pipelines:
        raise click.UsageError("name pipelines or give --all, not both")
    if not run_all and not pipelines:
        raise click.UsageError("name a pipeline, or give --all")
    names = list(project.pipelines) if run_all else list(dict.fromkeys(pipelines))
    for name in names:
        project.pipeline(name)  # an unknown name is a config error (exit 2) before any row is read
    return names


def _export_metrics(
    project: ProjectConfig, reports: list[RunReport], textfile: Path | None, gateway: str | None
) -> None:
    if textfile is None and gateway is None:
        return
    metrics = Metrics()
    for report in reports:
        metrics.observe(report, project.pipeline(report.pipeline).zone)
    if textfile is not None:
        metrics.write_textfile(textfile)
    if gateway is not None:
        metrics.push(gateway)


def _finish(
    reports: list[RunReport], results_path: Path | None, fail_on_rejected: float | None, what: str
) -> None:
    """Write `--results`, then fail the command if a run failed or rejected too many rows."""
    if results_path is not None:
        documents = [results.document(report) for report in reports]
        results.write(results_path, documents[0] if len(documents) == 1 else documents)
    failed = [report for report in reports if not report.ok]
    if failed:
        raise RunFailed("; ".join(f"{r.pipeline}: {r.error or what}" for r in failed))
    if fail_on_rejected is not None:
        over = [r for r in reports if r.rows_read and r.rows_rejected / r.rows_read > fail_on_rejected]
        if over:
            message = "; ".join(
                f"{r.pipeline}: {r.rows_rejected:,} of {r.rows_read:,} rows rejected"
                f" ({r.rows_rejected / r.rows_read:.1%}), above --fail-on-rejected {fail_on_rejected:.1%}"
                for r in over
            )
            _failed(message, ExitCode.RUN_FAILED)
            raise RunFailed(message)


@cli.command()
@click.argument("pipeline")
@project_options
@click.option("--start", "start", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day.")
@click.option("--end", "end", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Day after the last.")
@click.option("--clip", is_flag=True, help="Send only the part of the range Meta still accepts.")
@click.option("--dry-run", is_flag=True, help="Build the requests but send nothing; progress is not saved.")
@results_option
@json_option
@fail_on_rejected_option
@metrics_options
@workers_option
@with_context
def backfill(
    ctx: Context,
    pipeline: str,
    *,
    start: dt.datetime,
    end: dt.datetime,
    clip: bool,
    dry_run: bool,
    results_path: Path | None,
    as_json: bool,
    fail_on_rejected: float | None,
    metrics_textfile: Path | None,
    pushgateway: str | None,
    workers: int | Literal["auto"] | None,
) -> None:
    """Send PIPELINE's rows dated in [--start, --end), day by day, leaving its cursor alone.

    Dates are in the pipeline's timezone and the column is `backfill_column` (default: the column
    mapped to event_time). Run the same command again to resume an interrupted backfill.
    """

    def announce(day: Day, number: int, total: int) -> None:
        if logs.json_mode():
            logs.emit("backfill_day", pipeline=pipeline, day=day.date.isoformat(), number=number, days=total)
        else:
            out.print(f"{pipeline}: day {number}/{total}: {day.date}")

    with ctx.store() as store, _progress(pipeline) as on_progress:
        report = jobs.sync(
            ctx.project,
            pipeline,
            store,
            start=start.date(),
            end=end.date(),
            options=RunOptions(dry_run=dry_run, workers=workers),
            clip=clip,
            progress=on_progress,
            on_day=announce,
        )
        print_report(report, as_json=as_json)
    _export_metrics(ctx.project, [report], metrics_textfile, pushgateway)
    _finish([report], results_path, fail_on_rejected, "backfill failed")


@cli.command()
@click.argument("pipelines", nargs=-1)
@project_options
@click.option("--run-now", is_flag=True, help="Also run each pipeline once right away.")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    envvar="CAPI_SYNC_METRICS_PORT",
    help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics.",
)
@with_context
def schedule(ctx: Context, pipelines: tuple[str, ...], run_now: bool, metrics_port: int | None) -> None:
    """Run PIPELINES (default: all with a schedule) on their `schedule:` until SIGINT/SIGTERM.

    Runs in the foreground and logs one line per run; meant for systemd, a container or tmux.
    """
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    from capi_sync.scheduler import Scheduler  # noqa: PLC0415 (APScheduler loads for `schedule` only)

    metrics = Metrics()
    started = dt.datetime.now(dt.UTC)

    def after_run(report: RunReport) -> None:
        metrics.observe(report, ctx.project.pipeline(report.pipeline).zone)
        with ctx.store() as store:
            Alerter(ctx.project, store).after_run(report)

    def check_stale() -> None:
        with ctx.store() as store:
            alerter = Alerter(ctx.project, store)
            for name in scheduler.names:
                alerter.check_stale(ctx.project.pipeline(name), started)

    scheduler = Scheduler(
        ctx.project,
        pipelines,
        ctx.state_url,
        run_now=run_now,
        on_report=after_run,
        every_minute=check_stale,
    )
    # A broken pipeline would log the same error every interval, forever: refuse to start instead.
    scheduled = [ctx.project.pipeline(name) for name in scheduler.names]
    if errors := setup_problems(ctx.project, scheduled):
        raise ConfigError(errors, source=str(ctx.project.path))
    with ctx.store():
        pass  # the state store opens, or the scheduler does not start (exit 2)
    if metrics_port is not None:
        port = metrics.serve(metrics_port)
        served = {"event": "metrics_serving", "port": port}
        logs.logger.info("metrics at http://0.0.0.0:%d/metrics", port, extra=served)

    def stop(_signum: int, _frame: object) -> None:
        scheduler.stop()

    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        scheduler.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@cli.command()
@click.argument("pipeline", required=False)
@project_options
@click.option("--offline", is_flag=True, help="Skip the Graph API; check the warehouses only.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check, for scripts.")
@with_context
def check(ctx: Context, pipeline: str | None, offline: bool, as_json: bool) -> None:
    """Connect to each warehouse and the Graph API and report what works; sends no event."""
    pipelines = [ctx.project.pipeline(pipeline)] if pipeline else list(ctx.project.pipelines.values())
    secrets = ctx.project.secrets()
    table = Table(title="capi-sync check", show_lines=False)
    for column in ("pipeline", "check", "result"):
        table.add_column(column, overflow="fold")
    failed = setup_failed = False
    pixels: dict[str, tuple[bool, str]] = {}
    for config in pipelines:
        rows: list[tuple[str, bool | None, str]] = []  # None: a warning, which fails nothing
        warehouse = config.warehouse
        try:
            with open_source(ctx.project.warehouse_of(config)) as source:
                rows.append((f"warehouse {warehouse}", True, "connected"))
                try:
                    prepared = prepare(config, source)
                    rows.append(("query and mapping", True, f"{len(prepared.columns)} columns, mapping OK"))
                except ConfigError as exc:
                    rows.append(("query and mapping", False, "; ".join(exc.errors)))
                except CapiSyncError as exc:
                    rows.append(("query", False, str(exc)))
        except CapiSyncError as exc:
            rows.append((f"warehouse {warehouse}", False, str(exc)))
        if offline:
            rows.append((f"destination {config.destination}", True, "skipped (--offline)"))
        else:
            if config.destination not in pixels:
                pixels[config.destination] = _check_destination(ctx.project, config)
            reached, message = pixels[config.destination]
            rows.append((f"destination {config.destination}", reached, message))
        version = api_versions.verdict(ctx.project.destination_of(config).api_version)
        rows.append(("api_version", True if version.ok else None, version.message))
        for label, ok, message in rows:
            failed |= ok is False
            setup_failed |= ok is False and not label.startswith("destination")
            mark = ("ok", "green") if ok else ("FAILED", "red") if ok is False else ("warning", "yellow")
            table.add_row(config.name, label, styled(mark, " " + _scrub(message, secrets)))
            if as_json or logs.json_mode():
                line = {
                    "pipeline": config.name,
                    "check": label,
                    "ok": ok is not False,
                    "warning": ok is None,
                    "result": _scrub(message, secrets),
                }
                click.echo(scrub(orjson.dumps(line).decode()))
    if not (as_json or logs.json_mode()):
        out.print(table)
    if setup_failed:  # a warehouse, query or mapping: configuration or setup, as everywhere
        raise SetupFailed("check failed")
    if failed:
        raise RunFailed("check failed")


def _check_destination(project: ProjectConfig, pipeline: PipelineConfig) -> tuple[bool, str]:
    destination = project.destination_of(pipeline)
    if not destination.access_token.get_secret_value():
        return False, "access_token is empty"
    try:
        with closing(make_client(project, pipeline)) as client:
            name = client.check()
    except MetaAuthError as exc:
        return False, f"{exc} (create a new system-user token with ads_management)"
    except MetaError as exc:
        return False, str(exc)
    return True, f"pixel {destination.pixel_id} ({name}) reachable with this token"


def _scrub(text: str, secrets: list[str]) -> str:
    return scrub(text, secrets)


@cli.command()
@click.argument("pipeline")
@project_options
@click.option("--start", "start", type=click.DateTime(["%Y-%m-%d"]), help="Show a backfill's first day.")
@click.option("--end", "end", type=click.DateTime(["%Y-%m-%d"]), help="With --start: the backfill's end.")
@with_context
def render(ctx: Context, pipeline: str, start: dt.datetime | None, end: dt.datetime | None) -> None:
    """Show the SQL the next run of PIPELINE sends to the warehouse, with its bound parameters."""
    config = ctx.project.pipeline(pipeline)
    if (start is None) != (end is None):
        raise click.UsageError("--start and --end go together")
    with setup_stage(config), open_source(ctx.project.warehouse_of(config)) as source:
        prepared = prepare(config, source)
        now = dt.datetime.now(dt.UTC)
        if start is not None and end is not None:
            column = backfill_column(config)
            plan = plan_backfill(
                config, column, prepared.kind(column), start.date(), end.date(), now=now, clip=True
            )
            if not plan.days:
                raise click.UsageError("the range holds no day Meta still accepts")
            day = plan.days[0]
            window = Window(
                order_by=(prepared.columns[prepared.index(column) or 0], *prepared.key_columns),
                cursor=prepared.columns[prepared.index(column) or 0],
                start=day.start,
                end=day.end,
                purpose="backfill",
            )
            what = f"backfill, first day {day.date} of {len(plan.days)}"
        else:
            with ctx.store() as store:
                state = store.load_cursor(pipeline)
            window = plan_incremental(config, prepared, state, now).window
            what = "next incremental run"
        sql, params = prepared.sql(source, window)
    out.print(f"-- {pipeline}: {what}")
    out.print(sql, soft_wrap=True)
    for index, value in enumerate(params):
        out.print(f"-- parameter {index + 1}: {value!r} ({type(value).__name__})", soft_wrap=True)


@cli.command()
@project_options
@click.option("--offline", is_flag=True, help="Check the file only; do not connect to warehouses.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: file, ok, pipelines, errors.")
@with_context
def validate(ctx: Context, offline: bool, as_json: bool) -> None:
    """Check the pipelines file, and each query's columns against its mapping."""
    errors = [] if offline else setup_problems(ctx.project, ctx.project.pipelines.values())
    if as_json:
        verdict = {
            "file": str(ctx.project.path),
            "ok": not errors,
            "pipelines": list(ctx.project.pipelines),
            "errors": errors,
        }
        click.echo(scrub(orjson.dumps(verdict).decode()))
        if errors:
            raise SetupFailed("validation failed")
        return
    if errors:
        raise ConfigError(errors, source=str(ctx.project.path))
    names = ", ".join(ctx.project.pipelines) or "no pipelines"
    out.print(styled(("OK", "green"), f" {ctx.project.path}: {names}"))


@cli.command()
@click.argument("pipeline")
@project_options
@click.option("-n", "rows", default=10, show_default=True, type=click.IntRange(min=1))
@with_context
def preview(ctx: Context, pipeline: str, rows: int) -> None:
    """Map the first rows of PIPELINE's query and show events and rejections; sends nothing."""
    config = ctx.project.pipeline(pipeline)
    quality = MatchQuality(notes=quality_notes(config))
    table = Table(title=f"{pipeline}: first {rows} rows", show_lines=True)
    for column in ("row", "outcome", "event / reasons"):
        table.add_column(column, overflow="fold")
    with setup_stage(config), open_source(ctx.project.warehouse_of(config)) as source:
        prepared = prepare(config, source)
        mapper = prepared.mapper
        window = Window(order_by=prepared.key_columns)
        for chunk in prepared.stream(source, window, rows):
            for row in chunk[:rows]:
                mapped = mapper.map_row(row)
                if mapped.event is None:
                    reasons = "\n".join(str(p) for p in mapped.problems)
                    table.add_row(mapped.row_key, styled(("rejected", "red")), reasons)
                else:
                    event = mapped.event if isinstance(mapped.event, dict) else orjson.loads(mapped.event)
                    quality.add_event(event["user_data"].keys(), event["event_name"])
                    quality.dropped.update((p.field, p.rule) for p in mapped.problems)
                    body = orjson.dumps(event, option=orjson.OPT_INDENT_2).decode()
                    if mapped.problems:
                        body += "\ndropped: " + "; ".join(str(p) for p in mapped.problems)
                    table.add_row(mapped.row_key, styled(("event", "green")), body)
            break
    out.print(table)
    print_quality(quality)


@cli.command()
@click.option(
    "--warehouse",
    "kind",
    type=click.Choice(WAREHOUSE_TYPES),
    default="duckdb",
    show_default=True,
    help="The warehouse the starter reads.",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    help="Where to write [default: here].",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(kind: str, folder: Path, force: bool) -> None:
    """Write a commented starter pipelines.yaml and .env.example for a warehouse type."""
    files = {folder / "pipelines.yaml": pipelines_yaml(kind), folder / ".env.example": env_example(kind)}
    existing = [str(path) for path in files if path.exists()]
    if existing and not force:
        raise click.UsageError(
            f"{', '.join(existing)} already there: keep it, or pass --force to overwrite it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
        out.print(f"wrote {path}")
    out.print("next: fill in .env, then `capi-sync validate` and `capi-sync run conversions --dry-run`")


@cli.command("list")
@project_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pipeline, for scripts.")
@with_context
def list_command(ctx: Context, as_json: bool) -> None:
    """The file's pipelines: warehouse, schedule, cursor and last run."""
    rows = []
    with ctx.store() as store:
        for name, pipeline in ctx.project.pipelines.items():
            cursor = store.load_cursor(name).value
            last = next(iter(store.list_runs(name, 1)), None)
            rows.append(
                {
                    "pipeline": name,
                    "warehouse": pipeline.warehouse,
                    "warehouse_type": ctx.project.warehouse_of(pipeline).type,
                    "destination": pipeline.destination,
                    "schedule": pipeline.schedule,
                    "cursor": results.json_value(cursor, pipeline.timezone),
                    "last_run": results.of_run(last) if last is not None else None,
                }
            )
    if as_json or logs.json_mode():
        for row in rows:
            click.echo(scrub(orjson.dumps(row).decode()))
        return
    table = Table(title="pipelines")
    for column in ("pipeline", "warehouse", "schedule", "cursor", "last run"):
        table.add_column(column)
    for row in rows:
        last_run = row["last_run"]
        summary = (
            f"{last_run['status']} {last_run['started_at'][:19].replace('T', ' ')} UTC:"
            f" {last_run['events_sent']:,} sent, {last_run['rows_rejected']:,} rejected"
            if last_run
            else "never"
        )
        table.add_row(
            row["pipeline"],
            f"{row['warehouse']} ({row['warehouse_type']})",
            row["schedule"] or "",
            "" if row["cursor"] is None else str(row["cursor"]),
            summary,
        )
    out.print(table)


@cli.command("quality")
@click.argument("pipeline")
@project_options
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="capi-sync's side: the runs started in this period (7d, 36h, 2w).",
)
@click.option(
    "--all-agents",
    is_flag=True,
    help=f"Meta's score over all the dataset's server events, not only those capi-sync sent"
    f" (agent_name={PARTNER_NAME}).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event name, for scripts.")
@with_context
def quality_command(ctx: Context, pipeline: str, since: str, all_agents: bool, as_json: bool) -> None:
    """Meta's Event Match Quality per event name beside what capi-sync sent.

    Reads Meta's Dataset Quality API for the pipeline's dataset (pixel) and the pipeline's run
    history; sends no event.
    """
    config = ctx.project.pipeline(pipeline)
    try:
        period = quality.parse_since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    started = dt.datetime.now(dt.UTC) - period
    with ctx.store() as store:
        documents = [results.of_run(row) for row in store.runs_since(config.name, started)]
    sent, without_names = quality.sent_quality(documents)
    with closing(make_client(ctx.project, config)) as client:
        meta = quality.fetch(client, None if all_agents else PARTNER_NAME)
    rows = quality.comparison(meta, sent)
    notes = []
    if without_names:
        notes.append(
            f"{without_names} run(s) in the period kept no counts per event name (before capi-sync 0.1)"
        )
    if not meta:
        notes.append("Meta has no Event Match Quality for this dataset yet (it scores web events only)")
    if as_json or logs.json_mode():
        for row in rows:
            click.echo(scrub(orjson.dumps({"pipeline": config.name, "since": since, **row}).decode()))
        for note in notes:
            logs.emit("quality_note", note)
        return
    table = Table(
        title=f"match quality, both sides: {config.name} (its runs since {started:%Y-%m-%d %H:%M} UTC)"
    )
    for column in (
        "event name",
        "Meta EMQ",
        "event coverage",
        "sent",
        "key",
        "Meta coverage %",
        "sent with key %",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        theirs = row["meta"] or {}
        first = True
        for key, figures in row["keys"].items() or {"": {"meta_coverage": None, "sent_share": None}}.items():
            table.add_row(
                row["event_name"] if first else "",
                _figure(theirs.get("composite_score"), "/10") if first else "",
                _figure(theirs.get("event_coverage"), "%") if first else "",
                f"{row['events_sent']:,}" if first else "",
                key,
                _figure(figures["meta_coverage"]),
                _figure(figures["sent_share"]),
            )
            first = False
    out.print(table)
    for row in rows:
        for diagnostic in (row["meta"] or {}).get("diagnostics", []):
            share = _figure(diagnostic["percentage"], "% of events")
            out.print(f"{row['event_name']}: {diagnostic['name']} ({share}). {diagnostic['solution'] or ''}")
    for note in notes:
        out.print(f"note: {note}")


def _figure(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


@cli.command("runs")
@click.argument("pipeline", required=False)
@project_options
@click.option("-n", "limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, for scripts.")
@with_context
def runs_command(ctx: Context, pipeline: str | None, limit: int, as_json: bool) -> None:
    """Show recent runs, newest first."""
    with ctx.store() as store:
        history = store.list_runs(pipeline, limit)
    if as_json or logs.json_mode():
        for row in history:  # the documents `--results` wrote, one per line
            click.echo(scrub(orjson.dumps(results.of_run(row)).decode()))
        return
    table = Table(title="runs")
    for column in (
        "id",
        "run_id",
        "pipeline",
        "status",
        "started (UTC)",
        "seconds",
        "read",
        "sent",
        "rejected",
        "pending",
        "skipped",
        "retries",
        "error / fbtrace_id",
    ):
        table.add_column(column)
    for row in history:
        seconds = f"{(row.ended_at - row.started_at).total_seconds():.1f}" if row.ended_at else ""
        detail = " ".join(filter(None, [row.error, row.fbtrace_ids]))
        table.add_row(
            str(row.id),
            row.run_uid or "",
            row.pipeline,
            row.status,
            f"{row.started_at:%Y-%m-%d %H:%M:%S}",
            seconds,
            str(row.rows_read),
            str(row.events_sent),
            str(row.rows_rejected),
            str(row.rows_pending),
            str(row.rows_skipped),
            str(row.retries),
            detail if not out.is_terminal else detail[:120],
        )
    out.print(table)


@cli.command()
@click.argument("pipeline")
@project_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row, for scripts.")
@with_context
def rejected(ctx: Context, pipeline: str, as_json: bool) -> None:
    """List PIPELINE's rejected rows with their reasons (values redacted)."""
    ctx.project.pipeline(pipeline)
    with ctx.store() as store:
        rows = store.list_rejected(pipeline)
    if as_json or logs.json_mode():
        for row in rows:  # the store's times are UTC: written with their zone
            click.echo(scrub(orjson.dumps(row, default=str, option=orjson.OPT_NAIVE_UTC).decode()))
        return
    table = Table(title=f"{pipeline}: {len(rows)} rejected row(s)")
    for column in ("row", "reasons", "attempts", "last seen (UTC)"):
        table.add_column(column, overflow="fold")
    for row in rows:
        reasons = "\n".join(
            f"{r['field']}: {r['rule']}"
            + (f" ({r['detail']})" if r.get("detail") else "")
            + (f" [value {r['value']}]" if r.get("value") else "")
            for r in row["reasons"]
        )
        table.add_row(row["row_key"], reasons, str(row["attempts"]), f"{row['last_seen']:%Y-%m-%d %H:%M:%S}")
    out.print(table)


@cli.command("retry")
@click.argument("pipeline")
@project_options
@click.option(
    "--all",
    "retry_all",
    is_flag=True,
    help="Also rows rejected for their data (after you fixed the mapping or the data).",
)
@results_option
@json_option
@fail_on_rejected_option
@metrics_options
@with_context
def retry_command(
    ctx: Context,
    pipeline: str,
    *,
    retry_all: bool,
    results_path: Path | None,
    as_json: bool,
    fail_on_rejected: float | None,
    metrics_textfile: Path | None,
    pushgateway: str | None,
) -> None:
    """Re-read PIPELINE's rejected rows by primary key and send them again now."""
    options = RunOptions(retry_only=True, retry_data_rejections=retry_all)
    with ctx.store() as store, _progress(pipeline) as on_progress:
        report = run_pipeline(ctx.project, pipeline, store, options, progress=on_progress)
        print_report(report, as_json=as_json)
        Alerter(ctx.project, store).after_run(report)
    _export_metrics(ctx.project, [report], metrics_textfile, pushgateway)
    _finish([report], results_path, fail_on_rejected, "retry failed")


@cli.group()
def state() -> None:
    """Inspect or change a pipeline's cursor."""


@state.command("show")
@click.argument("pipeline")
@project_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@with_context
def state_show(ctx: Context, pipeline: str, as_json: bool) -> None:
    """Show PIPELINE's cursor, the rows remembered near it, and backfills in progress."""
    config = ctx.project.pipeline(pipeline)
    with ctx.store() as store:
        cursor = store.load_cursor(pipeline)
        backfills = store.list_cursors(backfill_prefix(pipeline))
    if as_json or logs.json_mode():
        shown = {
            "pipeline": pipeline,
            "cursor": results.json_value(cursor.value, config.timezone),
            "cursor_kind": kind_of_value(cursor.value) if cursor.value is not None else None,
            "rows_settled": len(cursor.settled),
            "backfills": [
                {
                    "range": name.removeprefix(backfill_prefix(pipeline)),
                    "position": results.json_value(p.value, config.timezone),
                }
                for name, p in backfills
            ],
        }
        click.echo(scrub(orjson.dumps(shown).decode()))
        return
    if cursor.value is None:
        out.print(f"{pipeline}: no cursor yet; the next run starts at {config.start or 'Meta age limit'}")
    else:
        kind = kind_of_value(cursor.value) or type(cursor.value).__name__
        instant = CursorClock(kind, config.zone).to_utc(cursor.value)
        utc = f" in {config.timezone} = {instant:%Y-%m-%d %H:%M:%S} UTC" if kind == "timestamp" else ""
        out.print(
            f"{pipeline}: cursor {cursor.value!s} ({kind}{utc}),"
            f" {len(cursor.settled)} row(s) settled at or near that value",
            soft_wrap=True,
        )
    for name, position in backfills:
        out.print(f"backfill {name.removeprefix(backfill_prefix(pipeline))}: at {position.value!s}")


@state.command("set")
@click.argument("pipeline")
@click.argument("value")
@project_options
@with_context
def state_set(ctx: Context, pipeline: str, value: str) -> None:
    """Move PIPELINE's cursor to VALUE (e.g. 2026-11-20T08:00, '2 days ago', 41000).

    Naive timestamps are read in the pipeline's timezone. The next run reads rows from VALUE on.
    """
    config = ctx.project.pipeline(pipeline)
    if config.cursor is None:
        raise ConfigError([f"pipeline '{pipeline}': cursor: not set, so there is nothing to move"])
    with setup_stage(config), open_source(ctx.project.warehouse_of(config)) as source:
        kind = prepare(config, source).kind(config.cursor)
    try:
        typed = parse_cursor_value(value, CursorClock(kind, config.zone), dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="VALUE") from None
    with ctx.store() as store, store.lock(pipeline):
        store.set_cursor(pipeline, typed)
    out.print(f"{pipeline}: cursor set to {typed!s} ({kind_of_value(typed) or kind or type(typed).__name__})")


@state.command("reset")
@click.argument("pipeline")
@project_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_context
def state_reset(ctx: Context, pipeline: str, yes: bool) -> None:
    """Forget PIPELINE's cursor: the next run re-reads everything (Meta drops re-sent event_ids)."""
    ctx.project.pipeline(pipeline)
    if not yes:
        click.confirm(f"Reset the cursor of '{pipeline}'?", abort=True)
    with ctx.store() as store:
        store.reset(pipeline)
    out.print(f"{pipeline}: cursor reset")


PROGRESS_EVERY_SECONDS = 10.0


def _progress(pipeline: str, total: int | None = None) -> Any:
    """A live counter on stderr when it is a terminal; without one (logs, CI, cron), a progress
    line every ten seconds: rows read, sent, rejected, the rate, and an ETA when the total is
    known (`--limit`)."""
    if not err.is_terminal or logs.json_mode():
        return _ProgressLines(pipeline, total=total)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task(pipeline)

    class _Live:
        def __enter__(self) -> Callable[[RunReport], None]:
            progress.start()
            return lambda r: progress.update(
                task,
                description=(
                    f"{pipeline}: {r.rows_fetched:,} read, {r.events_sent:,} sent,"
                    f" {r.rows_rejected:,} rejected"
                ),
            )

        def __exit__(self, *exc: object) -> None:
            progress.stop()

    return _Live()


class _ProgressLines:
    def __init__(
        self, pipeline: str, every: float = PROGRESS_EVERY_SECONDS, total: int | None = None
    ) -> None:
        self.pipeline = pipeline
        self.every = every
        self.total = total
        self.started = self.last = time.monotonic()

    def __enter__(self) -> Callable[[RunReport], None]:
        return self.update

    def update(self, report: RunReport) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        rate = report.rows_fetched / max(now - self.started, 1e-9)
        eta = None
        if self.total is not None and rate > 0:
            eta = round(max(self.total - report.rows_fetched, 0) / rate, 1)
        logs.emit(
            "progress",
            f"{self.pipeline}: {report.rows_fetched:,} read, {report.events_sent:,} sent,"
            f" {report.rows_rejected:,} rejected, {rate:,.0f} rows/s"
            + (f", about {eta:,.0f}s left" if eta is not None else ""),
            rows_read=report.rows_fetched,
            events_sent=report.events_sent,
            rows_rejected=report.rows_rejected,
            rows_per_second=round(rate, 1),
            eta_seconds=eta,
        )

    def __exit__(self, *exc: object) -> None:
        pass


def print_report(report: RunReport, output: Path | None = None, *, as_json: bool = False) -> None:
    """The reason a run failed first, then figures that add up: read = sent + rejected + pending + skipped.

    `--json` prints the results document instead; `--log-format json` makes it the run's last
    line, `run_finished`, with warnings as their own lines before it.
    """
    if logs.json_mode():
        _log_report(report)
        return
    if as_json:
        click.echo(results.dumps(results.document(report)).decode(), nl=False)
        return
    if report.error:
        err.print(styled(("error:", "red"), f" {report.error}"), soft_wrap=True)
    mode = " (dry run: nothing sent)" if report.dry_run else ""
    verb = "built" if report.dry_run else "sent"
    skipped = report.rows_skipped + report.rows_no_consent
    why_skipped = [
        f"{count:,} {what}"
        for count, what in (
            (report.rows_skipped, "already delivered"),
            (report.rows_no_consent, "without consent"),
        )
        if count
    ]
    extra = [
        f"{count:,} {what}"
        for count, what in ((report.rows_retried, "kept rows retried"), (report.retries, "request retries"))
        if count
    ]
    out.print(
        styled(
            (f"{report.pipeline}: {report.status}", "green" if report.ok else "red"),
            f"{mode} in {report.seconds:.1f}s: {report.rows_read:,} rows read ="
            f" {report.events_sent:,} events {verb} in {report.batches} batch(es) + {report.rows_rejected:,}"
            f" rejected + {report.rows_pending:,} pending + {skipped:,} skipped"
            + (f" ({', '.join(why_skipped)})" if why_skipped else "")
            + (f"; {', '.join(extra)}" if extra else ""),
        ),
        soft_wrap=True,
    )
    unsettled = report.rows_fetched - (report.rows_read - report.rows_skipped)
    if not report.ok and unsettled > 0:
        out.print(f"{unsettled:,} row(s) read after the last accepted batch are read again by the next run")
    for note in report.notes:
        out.print(note, soft_wrap=True)
    if report.cursor_after is not None:
        saved = " (not saved: dry run)" if report.dry_run else ""
        label = "backfill position" if report.kind == "backfill" else "cursor"
        out.print(f"{label}: {report.cursor_before} -> {report.cursor_after}{saved}")
    warnings = [
        (
            report.pending_total,
            "row(s) pending: Meta could not take them; every run retries them until"
            " they are delivered or too old for Meta (capi-sync rejected shows them)",
        ),
        (
            report.duplicate_keys,
            "row(s) repeat a primary key already read in this run: they share its"
            " event_id, so Meta keeps only one of them",
        ),
        (report.rows_null_key, "row(s) have a NULL primary key and are never sent"),
        (report.rows_null_cursor, "row(s) have a NULL cursor and are never sent"),
    ]
    for count, what in warnings:
        if count:
            err.print(styled(("warning:", "yellow"), f" {count:,} {what}"), soft_wrap=True)
    if output is not None:
        out.print(f"events written to {output}")
    if report.rejected_by_rule:
        out.print(
            "rejected and pending rows by reason:" if report.rows_pending else "rejected rows by reason:"
        )
        for (field, rule), count in report.rejected_by_rule.most_common():
            out.print(f"  {count:>8,}  {field}: {rule}")
        out.print("first rejected rows:")
        for rejection in report.sample_rejections[:10]:
            out.print(f"  {rejection}", soft_wrap=True)
    print_quality(report.quality)


def _log_report(report: RunReport) -> None:
    document = results.document(report)
    level = logging.INFO if report.ok else logging.ERROR
    for count, what in (
        (report.pending_total, "rows_pending"),
        (report.duplicate_keys, "duplicate_keys"),
        (report.rows_null_key, "rows_null_key"),
        (report.rows_null_cursor, "rows_null_cursor"),
    ):
        if count:
            logs.emit("run_warning", f"{count:,} {what.replace('_', ' ')}", level=logging.WARNING,
                      run_id=report.run_uid, pipeline=report.pipeline, kind=what, rows=count)  # fmt: skip
    message = f"{report.pipeline}: {report.status}" + (f": {report.error}" if report.error else "")
    logs.emit("run_finished", message, level=level, to_stdout=True, **document)


def print_quality(quality: Any) -> None:
    rows = quality.rows()
    if not rows:
        return
    table = Table(title=f"match quality ({quality.events:,} events)")
    for column in ("customer info", "events", "share", "values dropped"):
        table.add_column(column, justify="right" if column != "customer info" else "left")
    for key, count, share, dropped in rows:
        table.add_row(key, f"{count:,}", f"{share:.0%}", f"{dropped:,}" if dropped else "")
    out.print(table)
    for (field, rule), count in quality.dropped.most_common():
        out.print(f"  dropped {count:,} x {field}: {rule}")
    for note in quality.notes:
        out.print(f"  {note}")


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    # Same path as Ctrl-C: the run is marked interrupted; the cursor stands after the last
    # accepted batch, so the next run resumes there.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        code = _invoke(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _invoke(argv: list[str] | None) -> int:
    """Run the command; the one place where outcomes become exit codes."""
    try:
        cli.main(args=argv, prog_name="capi-sync", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click wraps Ctrl-C and our SIGTERM
            return _failed(
                "interrupted: the cursor stands after the last accepted batch; run again to resume",
                ExitCode.INTERRUPTED,
                plain=True,
            )
        return _failed("aborted", ExitCode.RUN_FAILED, plain=True)
    except click.ClickException as exc:
        if logs.json_mode():
            return _failed(exc.format_message(), exc.exit_code)
        exc.show()
        return exc.exit_code
    except (ConfigError, SetupError, StateSetupError, MissingDependency) as exc:  # configuration or setup
        return _failed(str(exc), ExitCode.USAGE)
    except CapiSyncError as exc:
        return _failed(str(exc), ExitCode.RUN_FAILED)
    except Exception:
        if not logs.json_mode():
            raise  # a bug: its traceback is what a bug report needs
        # JSON logs stay parseable even for a bug: the traceback goes inside one line
        logs.logger.exception("internal error", extra={"event": "internal_error", "exit_code": 1})
        return ExitCode.RUN_FAILED
    return ExitCode.OK


def _failed(message: str, code: int, *, plain: bool = False) -> int:
    """The reason a command failed, on stderr: `error: ...`, or one JSON line with the exit code."""
    if logs.json_mode():
        logs.emit("command_failed", scrub(message), level=logging.ERROR, exit_code=int(code))
    elif plain:
        err.print(message, soft_wrap=True)
    else:
        err.print(styled(("error:", "red"), f" {message}"), soft_wrap=True)
    return code
