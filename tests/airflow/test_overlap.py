"""Two DAG runs active at once, through a real scheduler: an ``ota_historic_load`` run
and an ``ota_pipeline`` run over other days, their steps taking turns in the shared
pool. Each loads the files it staged, neither's reconcile sees the other's changes as
drift, both end green, and MySQL equals one clean run over all the days."""

from __future__ import annotations

import json
import uuid

from conftest import Pipeline, airflow
from test_backfill import free_port, scheduler_running, table_checksum, wait_until
from test_dags import json_output

CASE_DAYS = ("2024-01-01", 3)
DAILY_DAYS = ("2024-01-04", 2)


def make_data(pipeline: Pipeline) -> str:
    """The case data of the historic days, and daily files of the later ones."""
    case_data = pipeline.root / "case_data.parquet.gzip"
    pipeline.bin(
        "ota-gen",
        "--seed",
        "5",
        "--start",
        CASE_DAYS[0],
        "--days",
        str(CASE_DAYS[1]),
        "--rows-per-day",
        "300",
        "--single",
        str(case_data),
    )
    pipeline.generate(DAILY_DAYS[0], DAILY_DAYS[1], 300)
    return str(case_data)


def runs_of(dag_id: str, env: dict) -> list[dict]:
    return json_output(airflow("dags", "list-runs", dag_id, "-o", "json", env=env).stdout)


def test_a_historic_load_and_a_daily_run_at_once_end_green_and_equal_one_clean_run(pipeline, tmp_path_factory):
    case_data = make_data(pipeline)
    port = free_port()
    env = {
        **pipeline.env,
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "OTA_TASK_RETRIES": "0",
    }
    airflow("dags", "reserialize", env=env)
    for dag_id in ("ota_historic_load", "ota_pipeline"):
        airflow("dags", "unpause", dag_id, env=env)
    tag = uuid.uuid4().hex[:8]
    mine = {"ota_historic_load": f"overlap_historic_{tag}", "ota_pipeline": f"overlap_daily_{tag}"}
    confs = {
        "ota_historic_load": {"source_file": case_data},
        "ota_pipeline": {"start_date": "2024-01-04", "end_date": "2024-01-05"},
    }
    for dag_id, run_id in mine.items():
        airflow("dags", "trigger", dag_id, "--run-id", run_id, "-c", json.dumps(confs[dag_id]), env=env)
    logs = tmp_path_factory.mktemp("overlap-logs")
    with scheduler_running(env, logs, port):

        def both_done():
            runs = [r for dag_id in mine for r in runs_of(dag_id, env) if r.get("run_id") in mine.values()]
            failed = [r for r in runs if r.get("state") == "failed"]
            assert not failed, f"runs failed: {failed}\n{(logs / 'scheduler.log').read_text()[-4000:]}"
            return runs if len(runs) == 2 and all(r.get("state") == "success" for r in runs) else None

        runs = wait_until("both runs to succeed", both_done, timeout=600, every=5)
        assert {r["dag_id"] for r in runs} == set(mine)

    summary = pipeline.reconcile()
    assert summary["status"] == "ok", summary

    clean = Pipeline(tmp_path_factory.mktemp("clean"))
    try:
        clean_case = make_data(clean)
        clean.bin("stage-files", f"--from={clean_case}")
        # The split's days (its late events land a day or two before the first), then
        # the daily files.
        window = ["--start-date", "2023-12-01", "--end-date", "2024-01-05"]
        for step in ["stage-files", "load-raw", "dedup", "export-mysql"]:
            clean.bin(step, *window)
        assert table_checksum(pipeline) == table_checksum(clean)
        assert int(table_checksum(clean).split()[0]) > 1000
    finally:
        clean.drop()
