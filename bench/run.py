"""End-to-end benchmark: a messy DuckDB (or PostgreSQL) table -> `capi-sync run` -> a local Graph API.

    python bench/run.py --rows 200000                 # native core, pure Python and Meta's SDK, same rows
    python bench/run.py --rows 1000000 --engines native --skip-sdk   # peak memory on a large table
    python bench/run.py --rows 100000 --warehouse postgres --skip-sdk
    python bench/run.py --rows 200000 --repeat 3      # alternating runs, medians: this machine is noisy

Every figure is measured on real processes: the Graph stand-in runs in its own process, capi-sync
(`CAPI_SYNC_ENGINE=native` or `python`) and the SDK reference run as child processes: CPU time and
the largest process's peak RSS come from wait4(), and the peak of all processes together is sampled
from /proc. The CPU split (the run's own process, its children, the Graph stand-in) reads /proc too.
A debug build of the native core is refused: it measures nothing worth printing.
Linux charges a child the parent's peak RSS at exec time, so the parent stays small: the dataset is
built, and copied into PostgreSQL, by child processes too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent
CAPI_SYNC = Path(sys.executable).parent / "capi-sync"

DATASET = """
create or replace table conversions as
select
    i as order_id,
    case i % 3 when 0 then ' User' || i || '@Example.COM ' when 1 then 'user' || i || '@example.com'
         else 'U.' || i || '@mail.example.org' end as email,
    case i % 3 when 0 then '(650) 555-' || lpad((i % 10000)::varchar, 4, '0')
         when 1 then '+1 415 555 ' || lpad((i % 10000)::varchar, 4, '0')
         else '650.555.' || lpad((i % 10000)::varchar, 4, '0') end as phone,
    ['Élodie', 'JOHN', ' Mary-Ann ', 'José'][1 + i % 4] as first_name,
    ['Smith', 'O''Brien', 'Müller', 'van der Berg'][1 + i % 4] as last_name,
    ['Male', 'female', 'M', 'F'][1 + i % 4] as gender,
    strftime(date '1960-01-01' + to_days((i * 37) % 15000), '%Y-%m-%d') as birth_date,
    ['San Francisco', 'New York', 'Austin', 'Saint-Étienne'][1 + i % 4] as city,
    ['CA', 'ny', 'Tx', 'CA'][1 + i % 4] as state,
    lpad((10000 + i % 89999)::varchar, 5, '0') || '-1234' as zip,
    ['US', 'us', 'US', 'us'][1 + i % 4] as country,
    'cust-' || (i % 50000) as customer_id,
    '203.0.' || (i % 256) || '.' || (i % 200) as ip,
    'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15' as user_agent,
    'fb.1.1700000000000.' || (1000000000 + i) as fbp,
    'fb.1.1700000000000.IwAR' || i as fbc,
    'https://shop.example.com/checkout/' || i || '?utm_source=meta' as page_url,
    round(10 + (i % 500) * 1.37, 2)::decimal(10, 2) as amount,
    ['usd', 'USD', 'eur'][1 + i % 3] as currency,
    to_json(list_transform(range(1 + i % 3),
        lambda k: {'id': 'sku-' || ((i + k) % 9000), 'quantity': 1 + k, 'price': 9.99 + k})) as items,
    (now()::timestamp - interval 3 hour) + to_microseconds((i * 10000) // $rows * 1000) as created_at,
    (now()::timestamp - interval 3 hour) + to_microseconds((i * 10000) // $rows * 1000) as updated_at
from range(0, $rows) as t(i)
"""

PIPELINE = """
warehouses:
  bench: {warehouse}
destinations:
  local: {{pixel_id: "1234567890", access_token: bench-token, graph_url: "{graph_url}"}}
pipelines:
  conversions:
    warehouse: bench
    destination: local
    query: select * from conversions
    primary_key: order_id
    cursor: updated_at
    settle_delay: 0
    pushdown: {pushdown}
    settings: {{action_source: website, default_phone_region: US}}
    mapping:
      server_event: {{event_name: {{value: Purchase}}, event_time: created_at, event_id: order_id,
                     event_source_url: page_url}}
      customer_info: {{em: email, ph: phone, fn: first_name, ln: last_name, ge: gender, db: birth_date,
                      ct: city, st: state, zp: zip, country: country, external_id: customer_id,
                      client_ip_address: ip, client_user_agent: user_agent, fbp: fbp, fbc: fbc}}
      custom_data: {{value: amount, currency: currency, order_id: order_id, contents: items}}
"""


@dataclass
class Measured:
    label: str
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    peak_tree_rss_mb: float
    own_cpu_seconds: float  # the measured process alone (workers and other children excluded)
    stand_in_cpu_seconds: float  # what the Graph stand-in spent answering this run

    @property
    def cpu_split(self) -> str:
        """run's process / its children (workers) / the Graph stand-in, in CPU seconds."""
        children = max(self.cpu_seconds - self.own_cpu_seconds, 0.0)
        return f"{self.own_cpu_seconds:.1f} / {children:.1f} / {self.stand_in_cpu_seconds:.1f}"

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6 if self.events else 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (worker processes included), now."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    family, total = {pid}, 0.0
    for child in sorted(parents):  # children have larger pids than their parents here
        if parents[child] in family:
            family.add(child)
    for member in family:
        with contextlib.suppress(OSError):
            pages = int((Path("/proc") / str(member) / "statm").read_text().split()[1])
            total += pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far, its children excluded (0 once it is gone)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(
    label: str, command: list[str], events: int, *, cwd: Path, env: dict[str, str], stand_in: int
) -> Measured:
    stand_in_before = cpu_seconds(stand_in)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree = own_cpu = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree, own_cpu
        while not done.wait(0.1):
            peak_tree = max(peak_tree, tree_rss_mb(process.pid))
            own_cpu = max(own_cpu, cpu_seconds(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{label} failed:\n{stdout.decode()}\n{stderr.decode()}")
    if sent := re.search(rb"([\d,]+) events sent", stdout):  # capi-sync says what it delivered
        events = int(sent[1].replace(b",", b""))
        print(stdout.decode().split("\n", 1)[0], flush=True)
    # ru_maxrss is the largest single process; the sampled sum covers worker processes too.
    total_cpu = usage.ru_utime + usage.ru_stime
    return Measured(
        label,
        events,
        seconds,
        total_cpu,
        usage.ru_maxrss / 1024,
        peak_tree,
        min(own_cpu, total_cpu),
        cpu_seconds(stand_in) - stand_in_before,
    )


@contextlib.contextmanager
def graph_server(folder: Path, latency_ms: float = 0.0) -> Iterator[tuple[str, int]]:
    """The stand-in's URL and process id."""
    port_file = folder / "graph.port"
    server = subprocess.Popen(
        [sys.executable, str(HERE / "graph_server.py"), "--port-file", str(port_file),
         "--latency-ms", str(latency_ms)]
    )  # fmt: skip
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}", server.pid
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def postgres_copy(database: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server holding the same table (the tests' helper starts it)."""
    sys.path.insert(0, str(HERE.parent))
    from tests.postgres import create_database, postgres_server

    with postgres_server() as server_url:
        url = create_database(server_url)
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        subprocess.run([sys.executable, __file__, "--copy-to-postgres", str(database), dsn], check=True)
        yield url


def copy_to_postgres(database: str, dsn: str) -> None:
    import psycopg

    with duckdb.connect(database, read_only=True) as source, psycopg.connect(dsn) as target:
        result = source.execute("select * from conversions")
        columns = [d[0] for d in result.description]
        target.execute(
            "create table conversions (order_id bigint, "
            + ", ".join(f"{c} text" for c in columns[1:17])
            # items as text, as in the DuckDB table: a `json` column reaches Python as lists, which
            # the core does not read (those chunks are the reference's; see "The native core").
            + ", amount numeric(10, 2), currency text, items text, created_at timestamp,"
            " updated_at timestamp)"
        )
        with target.cursor().copy(f"copy conversions ({', '.join(columns)}) from stdin") as copy:
            while chunk := result.fetchmany(50_000):
                for row in chunk:
                    copy.write_row(row)
        target.commit()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--warehouse", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument(
        "--engines",
        default="native,python",
        help="Comma-separated: `native` (the core) and/or `python` (the pure reference path).",
    )
    parser.add_argument(
        "--pushdown", action="store_true", help="Hash customer information in the warehouse (pushdown: true)."
    )
    parser.add_argument("--skip-sdk", action="store_true", help="Do not run the facebook-business reference.")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="Each Graph answer waits this long, as over a network."
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="Run each path N times, alternating; print medians."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the working folder.")
    parser.add_argument("--make-dataset", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--copy-to-postgres", nargs=2, metavar=("PATH", "DSN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_dataset:
        with duckdb.connect(args.make_dataset) as con:
            con.execute(DATASET, {"rows": args.rows})
        return
    if args.copy_to_postgres:
        copy_to_postgres(*args.copy_to_postgres)
        return

    engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    if "native" in engines:
        refuse_a_debug_core()
    folder = Path(tempfile.mkdtemp(prefix="capi-sync-bench-"))
    database = folder / "bench.duckdb"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--make-dataset", str(database), "--rows", str(args.rows)], check=True
    )
    print(f"dataset: {args.rows:,} rows in {time.perf_counter() - started:.1f}s ({folder})", flush=True)

    ours: list[Measured] = []
    sdks: list[Measured] = []
    with graph_server(folder, args.latency_ms) as (graph_url, stand_in), contextlib.ExitStack() as stack:
        if args.warehouse == "postgres":
            url = stack.enter_context(postgres_copy(database))
            warehouse = f"{{type: sqlalchemy, url: '{url}'}}"
        else:
            warehouse = f"{{type: duckdb, path: {database}}}"
        (folder / "pipelines.yaml").write_text(
            PIPELINE.format(warehouse=warehouse, graph_url=graph_url, pushdown=str(args.pushdown).lower())
        )
        command = [str(CAPI_SYNC), "run", "conversions", "-f", str(folder / "pipelines.yaml")]
        # Runs alternate (ours, the SDK's, ours...) so that a slow stretch of a shared machine
        # weighs on both paths alike; each of ours starts from an empty state (a first run).
        for attempt in range(args.repeat):
            env = {**os.environ, "CAPI_SYNC_STATE": f"sqlite:///{folder / f'state-{attempt}.db'}"}
            for engine in engines:
                build_env = {
                    **env,
                    "CAPI_SYNC_STATE": f"sqlite:///{folder / f'state-{attempt}-{engine}.db'}",
                    "CAPI_SYNC_ENGINE": engine,
                }
                label = (
                    f"capi-sync ({args.warehouse}"
                    + (", pushdown" if args.pushdown else "")
                    + f", {engine_of(build_env)})"
                )
                ours.append(
                    run_measured(label, command, args.rows, cwd=folder, env=build_env, stand_in=stand_in)
                )
            if not args.skip_sdk and args.warehouse == "duckdb":
                sdk = [sys.executable, str(HERE / "sdk_reference.py"), "--database", str(database),
                       "--graph-url", graph_url]  # fmt: skip
                sdks.append(
                    run_measured(
                        "facebook-business SDK", sdk, args.rows, cwd=folder, env=env, stand_in=stand_in
                    )
                )

    print(
        "\n| path | rows | events/s | CPU µs/event | peak RSS MB | all processes MB | wall s"
        " | CPU s: run / children / stand-in |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in [*ours, *sdks]:
        print(
            f"| {r.label} | {r.events:,} | {r.per_second:,.0f} | {r.cpu_us_per_event:.1f}"
            f" | {r.peak_rss_mb:.0f} | {r.peak_tree_rss_mb:.0f} | {r.seconds:.1f} | {r.cpu_split} |"
        )
    if args.repeat > 1:
        by_label = {
            label: [r for r in ours if r.label == label] for label in dict.fromkeys(r.label for r in ours)
        }
        for name, runs in (*by_label.items(), ("SDK", sdks)):
            if runs:
                rates = [r.per_second for r in runs]
                print(
                    f"\n{name}: median {statistics.median(rates):,.0f} events/s over {len(runs)} runs"
                    f" ({min(rates):,.0f} to {max(rates):,.0f}); largest process at most"
                    f" {max(r.peak_rss_mb for r in runs):.0f} MB"
                )
    if sdks:
        for label in dict.fromkeys(r.label for r in ours):
            mine = [r for r in ours if r.label == label]  # one per SDK run, alternating
            ratios = [m.per_second / theirs.per_second for m, theirs in zip(mine, sdks, strict=True)]
            pairs = f" (median of {len(ratios)} pairs: {', '.join(f'{x:.1f}' for x in ratios)})"
            print(
                f"\n{label} / SDK: {statistics.median(ratios):.1f}x events per second"
                + (pairs if len(ratios) > 1 else "")
            )
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


def refuse_a_debug_core() -> None:
    """A debug build of the core is correct but several times slower: never measure it."""
    probe = "from capi_sync import _core; print(_core.build_profile)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        sys.exit("the native core is not built here: run with --engines python, or install with cargo")
    if found.stdout.strip() != "release":
        sys.exit(f"the native core is a {found.stdout.strip()} build: reinstall (pip install -e .) first")


def engine_of(env: dict[str, str]) -> str:
    """Asked of a child: importing capi-sync here would charge its memory to every run measured."""
    probe = "import capi_sync; print(capi_sync.engine().split(' (')[0])"
    return subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


if __name__ == "__main__":
    main()
