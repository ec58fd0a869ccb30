"""Airflow DAGs of the OTA event pipeline.

``ota_pipeline`` runs the four step binaries (stage-files, load-raw, dedup, export-mysql)
over a date window, daily or on demand; ``ota_historic_load`` splits the one large case
data file into daily files first and runs the same steps over the range it holds.

All logic lives in the binaries; this file only wires them. Nothing here does work at
import time: settings are read from the environment, templates render at run time.

Runner (env ``OTA_TASK_RUNNER``): ``docker`` (default) runs each step in the pipeline
image with DockerOperator; ``local`` runs the same command line with BashOperator, the
binaries on PATH and settings from the ``OTA_*`` environment (tests, machines without
Docker). One function builds the command line for both.

Credentials come from Airflow connections, resolved when a task runs and handed to the
step as files on a tmpfs, removed when it ends (Docker: the volume ``OTA_SECRETS_VOLUME``
the worker mounts at ``OTA_SECRETS_DIR``; local: /dev/shm), never as environment that
``docker inspect`` or a template field shows, and each step gets only those it uses:
MySQL from a MySQL connection (``OTA_MYSQL_CONN_ID``, default ``mysql_default``) for the
export and reconcile, the GCS key (``OTA_GCS_CONN_ID``, default ``google_cloud_default``)
for the steps that read the lake, the BigQuery key (``OTA_BQ_CONN_ID``, default
``google_cloud_bigquery``) for the steps on the warehouse. A MySQL connection that does
not exist falls back to ``OTA_MYSQL_URL``; a Google connection without a key leaves the
binaries to Application Default Credentials (workload identity).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

try:  # Airflow 3
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2.10
    from airflow import DAG
    from airflow.models.param import Param
from airflow.timetables.interval import CronDataIntervalTimetable

STEPS = ("stage_files", "load_raw", "dedup", "export_mysql", "reconcile")
BINARIES = {
    "stage_files": "stage-files",
    "load_raw": "load-raw",
    "dedup": "dedup",
    "export_mysql": "export-mysql",
    "reconcile": "export-mysql",
}
# Settings passed to the container as plain environment (no secrets here).
PLAIN_SETTINGS = (
    "OTA_LAKE_URL",
    "OTA_WAREHOUSE_URL",
    "OTA_MYSQL_TABLE",
    "OTA_FILE_SUFFIX",
    "OTA_BATCH_SIZE",
    "OTA_MYSQL_LOAD_METHOD",
    "OTA_LOCK_TIMEOUT",
    "OTA_MYSQL_TIMEOUT",
    "OTA_ALLOW_SHRINK",
    "OTA_MAX_SHRINK_PCT",
    "OTA_MAX_REJECTED_PCT",
    "OTA_MAX_EVENT_DAY_DISTANCE",
    "OTA_ON_UNKNOWN_COLUMNS",
    "OTA_MAX_MISSING_DAYS",
    "OTA_DELETE_ABSENT_DATES",
    "OTA_MAX_RESYNC_DELETE_PCT",
    "OTA_SCRATCH_DIR",
    "OTA_GCS_ENDPOINT",
    "OTA_BQ_ENDPOINT",
    "OTA_BQ_STORAGE_ENDPOINT",
    "OTA_BQ_MAX_BYTES",
    "OTA_BQ_JOB_TIMEOUT",
    "OTA_PROGRESS_SECS",
    "RUST_LOG",
)
# The trigger form's switches, as the settings every step reads (rendered per run).
OPERATION_SETTINGS = {
    "OTA_DRY_RUN": "{{ ota_switch(params, 'dry_run') }}",
    "OTA_FULL_REFRESH": "{{ ota_switch(params, 'full_refresh') }}",
}
# The credentials each step uses, and the only ones it gets: MySQL for the export and its
# reconcile, the GCS key for the steps that read the lake, the BigQuery key for every step
# (each uses the warehouse).
STEP_CREDENTIALS = {
    "stage_files": ("gcs", "bq"),
    "load_raw": ("gcs", "bq"),
    "dedup": ("bq",),
    "export_mysql": ("mysql", "bq"),
    "reconcile": ("mysql", "bq"),
}
# Each credential as the binaries read it from a file: the file's name, the variable
# naming its path, and the variables that must not hold it as well.
SECRET_FILES = {
    "mysql": ("mysql-url", "OTA_MYSQL_URL_FILE", ("OTA_MYSQL_URL",)),
    "gcs": ("gcs-key.json", "OTA_GCS_KEY_FILE", ("OTA_GCS_KEY_JSON",)),
    "bq": ("bq-key.json", "OTA_BQ_KEY_FILE", ("OTA_BQ_KEY_JSON",)),
}
# Airflow connections of the credentials: env variable naming the id -> default id. The
# two Google accounts are two connections: the lake's never holds the warehouse's key.
CONNECTION_IDS = {
    "OTA_MYSQL_CONN_ID": "mysql_default",
    "OTA_GCS_CONN_ID": "google_cloud_default",
    "OTA_BQ_CONN_ID": "google_cloud_bigquery",
}
# Service-account key files on the Docker host: credential -> (host path variable, path
# inside the container).
KEY_FILES = {
    "gcs": ("OTA_GCS_KEY_FILE", "/run/secrets/gcs-key.json"),
    "bq": ("OTA_BQ_KEY_FILE", "/run/secrets/bq-key.json"),
}
# Where a Docker task sees the secrets volume (OTA_SECRETS_VOLUME) the worker writes its
# credentials to (mounted in the worker at OTA_SECRETS_DIR).
SECRETS_TARGET = "/run/ota-secrets"

DOC = """
### OTA event pipeline

Moves the daily OTA clickstream files through the warehouse into MySQL, then checks
that MySQL holds what the warehouse holds:
`stage_files >> has_data >> load_raw >> dedup >> export_mysql >> reconcile`.

**Window** (`start_date`, `end_date`: both optional, `YYYY-MM-DD`, UTC, inclusive):
* none — a manual run covers the 3 days ending today; a scheduled or backfill run the
  3 days ending on the last day of its data interval;
* only `start_date` — from it to that reference day; only `end_date` — the 3 days
  ending on it; both — exactly that window.

With dates given, export_mysql also re-syncs the window's event dates exactly (a
backfill: rows missing in, or changed by hand in, MySQL are repaired); without, it
applies the warehouse's change feed, which carries late events, corrections and removals.

The window stage-files resolves is passed to every later task, so one run works on one
window. A window without files ends green: `has_data` skips the later tasks. An end date
before the start fails stage_files at once (exit 2), without retries.

**Operations**:
* `full_refresh` — export_mysql re-syncs every event date, and reconcile compares them all;
* `reconcile_only` — only compare warehouse and MySQL over the window (every date with
  `full_refresh`): load_raw, dedup and export_mysql are skipped;
* `dry_run` — BigQuery only: each step logs its statements with the bytes they would
  process and runs nothing.

`reconcile` fails the run when any event date differs (its log holds the table).
Files load_raw quarantines (unreadable, shrunk, too many rejected rows, unknown columns
when so set) fail the run at once, or only warn with `OTA_ON_QUARANTINE=warn`.

**Backfills** (Airflow 3): each run processes the window of its data interval and, as a
backfill, re-syncs its event dates in MySQL exactly (drift there is repaired).

    airflow backfill create --dag-id ota_pipeline \\
        --from-date 2024-01-01 --to-date 2024-01-07 --max-active-runs 1

`--from-date/--to-date` are logical dates (a daily interval `[D, D+1)` covers day D).
Never pass dates through `--dag-run-conf`: it applies the same conf to every run.
"""


def task_runner() -> str:
    """The runner named by OTA_TASK_RUNNER: ``docker`` (default) or ``local``."""
    runner = os.environ.get("OTA_TASK_RUNNER", "docker").strip().lower()
    if runner not in ("docker", "local"):
        raise ValueError(f"OTA_TASK_RUNNER must be docker or local, not {runner!r}")
    return runner


def run_type_of(dag_run) -> str:
    """The run's type as its lower-case value (``manual``, ``scheduled``, ``backfill``):
    the task SDK's enum prints as ``DagRunType.BACKFILL``, the scheduler's as ``backfill``."""
    run_type = getattr(dag_run, "run_type", None) or ""
    return str(getattr(run_type, "value", run_type)).lower()


def reference_date(dag_run, data_interval_end) -> str:
    """The day a window without dates ends on: today (UTC) for a manual run, the last
    day of the data interval for a scheduled or backfill run."""
    run_type = run_type_of(dag_run)
    if data_interval_end is None or run_type.endswith("manual"):
        when = getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
    else:
        when = data_interval_end - timedelta(microseconds=1)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d")


def step_summary(ti, task_id: str = "stage_files") -> dict:
    """The JSON summary a step printed as its last line (its XCom)."""
    value = ti.xcom_pull(task_ids=task_id)
    if isinstance(value, dict):
        return value
    if not value:
        raise ValueError(f"task {task_id} left no summary")
    return json.loads(value)


def window_bound(ti, bound: str) -> str:
    """``start`` or ``end`` of the window stage-files resolved."""
    return step_summary(ti)["window"][bound]


def backfill_bound(ti, params, bound: str, dag_run=None) -> str:
    """For export-mysql: the resolved window's bound when the user named dates or the run
    is part of an ``airflow backfill`` (re-sync those event dates exactly: drift in MySQL
    is repaired), else empty (a scheduled or plain manual run applies the change feed)."""
    run_type = run_type_of(dag_run)
    if params.get("start_date") or params.get("end_date") or run_type.endswith("backfill"):
        return window_bound(ti, bound)
    return ""


def has_data(ti) -> bool:
    """False when stage-files found no file in the window: the later tasks are skipped."""
    return step_summary(ti).get("status") != "no_data"


def route(ti, params) -> list[str]:
    """What runs after stage-files: only the reconcile (``reconcile_only``), the load
    (``load_raw``, then the rest), or nothing when the window holds no file and no
    ``full_refresh`` (which re-syncs every date whatever the window holds) was asked."""
    if params.get("reconcile_only"):
        return ["reconcile"]
    return ["load_raw"] if has_data(ti) or params.get("full_refresh") else []


def switch(params, name: str) -> str:
    """A boolean param as the value a step's setting takes (``true`` or ``false``)."""
    return "true" if params.get(name) else "false"


MACROS = {
    "ota_reference_date": reference_date,
    "ota_window": window_bound,
    "ota_backfill_bound": backfill_bound,
    "ota_switch": switch,
}

# Jinja templates of the step arguments.
FIRST_STEP_WINDOW = [
    "--start-date",
    '{{ params.start_date or "" }}',
    "--end-date",
    '{{ params.end_date or "" }}',
    "--reference-date",
    "{{ ota_reference_date(dag_run, data_interval_end) }}",
]
RESOLVED_WINDOW = [
    "--start-date",
    '{{ ota_window(ti, "start") }}',
    "--end-date",
    '{{ ota_window(ti, "end") }}',
]
# export-mysql applies the change feed; with dates from the user it also re-syncs them.
EXPORT_WINDOW = [
    "--start-date",
    '{{ ota_backfill_bound(ti, params, "start", dag_run) }}',
    "--end-date",
    '{{ ota_backfill_bound(ti, params, "end", dag_run) }}',
]


# BigQuery job ids derive from the run id and the step: a retried task re-attaches to
# the jobs its first try started instead of running them twice.
RUN_ID = ["--run-id", "{{ run_id }}"]


def step_command(step: str, extra: list[str] | None = None) -> list[str]:
    """The command line of a step, the same for both runners."""
    window = {"stage_files": FIRST_STEP_WINDOW, "export_mysql": EXPORT_WINDOW}.get(step, RESOLVED_WINDOW)
    if step == "reconcile":
        extra = ["--reconcile", *(extra or [])]
    return [BINARIES[step], *window, *RUN_ID, *(extra or [])]


def argv_env(command: list[str]) -> tuple[str, dict[str, str]]:
    """The local runner's command: a fixed shell line that only expands environment
    variables, and those variables, one per argument, holding the (templated) arguments.

    BashOperator renders templates into ``env``; the shell never parses a rendered value,
    so a param such as ``x'; rm -rf ~; echo '`` reaches the binary as one literal argument.
    """
    names = [f"OTA_ARGV_{i}" for i in range(len(command))]
    line = "exec " + " ".join(f'"${{{name}}}"' for name in names)
    return line, dict(zip(names, command))


def connection_id(variable: str) -> str:
    """The Airflow connection id ``variable`` names (or its default)."""
    return os.environ.get(variable, "").strip() or CONNECTION_IDS[variable]


def get_connection(conn_id: str):
    """The Airflow connection ``conn_id``, or None when none is defined."""
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception as error:  # AirflowNotFoundException; its module moved between versions
        if type(error).__name__ == "AirflowNotFoundException":
            return None
        raise


def mysql_url(conn) -> str:
    """A MySQL connection as the URL the binaries take (``ssl_mode`` extra -> ssl-mode)."""
    user = quote(conn.login or "", safe="")
    password = f":{quote(conn.password, safe='')}" if conn.password else ""
    auth = f"{user}{password}@" if user or password else ""
    url = f"mysql://{auth}{conn.host or '127.0.0.1'}:{conn.port or 3306}/{quote(conn.schema or '', safe='')}"
    ssl_mode = (conn.extra_dejson or {}).get("ssl_mode")
    return f"{url}?ssl-mode={quote(str(ssl_mode), safe='')}" if ssl_mode else url


def google_key(conn) -> str | None:
    """The service-account key JSON of a Google Cloud connection (``keyfile_dict``, or the
    file ``key_path`` names on the worker), or None: Application Default Credentials."""
    extra = conn.extra_dejson or {}

    def field(name: str):
        return extra.get(name) or extra.get(f"extra__google_cloud_platform__{name}")

    keyfile_dict = field("keyfile_dict")
    if keyfile_dict:
        return keyfile_dict if isinstance(keyfile_dict, str) else json.dumps(keyfile_dict)
    key_path = field("key_path")
    if key_path:
        with open(key_path, encoding="utf-8") as key_file:
            return key_file.read()
    return None


def uses_google(service: str, settings: dict[str, str]) -> bool:
    """Whether the step talks to the real GCS (``gcs``) or BigQuery (``bq``): a gs:// lake or
    bigquery:// warehouse with no emulator endpoint (an emulator must never get a key)."""
    if service == "gcs":
        url, endpoint = settings.get("OTA_LAKE_URL", ""), settings.get("OTA_GCS_ENDPOINT")
        return url.startswith("gs://") and not endpoint
    url, endpoint = settings.get("OTA_WAREHOUSE_URL", ""), settings.get("OTA_BQ_ENDPOINT")
    return url.startswith("bigquery://") and not endpoint


def step_secrets(step: str) -> dict[str, str]:
    """At run time: the credentials ``step`` uses (STEP_CREDENTIALS), by credential, from
    the Airflow connections, masked in the task logs. A missing MySQL connection falls
    back to ``OTA_MYSQL_URL``; a Google connection without a key leaves the binaries to
    Application Default Credentials."""
    from airflow.sdk.log import mask_secret

    wanted = STEP_CREDENTIALS.get(step, ())
    secrets = {}
    if "mysql" in wanted:
        mysql = get_connection(connection_id("OTA_MYSQL_CONN_ID"))
        if mysql is not None:
            secrets["mysql"] = mysql_url(mysql)
        elif os.environ.get("OTA_MYSQL_URL"):
            secrets["mysql"] = os.environ["OTA_MYSQL_URL"]
    for service, variable in (("gcs", "OTA_GCS_CONN_ID"), ("bq", "OTA_BQ_CONN_ID")):
        if service not in wanted or not uses_google(service, dict(os.environ)):
            continue
        conn = get_connection(connection_id(variable))
        key = google_key(conn) if conn is not None else None
        if key:
            secrets[service] = key
    for value in secrets.values():
        mask_secret(value)
    return secrets


@contextlib.contextmanager
def secret_files(secrets: dict[str, str], root: str | None, readable_by_others: bool = False):
    """Writes each credential to a file of its own in a fresh directory under ``root`` (a
    tmpfs: /dev/shm where there is one) and yields {variable naming the file: its path};
    the directory and files are removed when the step ends, failed or not. The directory
    has a random name and its parent lets no one list it; the files are readable by their
    owner only, or by anyone who knows the path (``readable_by_others``: a task container
    that runs as another user)."""
    import shutil
    import tempfile

    if not secrets:
        yield {}
        return
    directory = tempfile.mkdtemp(prefix="ota-", dir=root)
    try:
        os.chmod(directory, 0o711 if readable_by_others else 0o700)
        files = {}
        for credential, value in secrets.items():
            name, variable, _ = SECRET_FILES[credential]
            path = os.path.join(directory, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if readable_by_others else 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(value)
            files[variable] = path
        yield files
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def cleared_settings(step: str, secrets: dict[str, str]) -> dict[str, str]:
    """The variables of the worker's environment the step must not see: those holding a
    credential it does not use, and those that would hold one it gets as a file; emptied
    (an empty setting counts as not given)."""
    cleared = {}
    for credential, (_, file_variable, variables) in SECRET_FILES.items():
        if credential not in STEP_CREDENTIALS.get(step, ()):
            cleared.update({v: "" for v in (file_variable, *variables)})
        elif credential in secrets:
            cleared.update({v: "" for v in variables})
    return cleared


def local_secrets_root() -> str | None:
    """Where the local runner writes credential files: a tmpfs where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def without_auth(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL, without user, password, query or fragment
    (an Asset URI or a lineage namespace must carry no credentials). Never raises: a URL
    that does not parse unambiguously (a password holding ``/ ? # :`` unencoded, a port
    that is not a number) gives ``scheme://unparseable``, so the DAG still imports and
    shows no fragment of it; the step itself then fails with the binary's clear error."""
    from urllib.parse import urlsplit

    scheme = url.partition("://")[0] if "://" in url else "unknown"
    try:
        parts = urlsplit(url)
        port = parts.port
        ambiguous = "@" in parts.path or bool(parts.fragment)
    except ValueError:
        ambiguous, parts, port = True, None, None
    if ambiguous or parts is None:
        return f"{scheme}://unparseable"
    host = parts.hostname or ""
    netloc = f"{host}:{port}" if port else host
    # Written out by hand: urlunsplit drops the "//" of an empty host (duckdb:///path).
    return f"{parts.scheme}://{netloc}{parts.path}"


def step_assets() -> dict[str, object]:
    """The data each step reads and writes, as Airflow Assets, so other DAGs can be
    scheduled on fresh data: the lake's daily files, the raw and deduplicated warehouse
    tables, and the MySQL serving table. Each is identified by its URI, from the settings
    without credentials (a fixed name would clash when two deployments, or a changed
    setting, give it two URIs: Airflow then marks it inactive and fails the task)."""
    from airflow.sdk import Asset

    lake = os.environ.get("OTA_LAKE_URL", "file:///data/lake")
    warehouse = without_auth(os.environ.get("OTA_WAREHOUSE_URL", "duckdb:///data/warehouse.duckdb")).rstrip("/")
    mysql = without_auth(
        os.environ.get("OTA_MYSQL_ASSET_URL") or os.environ.get("OTA_MYSQL_URL") or "mysql://mysql:3306/ota"
    )
    table = os.environ.get("OTA_MYSQL_TABLE", "ota_events")
    return {
        "lake": Asset(uri=without_auth(lake), group="ota"),
        "raw": Asset(uri=f"{warehouse}/raw_events", group="ota"),
        "dedup": Asset(uri=f"{warehouse}/dedup_events", group="ota"),
        "mysql": Asset(uri=f"{mysql.rstrip('/')}/{table}", group="ota"),
    }


# What each step reads (inlets) and writes (outlets), by step_assets() key.
LINEAGE = {
    "stage_files": (["lake"], []),
    "load_raw": (["lake"], ["raw"]),
    "dedup": (["raw"], ["dedup"]),
    "export_mysql": (["dedup"], ["mysql"]),
    "reconcile": (["dedup", "mysql"], []),
}


def pool() -> str:
    """The Airflow pool every step of both DAGs runs in (env ``OTA_POOL``, default
    ``ota_pipeline``, one slot): two DAG runs never write the warehouse at once."""
    return os.environ.get("OTA_POOL", "").strip() or "ota_pipeline"


def on_failure(context) -> None:
    """Failure hook: calls the ``module:function`` that ``OTA_ON_FAILURE`` names (a
    notifier of your own, say) with the task's context; nothing when unset."""
    target = os.environ.get("OTA_ON_FAILURE", "").strip()
    if not target:
        return
    import importlib

    module_name, _, function = target.partition(":")
    getattr(importlib.import_module(module_name), function or "notify")(context)


def task_timeout() -> timedelta:
    """How long one step may run before Airflow stops it (env ``OTA_TASK_TIMEOUT_MINUTES``,
    default 180): a hung step fails and retries instead of holding the DAG run forever."""
    minutes = os.environ.get("OTA_TASK_TIMEOUT_MINUTES", "180").strip()
    if not minutes.isdigit() or int(minutes) < 1:
        raise ValueError(f"OTA_TASK_TIMEOUT_MINUTES must be a whole number of minutes, not {minutes!r}")
    return timedelta(minutes=int(minutes))


def task_retries() -> int:
    """How many times a failed step is tried again (env ``OTA_TASK_RETRIES``, default 2),
    with exponential back-off from one minute."""
    retries = os.environ.get("OTA_TASK_RETRIES", "2").strip()
    if not retries.isdigit():
        raise ValueError(f"OTA_TASK_RETRIES must be a whole number, not {retries!r}")
    return int(retries)


# The binaries' exit code for input or settings the user must fix (docs/design.md: 2).
USER_ERROR_EXIT = 2
# The exit code of a step that did what it could and held the rest back: load-raw
# quarantined files, export-mysql kept dates it would not delete.
PARTIAL_EXIT = 3


def on_quarantine() -> str:
    """What a load that quarantined files does to the run (env ``OTA_ON_QUARANTINE``):
    ``fail`` (default) fails it at once, ``warn`` logs a warning and carries on with
    the files that loaded."""
    value = os.environ.get("OTA_ON_QUARANTINE", "fail").strip().lower() or "fail"
    if value not in ("fail", "warn"):
        raise ValueError(f"OTA_ON_QUARANTINE must be fail or warn, not {value!r}")
    return value


def exit_code_of(error: Exception) -> int | None:
    """The step's exit code in a failed BashOperator's or DockerOperator's error."""
    import re

    found = re.search(r"exit code (\d+)|'StatusCode': (\d+)", str(error))
    return int(found.group(1) or found.group(2)) if found else None


def run_step(operator, context):
    """Runs the step; a refusal of its input or settings (exit 2) fails the task at once,
    without the retries meant for faults: a retry would be refused the same way. So does
    a step that held part of its work back (exit 3: quarantined files, dates an export
    would not delete), unless ``OTA_ON_QUARANTINE=warn``."""
    from airflow.exceptions import AirflowException, AirflowFailException

    try:
        return operator.execute_step(context)
    except AirflowFailException:
        raise
    except AirflowException as error:
        code = exit_code_of(error)
        if code == USER_ERROR_EXIT:
            raise AirflowFailException(
                f"{operator.task_id} refused its input or settings (exit 2, see the log above); "
                "not retried: fix the params or settings and trigger again"
            ) from error
        if code == PARTIAL_EXIT:
            held = "quarantined files" if operator.task_id == "load_raw" else "held dates"
            message = (
                f"{operator.task_id} {held} (exit 3): their names and reasons are in "
                "files_quarantined or held_dates of the summary above; the rest was done"
            )
            if on_quarantine() == "warn":
                operator.log.warning("%s; carrying on (OTA_ON_QUARANTINE=warn)", message)
                return None
            raise AirflowFailException(
                f"{message}. Not retried: re-deliver or fix the files, or loosen the limits, "
                "then clear the task (or set OTA_ON_QUARANTINE=warn to carry on without them)"
            ) from error
        raise


def lineage_datasets() -> dict[str, tuple[str, str]]:
    """The steps' data as OpenLineage datasets, (namespace, name) by step_assets() key,
    named as OpenLineage names them: ``file`` and a path, ``gs://bucket`` and a prefix,
    ``bigquery`` and ``project.dataset.table``, ``mysql://host:port`` and ``db.table``;
    an embedded warehouse is its URL and the table."""
    from urllib.parse import urlsplit

    lake = urlsplit(without_auth(os.environ.get("OTA_LAKE_URL", "file:///data/lake")))
    warehouse_url = without_auth(os.environ.get("OTA_WAREHOUSE_URL", "duckdb:///data/warehouse.duckdb")).rstrip("/")
    warehouse = urlsplit(warehouse_url)
    mysql = urlsplit(
        without_auth(
            os.environ.get("OTA_MYSQL_ASSET_URL") or os.environ.get("OTA_MYSQL_URL") or "mysql://mysql:3306/ota"
        )
    )
    table = os.environ.get("OTA_MYSQL_TABLE", "ota_events")

    def in_warehouse(name: str) -> tuple[str, str]:
        if warehouse.scheme == "bigquery":
            return "bigquery", f"{warehouse.netloc}.{warehouse.path.strip('/')}.{name}"
        return warehouse_url, name

    if lake.scheme == "file":
        lake_dataset = ("file", lake.path)
    else:
        lake_dataset = (f"{lake.scheme}://{lake.netloc}", lake.path.strip("/"))
    return {
        "lake": lake_dataset,
        "raw": in_warehouse("raw_events"),
        "dedup": in_warehouse("dedup_events"),
        "mysql": (f"mysql://{mysql.netloc}", f"{mysql.path.strip('/')}.{table}"),
    }


def step_lineage(step: str, summary: dict | None):
    """OpenLineage facets of a finished step, for the OpenLineage provider where it is
    installed: the datasets it read and wrote, with the rows and files the summary counts
    (``inputStatistics``, ``outputStatistics``), and the summary's status, window and
    counts as the run facet ``ota_step``."""
    import attr
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import RunFacet, input_statistics_input_dataset, output_statistics_output_dataset

    @attr.define
    class OtaStepRunFacet(RunFacet):
        step: str
        status: str
        window: dict | None
        counts: dict

    summary = summary or {}
    counts = summary.get("counts") or {}
    datasets = lineage_datasets()
    inlets, outlets = LINEAGE[step]
    inputs = []
    for key in inlets:
        facets = {}
        if key == "lake" and step in ("stage_files", "load_raw"):
            files = summary.get("files_loaded", summary.get("files"))
            facets["inputStatistics"] = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                rowCount=counts.get("rows_read") if step == "load_raw" else None,
                fileCount=len(files) if isinstance(files, list) else None,
            )
        inputs.append(InputDataset(namespace=datasets[key][0], name=datasets[key][1], inputFacets=facets))
    outputs = [
        OutputDataset(
            namespace=datasets[key][0],
            name=datasets[key][1],
            outputFacets={
                "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=int(counts.get("rows_written") or 0)
                )
            },
        )
        for key in outlets
    ]
    run_facets = {}
    if summary:
        run_facets["ota_step"] = OtaStepRunFacet(
            step=str(summary.get("step", step)),
            status=str(summary.get("status", "")),
            window=summary.get("window"),
            counts=counts,
        )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)


class StepOperator:
    """What the operators of both runners add to the provider's: the step's exit codes
    read as the binaries mean them (run_step), its summary kept, and OpenLineage facets
    from that summary. Subclasses say where the credentials go (``execute_step``)."""

    def execute(self, context):
        result = run_step(self, context)
        try:
            self.ota_summary = json.loads(result) if isinstance(result, str) else result
        except ValueError:
            self.ota_summary = None
        return result

    def get_openlineage_facets_on_complete(self, task_instance):
        return step_lineage(self.task_id, getattr(self, "ota_summary", None))


@functools.cache
def local_operator():
    """BashOperator that adds the step's credentials to its process environment when it
    runs (after templates were rendered and recorded, so they never show in the UI)."""
    try:
        from airflow.providers.standard.operators.bash import BashOperator
    except ImportError:  # Airflow 2.10 without the standard provider
        from airflow.operators.bash import BashOperator

    class StepBashOperator(StepOperator, BashOperator):
        def execute_step(self, context):
            secrets = step_secrets(self.task_id)
            with secret_files(secrets, local_secrets_root()) as files:
                self.env = {**(self.env or {}), **cleared_settings(self.task_id, secrets), **files}
                return BashOperator.execute(self, context)

    return StepBashOperator


@functools.cache
def docker_operator():
    """DockerOperator that adds the step's credentials to its private environment when it
    runs (never a template field, never shown in the UI)."""
    from airflow.providers.docker.operators.docker import DockerOperator

    class StepDockerOperator(StepOperator, DockerOperator):
        def execute_step(self, context):
            from airflow.exceptions import AirflowFailException
            from docker.types import Mount

            secrets = step_secrets(self.task_id)
            if not secrets:
                return DockerOperator.execute(self, context)
            root, volume = os.environ.get("OTA_SECRETS_DIR"), os.environ.get("OTA_SECRETS_VOLUME")
            if not (root and volume and os.path.isdir(root)):
                raise AirflowFailException(
                    "credentials reach Docker tasks as files on a tmpfs volume, never as "
                    "environment: set OTA_SECRETS_VOLUME (the Docker volume) and "
                    "OTA_SECRETS_DIR (where this worker mounts it); the compose stack does"
                )
            with secret_files(secrets, root, readable_by_others=True) as files:
                inside = {
                    variable: f"{SECRETS_TARGET}/{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"
                    for variable, path in files.items()
                }
                self.environment = {**(self.environment or {}), **inside}
                self.mounts = [*self.mounts, Mount(source=volume, target=SECRETS_TARGET, type="volume", read_only=True)]
                return DockerOperator.execute(self, context)

    return StepDockerOperator


def make_task(dag: DAG, step: str, extra: list[str] | None = None):
    """One step as an operator of the configured runner."""
    command = step_command(step, extra)
    assets = step_assets()
    inlets, outlets = LINEAGE[step]
    # reconcile: drift is not a fault a retry could mend, so it fails the run at once.
    retries = 0 if step == "reconcile" else task_retries()
    common = {
        "task_id": step,
        "dag": dag,
        "pool": pool(),
        "inlets": [assets[a] for a in inlets],
        "outlets": [assets[a] for a in outlets],
        "on_failure_callback": on_failure,
        "execution_timeout": task_timeout(),
        "retries": retries,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    }
    if task_runner() == "local":
        # The summary is the last line of stdout, so it becomes the XCom.
        line, env = argv_env(command)
        env.update(OPERATION_SETTINGS)
        return local_operator()(bash_command=line, env=env, append_env=True, **common)

    from docker.types import Mount

    environment = {k: os.environ[k] for k in PLAIN_SETTINGS if os.environ.get(k)}
    environment.update(OPERATION_SETTINGS)
    mounts = []
    for credential, (variable, target) in KEY_FILES.items():
        host_path = os.environ.get(variable)
        if host_path and credential in STEP_CREDENTIALS[step]:
            mounts.append(Mount(source=host_path, target=target, type="bind", read_only=True))
            environment[variable] = target
    # /data of the task: a Docker volume (OTA_DATA_VOLUME, the compose stack's) or a host
    # folder (OTA_DATA_DIR, an absolute path on the Docker host).
    data_volume, data_dir = os.environ.get("OTA_DATA_VOLUME"), os.environ.get("OTA_DATA_DIR")
    if data_volume:
        mounts.append(Mount(source=data_volume, target="/data", type="volume"))
    elif data_dir:
        mounts.append(Mount(source=data_dir, target="/data", type="bind"))
    return docker_operator()(
        image=os.environ.get("OTA_IMAGE", "ota-pipeline:latest"),
        command=command,
        environment=environment,
        mounts=mounts,
        # uid:gid of the container (OTA_TASK_USER), so files it writes in a host folder
        # belong to that folder's owner; unset: the image's user.
        user=os.environ.get("OTA_TASK_USER", "").strip() or None,
        auto_remove="success",
        docker_url=os.environ.get("OTA_DOCKER_URL", "unix://var/run/docker.sock"),
        network_mode=os.environ.get("OTA_DOCKER_NETWORK", "bridge"),
        mount_tmp_dir=False,
        xcom_all=False,
        **common,
    )


def build_pipeline(dag: DAG, first_extra: list[str] | None = None) -> None:
    """stage_files >> has_data >> load_raw >> dedup >> export_mysql >> reconcile, with
    has_data also leading straight to reconcile (``reconcile_only``)."""
    try:
        from airflow.providers.standard.operators.python import BranchPythonOperator
    except ImportError:  # Airflow 2.10 without the standard provider
        from airflow.operators.python import BranchPythonOperator

    stage = make_task(dag, "stage_files", first_extra)
    gate = BranchPythonOperator(
        task_id="has_data", python_callable=route, execution_timeout=timedelta(minutes=5), dag=dag
    )
    load = make_task(dag, "load_raw")
    dedup = make_task(dag, "dedup")
    export = make_task(dag, "export_mysql")
    check = make_task(dag, "reconcile")
    # After the export, or alone when has_data routes straight to it; never after a failure.
    check.trigger_rule = "none_failed_min_one_success"
    # Templates that pull XCom add no dependency by themselves: wire them explicitly.
    stage >> gate >> load >> dedup >> export >> check
    gate >> check


DATE_PARAM = {"type": ["null", "string"], "format": "date"}
WINDOW_SECTION = "Window"
OPERATIONS_SECTION = "Operations"


def operation_params() -> dict:
    """The trigger form's switches, in a section of their own."""

    # "null" too: the form then shows a plain switch, not a field marked required (a
    # switch always holds a value); null, sent by an API client, reads as off.
    def switch_param(title: str, description: str) -> Param:
        return Param(False, type=["boolean", "null"], title=title, description=description, section=OPERATIONS_SECTION)

    return {
        "full_refresh": switch_param(
            "Full refresh",
            "Re-sync every event date in MySQL to the warehouse, not only the window's; "
            "reconcile then compares every date",
        ),
        "reconcile_only": switch_param(
            "Only reconcile",
            "Only compare warehouse and MySQL per event date over the window (every date with "
            "Full refresh); load, dedup and export are skipped, drift fails the run",
        ),
        "dry_run": switch_param(
            "Dry run",
            "BigQuery only: log each statement with the bytes it would process and run nothing "
            "(the embedded warehouse refuses a dry run)",
        ),
    }


with DAG(
    dag_id="ota_pipeline",
    description="OTA clickstream: lake -> warehouse (raw, dedup) -> MySQL",
    doc_md=DOC,
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["ota", "clickstream", "mysql"],
    params={
        "start_date": Param(
            None,
            title="First day",
            description="First day (YYYY-MM-DD, UTC), optional; alone: up to today",
            section=WINDOW_SECTION,
            **DATE_PARAM,
        ),
        "end_date": Param(
            None,
            title="Last day",
            description="Last day (YYYY-MM-DD, UTC), optional, not before the first; alone: the 3 days ending on it",
            section=WINDOW_SECTION,
            **DATE_PARAM,
        ),
        **operation_params(),
    },
    user_defined_macros=MACROS,
    render_template_as_native_obj=False,
) as pipeline_dag:
    build_pipeline(pipeline_dag)

with DAG(
    dag_id="ota_historic_load",
    description="Split the case data file into daily files, then run the pipeline over it",
    doc_md="Historic load: `stage-files --from <source_file>` splits the case data into "
    "daily files, then load_raw, dedup and export_mysql run over the range it reports.",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["ota", "historic"],
    params={
        "source_file": Param(
            os.environ.get("OTA_CASE_DATA", "/data/case_data.parquet.gzip"),
            type="string",
            title="Case data file",
            description="The case data Parquet file to split",
        ),
        "start_date": Param(None, title="First day", description="Only this window of it (optional)", **DATE_PARAM),
        "end_date": Param(None, title="Last day", description="Only this window of it (optional)", **DATE_PARAM),
    },
    user_defined_macros=MACROS,
) as historic_dag:
    # One token: a value starting with "-" stays the path, never a flag.
    build_pipeline(historic_dag, ["--from={{ params.source_file }}"])
