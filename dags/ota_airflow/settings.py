"""The settings the DAGs read from the worker's environment (``OTA_*``), each with its
default, checked where a wrong value would only show later."""

from __future__ import annotations

import os
from datetime import timedelta

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


def task_runner() -> str:
    """The runner named by OTA_TASK_RUNNER: ``docker`` (default) or ``local``."""
    runner = os.environ.get("OTA_TASK_RUNNER", "docker").strip().lower()
    if runner not in ("docker", "local"):
        raise ValueError(f"OTA_TASK_RUNNER must be docker or local, not {runner!r}")
    return runner


def pool() -> str:
    """The Airflow pool every step of both DAGs runs in (env ``OTA_POOL``, default
    ``ota_pipeline``, one slot): two DAG runs never write the warehouse at once."""
    return os.environ.get("OTA_POOL", "").strip() or "ota_pipeline"


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


def on_quarantine() -> str:
    """What a load that quarantined files does to the run (env ``OTA_ON_QUARANTINE``):
    ``fail`` (default) fails it at once, ``warn`` logs a warning and carries on with
    the files that loaded."""
    value = os.environ.get("OTA_ON_QUARANTINE", "fail").strip().lower() or "fail"
    if value not in ("fail", "warn"):
        raise ValueError(f"OTA_ON_QUARANTINE must be fail or warn, not {value!r}")
    return value
