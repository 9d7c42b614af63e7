"""Match quality on a messy table: the bench's dataset with values written as people write them.

    python bench/match_quality.py --rows 20000
    python bench/match_quality.py --rows 20000 --pythonpath /tmp/old-site   # another build

The bench's own table (`bench/run.py`) is tidy: every key reaches 100% before and after issue 25's
rules. Here a share of its rows carry each class of value that issue names: emails with a trailing
tab, phones with an extension, emoji after names and cities, states as accented names or dotted
abbreviations, day-first and month-name birth dates, ZIP codes with extra segments, countries with
punctuation. Each pipeline (`pushdown: false` and `true`) runs with `--dry-run --output`. Per key it
prints the share of events carrying the key (what the run's match-quality table counts) and the
share carrying the digest the tidy table's value gives (what Meta can match): a value hashed with
an emoji, or as `calif` instead of `ca`, counts in the first and not in the second. The reference
digests come from the same build on the tidy table. No timing here: this measures what is sent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import PIPELINE  # noqa: E402 (the bench's pipeline, same mapping)

MESS = """
update conversions set
    email = case when order_id % 5 = 0 then email || chr(9) else email end,
    phone = case when order_id % 7 = 0 then phone || ' ext. 12' when order_id % 7 = 1 then phone || ' x9'
                 else phone end,
    first_name = case when order_id % 9 = 0 then first_name || ' ❤️' else first_name end,
    city = case when order_id % 6 = 0 then city || ' 🌉' else city end,
    state = case when order_id % 8 = 0 then ['Calif.', 'Califórnia', 'CALIF', 'Cal.'][1 + (order_id // 8) % 4]
                 else state end,  -- rows whose tidy state is CA
    birth_date = case when order_id % 4 = 0 then strftime(birth_date::date, '%d/%m/%Y')
                      when order_id % 4 = 1 then strftime(birth_date::date, '%B %d, %Y') else birth_date end,
    zip = case when order_id % 5 = 0 then zip || '-1234' else zip end,
    country = case when order_id % 10 = 0
                   then ['United-States', '(US)', 'United States of America', 'U.S.A.']
                        [1 + (order_id // 10) % 4]
                   else country end
"""
KEYS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")


def dry_run(folder: Path, database: Path, pushdown: str, env: dict[str, str], name: str) -> dict[str, dict]:
    """The run's events by event_id (the order id), from `--dry-run --output`."""
    path = folder / f"{name}.yaml"
    path.write_text(
        PIPELINE.format(
            warehouse=f"{{type: duckdb, path: {database}}}", graph_url="http://127.0.0.1:9", pushdown=pushdown
        )
    )
    output = folder / f"{name}.ndjson"
    command = [sys.executable, "-m", "capi_sync", "run", "conversions", "-f", str(path), "--dry-run"]
    done = subprocess.run(
        [*command, "--output", str(output)],
        env={**env, "CAPI_SYNC_STATE": str(folder / f"{name}.state.db")},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    events = (json.loads(line) for line in output.read_text().splitlines())
    return {event["event_id"]: event["user_data"] for event in events}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--pythonpath", help="Run the capi-sync found here (an unpacked wheel) instead.")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="capi-sync-quality-"))
    tidy, messy = folder / "tidy.duckdb", folder / "messy.duckdb"
    for database in (tidy, messy):
        subprocess.run(
            [sys.executable, str(HERE / "run.py"), "--make-dataset", str(database), "--rows", str(args.rows)],
            check=True,
        )
    with duckdb.connect(str(messy)) as con:
        con.execute(MESS)
    env = {**os.environ, "FB_ACCESS_TOKEN": "bench-token"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    reference = dry_run(folder, tidy, "false", env, "tidy")
    runs = {
        pushdown: dry_run(folder, messy, pushdown, env, f"messy_{pushdown}") for pushdown in ("false", "true")
    }
    print(f"{args.rows:,} rows; per key: events carrying it / carrying the tidy value's digest")
    print("| key | pushdown: false | pushdown: true |")
    print("|---|---|---|")
    for key in KEYS:
        cells = []
        for events in runs.values():
            carrying = sum(key in user for user in events.values())
            right = sum(user.get(key) == reference[event_id].get(key) for event_id, user in events.items())
            cells.append(f"{carrying / args.rows:.0%} / {right / args.rows:.0%}")
        print(f"| `{key}` | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
