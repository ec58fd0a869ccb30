"""The helpers of the DAG files (the package ota_airflow beside them), on their own:
window macros, routing, connections turned into the binaries' settings, credential
files, and the exit code each runner reads from a finished step."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

from ota_airflow import operators
from ota_airflow.credentials import (
    CONNECTION_IDS,
    STEP_CREDENTIALS,
    cleared_settings,
    google_key,
    mysql_url,
    secret_files,
    step_secrets,
    uses_google,
)
from ota_airflow.window import backfill_bound, has_data, reference_date, route, switch, window_bound
from test_secrets import connections_env


def test_export_gets_the_window_only_when_dates_were_named():
    class TI:
        def __init__(self, status):
            self.status = status

        def xcom_pull(self, task_ids):
            assert task_ids == "stage_files"
            return json.dumps({"status": self.status, "window": {"start": "2024-01-01", "end": "2024-01-03"}})

    ti = TI("ok")
    assert backfill_bound(ti, {"start_date": None, "end_date": None}, "start") == ""
    assert backfill_bound(ti, {"start_date": "2024-01-01", "end_date": None}, "end") == "2024-01-03"
    assert window_bound(ti, "start") == "2024-01-01"

    class Run:
        def __init__(self, run_type):
            self.run_type = run_type

    no_dates = {"start_date": None, "end_date": None}
    # As the task SDK hands it over: an enum whose str() is "DagRunType.BACKFILL".
    from airflow.sdk.api.datamodels._generated import DagRunType

    assert backfill_bound(ti, no_dates, "end", Run(DagRunType.BACKFILL)) == "2024-01-03"
    assert backfill_bound(ti, no_dates, "end", Run(DagRunType.SCHEDULED)) == ""
    # A backfill run re-syncs its window; a scheduled one applies the feed.
    assert backfill_bound(ti, no_dates, "end", Run("backfill")) == "2024-01-03"
    assert backfill_bound(ti, no_dates, "end", Run("scheduled")) == ""
    assert has_data(ti) and not has_data(TI("no_data"))
    # What runs after stage-files: the load, nothing (no file), or only the reconcile.
    assert route(ti, {}) == ["load_raw"]
    assert route(TI("no_data"), {}) == []
    assert route(TI("no_data"), {"full_refresh": True}) == ["load_raw"]
    assert route(TI("no_data"), {"reconcile_only": True}) == ["reconcile"]
    assert route(ti, {"reconcile_only": True, "full_refresh": True}) == ["reconcile"]
    assert switch({"dry_run": True}, "dry_run") == "true"
    assert switch({}, "full_refresh") == "false"


def test_reference_date_follows_the_run_type():
    class Run:
        def __init__(self, run_type, run_after):
            self.run_type, self.run_after = run_type, run_after

    utc = dt.timezone.utc
    end = dt.datetime(2024, 1, 4, tzinfo=utc)
    assert reference_date(Run("scheduled", end), end) == "2024-01-03"
    assert reference_date(Run("backfill", end), end) == "2024-01-03"
    manual = dt.datetime(2024, 5, 6, 7, 8, tzinfo=utc)
    assert reference_date(Run("manual", manual), end) == "2024-05-06"
    assert reference_date(Run("manual", manual), None) == "2024-05-06"


class FakeConnection:
    def __init__(self, login=None, password=None, host=None, port=None, schema=None, extra=None):
        self.login, self.password, self.host, self.port, self.schema = login, password, host, port, schema
        self.extra_dejson = extra or {}


def test_connections_become_the_settings_the_binaries_take(tmp_path):
    conn = FakeConnection("ota", "p@ss:/w?rd", "db.internal", 3307, "ota", {"ssl_mode": "verify-ca"})
    assert mysql_url(conn) == "mysql://ota:p%40ss%3A%2Fw%3Frd@db.internal:3307/ota?ssl-mode=verify-ca"
    assert mysql_url(FakeConnection(host="h", schema="d")) == "mysql://h:3306/d"
    key = {"type": "service_account", "client_email": "a@b"}
    assert json.loads(google_key(FakeConnection(extra={"keyfile_dict": key}))) == key
    assert google_key(FakeConnection(extra={"extra__google_cloud_platform__keyfile_dict": json.dumps(key)}))
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(key))
    assert json.loads(google_key(FakeConnection(extra={"key_path": str(key_file)}))) == key
    # No key in the connection: the binaries use Application Default Credentials.
    assert google_key(FakeConnection(extra={"project": "p"})) is None
    # Keys go only to the real services, never to an emulator or an embedded backend.
    assert uses_google("gcs", {"OTA_LAKE_URL": "gs://b/p"})
    assert not uses_google("gcs", {"OTA_LAKE_URL": "gs://b/p", "OTA_GCS_ENDPOINT": "http://e"})
    assert not uses_google("gcs", {"OTA_LAKE_URL": "file:///lake"})
    assert uses_google("bq", {"OTA_WAREHOUSE_URL": "bigquery://p/d"})
    assert not uses_google("bq", {"OTA_WAREHOUSE_URL": "duckdb:///w.duckdb"})


def test_each_step_gets_only_the_credentials_it_uses(monkeypatch):
    for name, value in connections_env().items():
        monkeypatch.setenv(name, value)
    got = {step: sorted(step_secrets(step)) for step in STEP_CREDENTIALS}
    assert got == {
        "stage_files": ["bq", "gcs"],
        "load_raw": ["bq", "gcs"],
        "dedup": ["bq"],
        "export_mysql": ["bq", "mysql"],
        "reconcile": ["bq", "mysql"],
    }
    secrets = step_secrets("load_raw")
    assert "LAKE-KEY" in secrets["gcs"] and "WAREHOUSE-KEY" in secrets["bq"]
    assert step_secrets("export_mysql")["mysql"] == "mysql://ota:My-S3cret@db:3306/ota"
    # The two Google connections are two ids by default.
    assert CONNECTION_IDS["OTA_GCS_CONN_ID"] != CONNECTION_IDS["OTA_BQ_CONN_ID"]


def test_credential_files_are_private_and_removed_after_the_step(tmp_path):
    secrets = {"mysql": "mysql://ota:My-S3cret@db/ota", "bq": '{"private_key": "K"}'}
    with secret_files(secrets, str(tmp_path)) as files:
        assert set(files) == {"OTA_MYSQL_URL_FILE", "OTA_BQ_KEY_FILE"}
        path = files["OTA_MYSQL_URL_FILE"]
        assert open(path, encoding="utf-8").read() == secrets["mysql"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        directory = os.path.dirname(path)
    assert not os.path.exists(directory)
    # Removed when the step fails too.
    try:
        with secret_files(secrets, str(tmp_path), readable_by_others=True) as files:
            directory = os.path.dirname(files["OTA_BQ_KEY_FILE"])
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o711
            raise RuntimeError("the step failed")
    except RuntimeError:
        pass
    assert not os.path.exists(directory)
    assert os.listdir(tmp_path) == []
    # What the worker's environment would add is emptied: the other credentials, and the
    # direct forms of those given as files.
    cleared = cleared_settings("dedup", {"bq": "K"})
    assert cleared["OTA_MYSQL_URL"] == "" and cleared["OTA_MYSQL_URL_FILE"] == ""
    assert cleared["OTA_GCS_KEY_FILE"] == "" and cleared["OTA_BQ_KEY_JSON"] == ""
    assert "OTA_BQ_KEY_FILE" not in cleared


def test_the_local_runner_reads_the_exit_code_from_its_process():
    task = operators.local_operator()(task_id="step", bash_command="exit 3")
    assert task.step_exit_code() is None
    result = task.subprocess_hook.run_command(["bash", "-c", "exit 3"])
    assert result.exit_code == 3 and task.step_exit_code() == 3
