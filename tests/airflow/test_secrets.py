"""Credentials reach each step as files on a tmpfs, only those it uses, and are gone when
it ends; URLs with credentials never break the DAG's import or show in what it
serializes."""

from __future__ import annotations

import json
import os
import stat

from test_dags import dag_module, load_dags

MYSQL = {"conn_type": "mysql", "host": "db", "port": 3306, "login": "ota", "password": "My-S3cret", "schema": "ota"}
KEYS = {
    "gcs": {"type": "service_account", "client_email": "lake@p.iam", "private_key": "LAKE-KEY"},
    "bq": {"type": "service_account", "client_email": "wh@p.iam", "private_key": "WAREHOUSE-KEY"},
}


def connections_env() -> dict[str, str]:
    return {
        "AIRFLOW_CONN_MYSQL_DEFAULT": json.dumps(MYSQL),
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": json.dumps(KEYS["gcs"])}}
        ),
        "AIRFLOW_CONN_GOOGLE_CLOUD_BIGQUERY": json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": json.dumps(KEYS["bq"])}}
        ),
        "OTA_LAKE_URL": "gs://lake/daily",
        "OTA_WAREHOUSE_URL": "bigquery://p/d",
    }


def test_each_step_gets_only_the_credentials_it_uses(monkeypatch):
    for name, value in connections_env().items():
        monkeypatch.setenv(name, value)
    module = dag_module()
    got = {step: sorted(module.step_secrets(step)) for step in module.STEP_CREDENTIALS}
    assert got == {
        "stage_files": ["bq", "gcs"],
        "load_raw": ["bq", "gcs"],
        "dedup": ["bq"],
        "export_mysql": ["bq", "mysql"],
        "reconcile": ["bq", "mysql"],
    }
    secrets = module.step_secrets("load_raw")
    assert "LAKE-KEY" in secrets["gcs"] and "WAREHOUSE-KEY" in secrets["bq"]
    assert module.step_secrets("export_mysql")["mysql"] == "mysql://ota:My-S3cret@db:3306/ota"
    # The two Google connections are two ids by default.
    assert module.CONNECTION_IDS["OTA_GCS_CONN_ID"] != module.CONNECTION_IDS["OTA_BQ_CONN_ID"]


def test_credential_files_are_private_and_removed_after_the_step(tmp_path):
    module = dag_module()
    secrets = {"mysql": "mysql://ota:My-S3cret@db/ota", "bq": '{"private_key": "K"}'}
    with module.secret_files(secrets, str(tmp_path)) as files:
        assert set(files) == {"OTA_MYSQL_URL_FILE", "OTA_BQ_KEY_FILE"}
        path = files["OTA_MYSQL_URL_FILE"]
        assert open(path, encoding="utf-8").read() == secrets["mysql"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        directory = os.path.dirname(path)
    assert not os.path.exists(directory)
    # Removed when the step fails too.
    try:
        with module.secret_files(secrets, str(tmp_path), readable_by_others=True) as files:
            directory = os.path.dirname(files["OTA_BQ_KEY_FILE"])
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o711
            raise RuntimeError("the step failed")
    except RuntimeError:
        pass
    assert not os.path.exists(directory)
    assert os.listdir(tmp_path) == []
    # What the worker's environment would add is emptied: the other credentials, and the
    # direct forms of those given as files.
    cleared = module.cleared_settings("dedup", {"bq": "K"})
    assert cleared["OTA_MYSQL_URL"] == "" and cleared["OTA_MYSQL_URL_FILE"] == ""
    assert cleared["OTA_GCS_KEY_FILE"] == "" and cleared["OTA_BQ_KEY_JSON"] == ""
    assert "OTA_BQ_KEY_FILE" not in cleared


def test_a_docker_task_gets_its_credentials_as_files_on_the_secrets_volume(monkeypatch, tmp_path):
    """The Docker task's environment names files on the secrets volume, never a secret;
    the files exist while the container runs and are gone after, failed or not."""
    for name, value in connections_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTA_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("OTA_SECRETS_VOLUME", "ota-secrets")
    volume_env = {"OTA_SECRETS_DIR": str(tmp_path), "OTA_SECRETS_VOLUME": "ota-secrets"}
    dag = load_dags("docker", {**connections_env(), **volume_env})["ota_pipeline"]
    task = dag.get_task("export_mysql")
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}

    def fake_execute(operator, context):
        seen["environment"] = dict(operator.environment)
        seen["mounts"] = list(operator.mounts)
        seen["private"] = dict(operator._private_environment or {})
        name = operator.environment["OTA_MYSQL_URL_FILE"].split("/")[-2:]
        seen["content"] = (tmp_path / name[0] / name[1]).read_text()
        return '{"step": "export-mysql", "status": "ok"}'

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    task.execute_step({})
    env = seen["environment"]
    assert env["OTA_MYSQL_URL_FILE"].startswith("/run/ota-secrets/ota-")
    assert env["OTA_BQ_KEY_FILE"].startswith("/run/ota-secrets/ota-")
    assert "OTA_GCS_KEY_FILE" not in env
    assert "My-S3cret" not in json.dumps(env) and not seen["private"]
    assert seen["content"] == "mysql://ota:My-S3cret@db:3306/ota"
    volume = [m for m in seen["mounts"] if m["Target"] == "/run/ota-secrets"]
    assert volume and volume[0]["Source"] == "ota-secrets" and volume[0]["ReadOnly"]
    assert os.listdir(tmp_path) == [], "the files are gone once the step ended"


def test_urls_with_unencoded_reserved_characters_neither_break_the_dags_nor_show(monkeypatch):
    from airflow.serialization.serialized_objects import DagSerialization

    for url in (
        "mysql://ota:Pa?ss@db:3306/ota",
        "mysql://ota:Pa#ss@db:3306/ota",
        "mysql://ota:Pa/ss@db:3306/ota",
        "mysql://ota:12/ss@db:3306/ota",
        "mysql://ota:Pass@db:notaport/ota",
    ):
        for runner in ("docker", "local"):
            dags = load_dags(runner, {"OTA_MYSQL_URL": url})
            for dag in dags.values():
                serialized = json.dumps(DagSerialization.to_dict(dag))
                for fragment in ("Pa?ss", "Pass", "Pa#", "ss@", "12/ss"):
                    assert fragment not in serialized, (url, fragment)
    module = dag_module()
    assert module.without_auth("mysql://ota:Pa?ss@db:3306/ota") == "mysql://unparseable"
    assert module.without_auth("mysql://ota:p@ss@db:3306/ota") == "mysql://db:3306/ota"
    monkeypatch.setenv("OTA_MYSQL_URL", "mysql://ota:Pa?ss@db:3306/ota")
    namespace, _ = module.lineage_datasets()["mysql"]
    assert namespace == "mysql://unparseable"
