"""Credentials reach each step as files on a tmpfs, only those it uses, and are gone when
it ends; URLs with credentials never break the DAG's import or show in what it
serializes."""

from __future__ import annotations

import json
import os

from test_dags import load_dags

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
    from ota_airflow.lineage import lineage_datasets, without_auth

    assert without_auth("mysql://ota:Pa?ss@db:3306/ota") == "mysql://unparseable"
    assert without_auth("mysql://ota:p@ss@db:3306/ota") == "mysql://db:3306/ota"
    monkeypatch.setenv("OTA_MYSQL_URL", "mysql://ota:Pa?ss@db:3306/ota")
    namespace, _ = lineage_datasets()["mysql"]
    assert namespace == "mysql://unparseable"
