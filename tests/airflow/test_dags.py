"""The DAGs, checked with a real Airflow: parsing in both runner modes, the task graph,
params and schedule, the DockerOperator arguments, and `airflow dags test` runs of the
local runner end to end against the real MariaDB."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess

import pytest
from conftest import REPO, airflow, mariadb, mysql_server

DAG_FILE = REPO / "dags" / "ota_pipeline.py"


def load_dags(runner: str, extra_env: dict | None = None):
    from airflow.dag_processing.dagbag import DagBag

    saved = dict(os.environ)
    os.environ["OTA_TASK_RUNNER"] = runner
    os.environ.update(extra_env or {})
    try:
        bag = DagBag(dag_folder=str(DAG_FILE))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags


@pytest.mark.parametrize("runner", ["docker", "local"])
def test_both_dags_import_with_the_right_shape(runner):
    dags = load_dags(runner)
    assert set(dags) == {"ota_pipeline", "ota_historic_load"}
    for dag in dags.values():
        order = ["stage_files", "has_data", "load_raw", "dedup", "export_mysql"]
        assert set(dag.task_ids) == {*order, "reconcile"}
        for up, down in zip(order, order[1:]):
            assert dag.get_task(down).upstream_task_ids == {up}
        # reconcile follows the export, or has_data alone (reconcile_only); never a failure.
        reconcile = dag.get_task("reconcile")
        assert reconcile.upstream_task_ids == {"export_mysql", "has_data"}
        assert reconcile.trigger_rule == "none_failed_min_one_success"
        assert reconcile.retries == 0
        assert dag.max_active_runs == 1
        assert not dag.catchup
        for step in ["stage_files", "load_raw", "dedup", "export_mysql", "reconcile"]:
            task = dag.get_task(step)
            if step != "reconcile":
                assert task.retries >= 1 and task.retry_exponential_backoff
            assert task.execution_timeout == dt.timedelta(hours=3), step
            kind = "DockerOperator" if runner == "docker" else "BashOperator"
            assert kind in [cls.__name__ for cls in type(task).__mro__], step
    daily = dags["ota_pipeline"]
    assert type(daily.timetable).__name__ == "CronDataIntervalTimetable"
    assert set(daily.params.keys()) == {"start_date", "end_date", "full_refresh", "reconcile_only", "dry_run"}
    assert daily.params["start_date"] is None
    for name in ("full_refresh", "reconcile_only", "dry_run"):
        param = daily.params.get_param(name)
        assert param.value is False and param.schema["type"] == ["boolean", "null"], name
        assert param.schema["section"] == "Operations" and len(param.description) > 40, name
    assert daily.params.get_param("start_date").schema["section"] == "Window"
    # The trigger form shows each param by a title a person reads, not by its key.
    for dag in dags.values():
        for name in dag.params.keys():
            title = dag.params.get_param(name).schema.get("title", "")
            assert title and "_" not in title and title[0].isupper(), (dag.dag_id, name, title)
    assert "backfill create" in daily.doc_md
    assert type(dags["ota_historic_load"].timetable).__name__ == "NullTimetable"


def test_docker_tasks_mount_keys_read_only_and_hide_secrets():
    env = {
        "OTA_GCS_KEY_FILE": "/secrets/gcs.json",
        "OTA_BQ_KEY_FILE": "/secrets/bq.json",
        "OTA_MYSQL_URL": "mysql://ota:s3cret@mysql:3306/ota",
        "OTA_LAKE_URL": "gs://bucket/lake",
        "OTA_IMAGE": "ota-pipeline:test",
        "OTA_TASK_USER": "1000:1000",
    }
    dag = load_dags("docker", env)["ota_pipeline"]
    assert dag.get_task("load_raw").user == "1000:1000"
    task = dag.get_task("export_mysql")
    assert task.image == "ota-pipeline:test"
    assert task.command[0] == "export-mysql"
    assert "--start-date" in task.command and "--end-date" in task.command
    # BigQuery job ids derive from the run id: a retried task re-attaches to its jobs.
    for step in ("stage_files", "load_raw", "dedup", "export_mysql"):
        command = dag.get_task(step).command
        assert command[command.index("--run-id") + 1] == "{{ run_id }}", step
    # No credential in any environment a container shows (docker inspect), visible or
    # private: they reach the task as files when it runs (test_secrets.py).
    assert not task._private_environment
    assert "OTA_MYSQL_URL" not in task.environment
    assert "s3cret" not in json.dumps(task.environment)
    assert task.environment["OTA_LAKE_URL"] == "gs://bucket/lake"
    # Each step gets the keys it uses: the export no GCS key, the load both.
    assert "OTA_GCS_KEY_FILE" not in task.environment
    assert task.environment["OTA_BQ_KEY_FILE"] == "/run/secrets/bq-key.json"
    load = dag.get_task("load_raw")
    assert load.environment["OTA_GCS_KEY_FILE"] == "/run/secrets/gcs-key.json"
    assert load.environment["OTA_BQ_KEY_FILE"] == "/run/secrets/bq-key.json"
    # The trigger form's switches reach every step as settings, rendered per run.
    assert task.environment["OTA_FULL_REFRESH"] == "{{ ota_switch(params, 'full_refresh') }}"
    assert task.environment["OTA_DRY_RUN"] == "{{ ota_switch(params, 'dry_run') }}"
    reconcile = dag.get_task("reconcile")
    assert reconcile.command[0] == "export-mysql" and "--reconcile" in reconcile.command
    mounts = {m["Target"]: m for m in load.mounts}
    assert mounts["/run/secrets/gcs-key.json"]["Source"] == "/secrets/gcs.json"
    assert mounts["/run/secrets/bq-key.json"]["Source"] == "/secrets/bq.json"
    assert all(mounts[t]["ReadOnly"] for t in ["/run/secrets/gcs-key.json", "/run/secrets/bq-key.json"])
    assert "/run/secrets/gcs-key.json" not in {m["Target"] for m in task.mounts}
    assert task.auto_remove == "success"
    assert task.mount_tmp_dir is False
    assert task.xcom_all is False


def dag_test(pipeline, conf: dict | None, logical_date: str | None = None, check=True, env: dict | None = None):
    args = ["dags", "test", "ota_pipeline"]
    if logical_date:
        args.append(logical_date)
    if conf is not None:
        args += ["-c", json.dumps(conf)]
    return airflow(*args, env=env or pipeline.env, check=check)


def json_output(stdout: str):
    """The JSON a CLI command printed (Airflow may log warnings before it)."""
    lines = [line for line in stdout.splitlines() if line.startswith(("[", "{"))]
    return json.loads(lines[-1]) if lines else []


def task_states(pipeline) -> dict:
    runs = json_output(airflow("dags", "list-runs", "ota_pipeline", "-o", "json", env=pipeline.env).stdout)
    latest = max(runs, key=lambda r: r.get("start_date") or "")
    out = airflow(
        "tasks", "states-for-dag-run", "ota_pipeline", latest["run_id"], "-o", "json", env=pipeline.env
    ).stdout
    return {row["task_id"]: row["state"] for row in json_output(out)}


def test_dags_test_runs_the_pipeline_end_to_end(pipeline):
    pipeline.generate("2024-01-01", 3, 400)
    dag_test(pipeline, {"start_date": "2024-01-01", "end_date": "2024-01-03"})
    summary = pipeline.reconcile()
    assert summary["status"] == "ok"
    assert summary["counts"]["rows_read"] > 1000
    assert set(task_states(pipeline).values()) == {"success"}

    # No params: a manual run covers the 3 days ending today.
    today = dt.datetime.now(dt.timezone.utc).date()
    pipeline.generate((today - dt.timedelta(days=2)).isoformat(), 3, 300)
    before = summary["dates"]
    dag_test(pipeline, None)
    after = pipeline.reconcile()
    assert after["dates"] >= before + 3, after

    # A window without files ends green, the later tasks skipped.
    dag_test(pipeline, {"start_date": "2023-06-01", "end_date": "2023-06-03"})
    states = task_states(pipeline)
    assert states["stage_files"] == "success"
    assert {states[t] for t in ["load_raw", "dedup", "export_mysql"]} == {"skipped"}, states


def test_a_refused_window_fails_at_once_without_retries(pipeline):
    """end < start passes the form (each date is valid) but stage-files refuses it with
    exit 2: the task fails at once instead of being retried with back-off."""
    pipeline.generate("2024-01-01", 1, 100)
    env = {**pipeline.env, "OTA_TASK_RETRIES": "2", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    proc = dag_test(pipeline, {"start_date": "2024-01-03", "end_date": "2024-01-01"}, check=False, env=env)
    assert proc.returncode != 0
    logs = proc.stdout + proc.stderr
    assert "refused its input or settings" in logs, logs[-3000:]
    assert task_states(pipeline)["stage_files"] == "failed"


def test_a_dry_run_on_the_embedded_warehouse_fails_at_once(pipeline):
    """dry_run reaches every step as OTA_DRY_RUN; the embedded warehouse has no
    estimates to show, so stage-files refuses it (exit 2) and nothing is retried."""
    pipeline.generate("2024-01-01", 1, 100)
    env = {**pipeline.env, "OTA_TASK_RETRIES": "2", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    conf = {"start_date": "2024-01-01", "end_date": "2024-01-01", "dry_run": True}
    proc = dag_test(pipeline, conf, check=False, env=env)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--dry-run prints BigQuery statements" in logs, logs[-3000:]
    assert task_states(pipeline)["stage_files"] == "failed"


def mysql_exec(pipeline, sql: str) -> str:
    proc = subprocess.run(
        mariadb("-N", "-D", pipeline.db, "-e", sql),
        check=True,
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip()


def test_reconcile_fails_the_run_on_drift_and_a_full_refresh_repairs_it(pipeline):
    pipeline.generate("2024-01-01", 3, 300)
    window = {"start_date": "2024-01-01", "end_date": "2024-01-03"}
    dag_test(pipeline, window)
    states = task_states(pipeline)
    assert states["reconcile"] == "success" and set(states.values()) == {"success"}, states

    # Drift planted in MySQL: reconcile_only compares without loading, and fails the run.
    mysql_exec(pipeline, "DELETE FROM ota_events WHERE event_date = '2024-01-02' LIMIT 1")
    env = {**pipeline.env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    proc = dag_test(pipeline, {**window, "reconcile_only": True}, check=False, env=env)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "DRIFT" in logs and "2024-01-02" in logs, logs[-3000:]
    states = task_states(pipeline)
    assert states["reconcile"] == "failed", states
    assert {states[t] for t in ["load_raw", "dedup", "export_mysql"]} == {"skipped"}, states

    # A full refresh re-syncs every date, even from a run whose window holds no file
    # (a manual run without dates: the 3 days ending today); its reconcile then compares
    # every date and passes.
    dag_test(pipeline, {"full_refresh": True})
    states = task_states(pipeline)
    assert set(states.values()) == {"success"}, states
    assert pipeline.reconcile()["status"] == "ok"


def test_quarantined_files_fail_the_run_at_once_unless_set_to_warn(pipeline):
    pipeline.generate("2024-01-01", 3, 300)
    bad = pipeline.lake / "20240103_OTA.parquet"
    bad.write_bytes(bad.read_bytes()[:1000])
    window = {"start_date": "2024-01-01", "end_date": "2024-01-03"}
    env = {**pipeline.env, "OTA_TASK_RETRIES": "2", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    proc = dag_test(pipeline, window, check=False, env=env)
    logs = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "quarantined files (exit 3)" in logs and "20240103_OTA.parquet" in logs, logs[-3000:]
    states = task_states(pipeline)
    assert states["load_raw"] == "failed" and states["export_mysql"] == "upstream_failed", states

    # warn: the run carries on with the files that loaded, and MySQL matches them.
    dag_test(pipeline, window, env={**env, "OTA_ON_QUARANTINE": "warn"})
    states = task_states(pipeline)
    assert set(states.values()) == {"success"}, states
    summary = pipeline.reconcile()
    assert summary["status"] == "ok" and summary["counts"]["rows_read"] > 500, summary


def test_openlineage_events_carry_the_steps_datasets_and_counts(pipeline, tmp_path):
    """With the OpenLineage provider installed, each step's COMPLETE event names the
    datasets it read and wrote, with the rows its summary counts."""
    pipeline.generate("2024-01-01", 2, 300)
    events = tmp_path / "lineage.jsonl"
    transport = {"type": "file", "log_file_path": str(events), "append": True}
    env = {
        **pipeline.env,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "ota",
    }
    dag_test(pipeline, {"start_date": "2024-01-01", "end_date": "2024-01-02"}, env=env)
    complete = {
        event["job"]["name"]: event
        for event in map(json.loads, events.read_text().splitlines())
        if event["eventType"] == "COMPLETE"
    }

    load = complete["ota_pipeline.load_raw"]
    counts = load["run"]["facets"]["ota_step"]["counts"]
    assert counts["rows_read"] > 500 and load["run"]["facets"]["ota_step"]["status"] == "ok"
    [lake] = load["inputs"]
    assert (lake["namespace"], lake["name"]) == ("file", str(pipeline.lake))
    assert lake["inputFacets"]["inputStatistics"]["rowCount"] == counts["rows_read"]
    assert lake["inputFacets"]["inputStatistics"]["fileCount"] == 2
    [raw] = load["outputs"]
    assert (raw["namespace"], raw["name"]) == (pipeline.env["OTA_WAREHOUSE_URL"], "raw_events")
    assert raw["outputFacets"]["outputStatistics"]["rowCount"] == counts["rows_written"]

    export = complete["ota_pipeline.export_mysql"]
    [dedup] = export["inputs"]
    assert dedup["name"] == "dedup_events"
    [table] = export["outputs"]
    host, port = mysql_server()
    assert (table["namespace"], table["name"]) == (f"mysql://{host}:{port}", f"{pipeline.db}.ota_events")
    written = export["run"]["facets"]["ota_step"]["counts"]["rows_written"]
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == written > 500
    checked = {i["name"] for i in complete["ota_pipeline.reconcile"]["inputs"]}
    assert checked == {"dedup_events", f"{pipeline.db}.ota_events"}


def test_a_bad_param_fails_at_validation(pipeline):
    proc = dag_test(pipeline, {"start_date": "2024-13-01"}, check=False)
    assert proc.returncode != 0
    assert "2024-13-01" in proc.stdout + proc.stderr


def test_historic_load_splits_the_case_data_and_loads_its_range(pipeline):
    case_data = pipeline.root / "case_data.parquet.gzip"
    pipeline.bin(
        "ota-gen",
        "--seed",
        "5",
        "--start",
        "2024-03-01",
        "--days",
        "2",
        "--rows-per-day",
        "300",
        "--single",
        str(case_data),
    )
    airflow("dags", "test", "ota_historic_load", "-c", json.dumps({"source_file": str(case_data)}), env=pipeline.env)
    summary = pipeline.reconcile()
    assert summary["status"] == "ok"
    assert summary["counts"]["rows_read"] > 500
    assert sorted(p.name for p in pipeline.lake.glob("2024030*_OTA.parquet")) == [
        "20240301_OTA.parquet",
        "20240302_OTA.parquet",
    ]


def test_a_hostile_param_reaches_the_binary_as_one_literal_argument(pipeline):
    """The local runner never lets the shell parse a rendered value: a source_file
    carrying shell syntax runs nothing and fails on the literal (missing) path."""
    pwned = pipeline.root / "pwned"
    hostile = f"x'; touch {pwned}; echo '"
    dashed = "--reconcile"
    # Each value fails stage-files: no retries, so the failed run ends at once.
    env = {**pipeline.env, "OTA_TASK_RETRIES": "0", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"}
    output = []
    for value in (hostile, f'x" $(touch {pwned}) "', dashed):
        proc = airflow(
            "dags", "test", "ota_historic_load", "-c", json.dumps({"source_file": value}), env=env, check=False
        )
        assert proc.returncode != 0, value
        assert not pwned.exists(), value
        output.append(proc.stdout + proc.stderr)
    # `dags test` prints the task logs: stage-files named each value as the file it could
    # not read, and took `--reconcile` as a path, not a flag.
    logs = "\n".join(output)
    assert f"x'; touch {pwned}; echo '" in logs
    assert "--reconcile" in logs and "unexpected argument" not in logs


def test_mysql_credentials_come_from_an_airflow_connection(pipeline):
    """With no OTA_MYSQL_URL at all, the steps reach MySQL through the connection the
    DAG names, as a user with a password that shows in no log."""
    import subprocess

    password = "Conn-S3cret-7x"
    user = f"ota_conn_{pipeline.db[-8:]}"
    grants = (
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
        f"GRANT ALL ON `{pipeline.db}`.* TO '{user}'@'127.0.0.1';"
    )
    subprocess.run(mariadb("-e", grants), check=True)
    try:
        pipeline.generate("2024-01-01", 2, 300)
        env = {k: v for k, v in pipeline.env.items() if k != "OTA_MYSQL_URL"}
        env["OTA_MYSQL_CONN_ID"] = "ota_test_mysql"
        env["AIRFLOW_CONN_OTA_TEST_MYSQL"] = json.dumps(
            {
                "conn_type": "mysql",
                "host": mysql_server()[0],
                "port": mysql_server()[1],
                "login": user,
                "password": password,
                "schema": pipeline.db,
            }
        )
        saved = dict(os.environ)
        os.environ.pop("OTA_MYSQL_URL", None)
        try:
            proc = dag_test(
                pipeline,
                {"start_date": "2024-01-01", "end_date": "2024-01-02"},
                env={**env, "OTA_TASK_RETRIES": "0", "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"},
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert password not in proc.stdout + proc.stderr
        summary = pipeline.reconcile()
        assert summary["status"] == "ok"
        assert summary["counts"]["rows_read"] > 400
    finally:
        subprocess.run(mariadb("-e", f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"), check=False)


def test_steps_declare_assets_share_one_pool_and_call_the_failure_hook(tmp_path, monkeypatch):
    from airflow.serialization.serialized_objects import DagSerialization

    env = {
        "OTA_LAKE_URL": "gs://lake-bucket/daily",
        "OTA_WAREHOUSE_URL": "bigquery://proj/ds",
        "OTA_MYSQL_URL": "mysql://ota:s3cret@mysql:3306/ota",
    }
    dags = load_dags("docker", env)
    for dag in dags.values():
        serialized = json.dumps(DagSerialization.to_dict(dag))
        assert "s3cret" not in serialized
        for name in (
            "gs://lake-bucket/daily",
            "bigquery://proj/ds/raw_events",
            "bigquery://proj/ds/dedup_events",
            "mysql://mysql:3306/ota/ota_events",
        ):
            assert name in serialized, name
        outlets = {t: [a.uri for a in dag.get_task(t).outlets] for t in ("load_raw", "dedup", "export_mysql")}
        assert outlets == {
            "load_raw": ["bigquery://proj/ds/raw_events"],
            "dedup": ["bigquery://proj/ds/dedup_events"],
            "export_mysql": ["mysql://mysql:3306/ota/ota_events"],
        }
        assert [a.uri for a in dag.get_task("dedup").inlets] == ["bigquery://proj/ds/raw_events"]
        assert [a.uri for a in dag.get_task("stage_files").inlets] == ["gs://lake-bucket/daily"]
        steps = ("stage_files", "load_raw", "dedup", "export_mysql", "reconcile")
        assert {dag.get_task(t).pool for t in steps} == {"ota_pipeline"}

    # An embedded warehouse's URI keeps its empty host: duckdb:///path, not duckdb:/path.
    from ota_airflow.lineage import without_auth
    from ota_airflow.operators import on_failure

    assert without_auth("duckdb:///data/w.duckdb") == "duckdb:///data/w.duckdb"
    assert without_auth("mysql://u:p@db:3306/ota?ssl-mode=required") == "mysql://db:3306/ota"

    # The failure hook calls the function OTA_ON_FAILURE names.
    (tmp_path / "ota_notify.py").write_text("CALLS = []\ndef notify(context):\n    CALLS.append(context['task_id'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OTA_ON_FAILURE", "ota_notify:notify")
    on_failure({"task_id": "load_raw"})
    import ota_notify

    assert ota_notify.CALLS == ["load_raw"]


def compose_airflow_env() -> dict[str, str]:
    """The environment the compose stack's Airflow service gets: `.env` (its env_file),
    then its `environment`, with `${VAR:-default}` and `${PWD}` resolved as compose does
    from a clean clone (`.env` values, the repo as PWD)."""
    import re

    import yaml

    dotenv = {}
    for line in (REPO / ".env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            dotenv[key.strip()] = value.strip()
    known = {**dotenv, "PWD": str(REPO)}

    def interpolate(value: str) -> str:
        def one(match):
            name, default = match.group(1), match.group(3) or ""
            return known.get(name) or default

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", one, str(value))

    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["airflow"]
    env = dict(dotenv)
    env.update({key: interpolate(value) for key, value in service["environment"].items()})
    return env


def test_the_compose_stack_gives_every_task_mounts_that_exist():
    """From a clean clone, no DockerOperator of either DAG bind-mounts a host path that is
    missing (Docker refuses such a mount and the task fails before the step starts) or a
    volume the compose file does not make, and no credential reaches a task's visible
    environment."""
    import yaml

    env = compose_airflow_env()
    assert env["OTA_TASK_RUNNER"] == "docker"
    volumes = yaml.safe_load((REPO / "docker-compose.yml").read_text())["volumes"].values()
    named = {v["name"].split(":-")[-1].rstrip("}") for v in volumes if v and "name" in v}
    dags = load_dags("docker", env)
    mounts = 0
    for dag in dags.values():
        for step in ("stage_files", "load_raw", "dedup", "export_mysql", "reconcile"):
            task = dag.get_task(step)
            for mount in task.mounts:
                mounts += 1
                where = f"{dag.dag_id}.{step} mounts a missing {mount['Source']}"
                if mount["Type"] == "volume":
                    assert mount["Source"] in named, where
                else:
                    assert os.path.exists(mount["Source"]), where
            assert "password" not in json.dumps(task.environment).lower()
            assert not any("KEY_JSON" in k or k == "OTA_MYSQL_URL" for k in task.environment)
    assert mounts > 0, "the data dir is mounted"
