"""A backfill through a real scheduler: `airflow backfill create` over 3 days, with the
execution API server and the scheduler running in the background, gives the same MySQL
table as one run over the whole range."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import Pipeline, airflow, mariadb
from test_dags import json_output

CHECKSUM_SQL = (
    "SELECT COUNT(*), COALESCE(SUM(CAST(CONV(HEX(LEFT(row_hash, 8)), 16, 10) AS UNSIGNED)), 0), "
    "COALESCE(SUM(CAST(CONV(HEX(LEFT(event_key, 8)), 16, 10) AS UNSIGNED)), 0) FROM {db}.ota_events"
)


def table_checksum(pipeline: Pipeline) -> str:
    out = subprocess.run(
        mariadb("-N", "-e", CHECKSUM_SQL.format(db=pipeline.db)),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    cli = Path(sys.executable).parent / "airflow"
    return subprocess.Popen(
        [str(cli), *args],
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_until(what: str, check, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def scheduler_running(env: dict, logs: Path, port: int):
    """The execution API server on ``port`` and a scheduler, running until the block ends;
    their logs in ``logs``."""
    api = start(["api-server", "--apps", "execution", "--port", str(port)], env, logs / "api.log")
    scheduler = None
    try:

        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/execution/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until("the execution API", healthy, timeout=120)
        scheduler = start(["scheduler"], env, logs / "scheduler.log")
        yield
    finally:
        if scheduler is not None:
            stop(scheduler)
        stop(api)


def plant_drift(pipeline: Pipeline) -> None:
    """MySQL drifts from the warehouse: a row lost on 2024-01-02, one changed by hand on
    2024-01-01, and a row the warehouse never held on 2024-01-02."""
    sql = (
        f"USE `{pipeline.db}`; "
        "DELETE FROM ota_events WHERE event_date = '2024-01-02' ORDER BY event_key LIMIT 1; "
        "UPDATE ota_events SET row_hash = UNHEX(MD5('by hand')) WHERE event_date = '2024-01-01' "
        "ORDER BY event_key LIMIT 1; "
        "INSERT INTO ota_events (event_key, event_date, request_id, row_hash, changed_at) "
        "VALUES (UNHEX(MD5('bogus')), '2024-01-02', 'bogus', UNHEX(MD5('x')), NOW(6));"
    )
    subprocess.run(mariadb("-e", sql), check=True)


def test_backfill_of_three_days_equals_one_run_over_the_range_and_repairs_drift(pipeline, tmp_path_factory):
    pipeline.generate("2023-12-30", 5, 300)
    # Loaded once already, then MySQL drifts: the backfill must repair it.
    window = ["--start-date", "2023-12-30", "--end-date", "2024-01-03"]
    for step in ["stage-files", "load-raw", "dedup", "export-mysql"]:
        pipeline.bin(step, *window)
    plant_drift(pipeline)
    drifted = pipeline.bin("export-mysql", "--reconcile", check=False)
    assert drifted.returncode == 1, drifted.stdout
    port = free_port()
    env = {
        **pipeline.env,
        # Only the backfill's runs: no scheduled run of the latest interval.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
    }
    airflow("dags", "reserialize", env=env)
    airflow("dags", "unpause", "ota_pipeline", env=env)
    airflow(
        "backfill",
        "create",
        "--dag-id",
        "ota_pipeline",
        "--from-date",
        "2024-01-01",
        "--to-date",
        "2024-01-03",
        "--max-active-runs",
        "1",
        env=env,
    )
    logs = tmp_path_factory.mktemp("airflow-logs")
    with scheduler_running(env, logs, port):

        def backfill_runs():
            runs = json_output(airflow("dags", "list-runs", "ota_pipeline", "-o", "json", env=env).stdout)
            runs = [r for r in runs if str(r.get("run_id", "")).startswith("backfill")]
            failed = [r for r in runs if r.get("state") == "failed"]
            assert not failed, f"backfill runs failed: {failed}\n{(logs / 'scheduler.log').read_text()[-3000:]}"
            return runs if len(runs) == 3 and all(r.get("state") == "success" for r in runs) else None

        runs = wait_until("3 successful backfill runs", backfill_runs, timeout=420, every=5)
        assert len(runs) == 3

    single = Pipeline(tmp_path_factory.mktemp("single"))
    try:
        single.generate("2023-12-30", 5, 300)
        window = ["--start-date", "2023-12-30", "--end-date", "2024-01-03"]
        for step in ["stage-files", "load-raw", "dedup", "export-mysql"]:
            single.bin(step, *window)
        assert table_checksum(pipeline) == table_checksum(single)
        assert int(table_checksum(single).split()[0]) > 1000
    finally:
        single.drop()
