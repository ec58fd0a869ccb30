"""Airflow DAGs of the OTA event pipeline: its shape. The helpers (settings, the window
macros, credentials, lineage, the operators) live in the package ``ota_airflow`` beside
this file; all logic lives in the binaries.

``ota_pipeline`` runs the four step binaries (stage-files, load-raw, dedup, export-mysql)
over a date window, daily or on demand; ``ota_historic_load`` splits the one large case
data file into daily files first and runs the same steps over the range it holds.
Nothing here does work at import time: settings are read from the environment, templates
render at run time. Runner (env ``OTA_TASK_RUNNER``): ``docker`` (default) runs each step
in the pipeline image with DockerOperator; ``local`` runs the same command line with
BashOperator, the binaries on PATH (tests, machines without Docker).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

try:  # Airflow 3
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2.10
    from airflow import DAG
    from airflow.models.param import Param
from airflow.timetables.interval import CronDataIntervalTimetable
from ota_airflow.operators import build_pipeline
from ota_airflow.window import MACROS

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
