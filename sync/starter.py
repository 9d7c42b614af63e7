"""What `capi-sync init` writes: a commented starter `pipelines.yaml` and `.env.example` for one
warehouse type. The starter passes `capi-sync validate --offline` as written (a test holds it)."""

from __future__ import annotations

from typing import Final

WAREHOUSE_TYPES: Final = ("duckdb", "postgres", "snowflake", "bigquery")

_WAREHOUSES: Final = {
    "duckdb": """\
  warehouse:
    type: duckdb
    path: warehouse.duckdb           # relative to this file
""",
    "postgres": """\
  warehouse:                         # pip install 'capi-sync[postgres]'
    type: sqlalchemy
    url: postgresql+psycopg://${PG_USER}:${PG_PASSWORD}@${PG_HOST:-localhost}:5432/${PG_DATABASE}
""",
    "snowflake": """\
  warehouse:                         # pip install 'capi-sync[snowflake]'
    type: snowflake
    account: ${SNOWFLAKE_ACCOUNT}    # e.g. xy12345.eu-west-1
    user: ${SNOWFLAKE_USER}
    password: ${SNOWFLAKE_PASSWORD}
    warehouse: ${SNOWFLAKE_WAREHOUSE}
    database: ${SNOWFLAKE_DATABASE}
    schema: ${SNOWFLAKE_SCHEMA:-PUBLIC}
""",
    "bigquery": """\
  warehouse:                         # pip install 'capi-sync[bigquery]'
    type: bigquery
    project: ${GCP_PROJECT}
    dataset: ${BQ_DATASET}
    credentials_file: ${GOOGLE_APPLICATION_CREDENTIALS:-}   # empty: the default credentials
""",
}

_ENV: Final = {
    "duckdb": "",
    "postgres": "PG_USER=capi_sync\nPG_PASSWORD=\nPG_HOST=localhost\nPG_DATABASE=analytics\n",
    "snowflake": (
        "SNOWFLAKE_ACCOUNT=\nSNOWFLAKE_USER=\nSNOWFLAKE_PASSWORD=\nSNOWFLAKE_WAREHOUSE=\n"
        "SNOWFLAKE_DATABASE=\nSNOWFLAKE_SCHEMA=PUBLIC\n"
    ),
    "bigquery": "GCP_PROJECT=\nBQ_DATASET=\nGOOGLE_APPLICATION_CREDENTIALS=\n",
}

_PIPELINES: Final = """\
# capi-sync pipelines ({kind}). `capi-sync validate` checks this file, `capi-sync check` connects,
# `capi-sync run conversions --dry-run` shows the requests without sending them.
# ${{VAR}} reads an environment variable (an error if unset); ${{VAR:-default}} falls back.

warehouses:
{warehouse}
destinations:
  meta:
    pixel_id: ${{FB_PIXEL_ID}}
    access_token: ${{FB_ACCESS_TOKEN}}   # Events Manager > Settings > Conversions API

# alerts:                            # webhooks told when runs go wrong (see the README)
#   ops:
#     webhook: ${{ALERT_WEBHOOK_URL}}
#     format: slack

pipelines:
  conversions:
    warehouse: warehouse
    destination: meta
    query: select * from conversions   # one row per conversion
    primary_key: order_id            # names rows in rejections; derives event_id when none is mapped
    cursor: updated_at               # each run sends the rows past the last one sent
    schedule: "@hourly"              # for `capi-sync schedule`
    settings:
      action_source: website
      # test_event_code: TEST12345   # shows events in Events Manager's Test events tab
    mapping:
      server_event:
        event_name: {{value: Purchase}}  # {{value: ...}} is a constant; a plain string is a column
        event_time: created_at
        event_source_url: page_url
      customer_info:                 # normalized and SHA-256 hashed before they leave
        em: email
        ph: phone
        client_ip_address: ip_address
        client_user_agent: user_agent
      custom_data:
        value: amount
        currency: currency
"""


def pipelines_yaml(kind: str) -> str:
    return _PIPELINES.format(kind=kind, warehouse=_WAREHOUSES[kind])


def env_example(kind: str) -> str:
    return (
        "# Copy to .env (never commit it) and fill in. capi-sync reads the environment as ${VAR}:\n"
        "# `set -a; . ./.env; set +a` in a shell, EnvironmentFile= under systemd, envFrom on Kubernetes.\n"
        "FB_PIXEL_ID=\nFB_ACCESS_TOKEN=\n" + _ENV[kind]
    )
