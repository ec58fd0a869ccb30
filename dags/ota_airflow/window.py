"""What a run works on: the window its steps get (macros rendered per run), the route
after stage-files, and each step's command line, the same for both runners."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

STEPS = ("stage_files", "load_raw", "dedup", "export_mysql", "reconcile")
BINARIES = {
    "stage_files": "stage-files",
    "load_raw": "load-raw",
    "dedup": "dedup",
    "export_mysql": "export-mysql",
    "reconcile": "export-mysql",
}


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
