"""What can be checked of the image and compose files without a Docker engine."""

from __future__ import annotations

import yaml
from conftest import REPO


def test_compose_file_wires_airflow_mysql_and_the_image():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"airflow", "mysql", "seed"} <= set(services)
    # Plain `docker compose up` builds what it starts.
    assert services["seed"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["airflow"]["build"]["dockerfile"] == "airflow.Dockerfile"
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in services["airflow"]["environment"]
    # The official images by default; stand-ins only when named.
    assert services["mysql"]["image"] == "${OTA_MYSQL_IMAGE:-mysql:8.4}"
    assert "apache/airflow:3.3.2" in services["airflow"]["build"]["args"]["AIRFLOW_BASE_IMAGE"]
    assert "--local-infile=1" in services["mysql"]["command"]
    airflow = services["airflow"]
    assert airflow["environment"]["OTA_TASK_RUNNER"] == "docker"
    volumes = " ".join(airflow["volumes"])
    assert "./dags:" in volumes and "ota-data:/data" in volumes and "./service_accounts:" in volumes
    assert "PWD" not in (REPO / "docker-compose.yml").read_text()
    assert airflow["environment"]["OTA_DATA_VOLUME"] == compose["volumes"]["ota-data"]["name"]
    assert airflow["environment"]["OTA_DOCKER_NETWORK"] == compose["networks"]["default"]["name"]
    for service in ("airflow", "mysql"):
        assert all(p.startswith("127.0.0.1:") for p in services[service]["ports"]), service
        assert services[service]["restart"] == "unless-stopped" and "healthcheck" in services[service]
    assert airflow["depends_on"]["mysql"]["condition"] == "service_healthy"
    # Sample data before Airflow starts: the seed writes the case data the historic load reads.
    assert airflow["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    seed = " ".join(services["seed"]["command"])
    assert "ota-gen" in seed and "/data/case_data.parquet.gzip" in seed
    assert airflow["environment"]["OTA_CASE_DATA"] == "/data/case_data.parquet.gzip"
    # No password is written here or in .env: Airflow generates admin's at its first
    # start, the credentials one-shot MySQL's (read from files, and by Airflow through its
    # secrets backend); no gid either (the entrypoint joins the socket's group).
    assert airflow["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    for text in ((REPO / "docker-compose.yml").read_text(), (REPO / ".env").read_text()):
        assert "PASSWORD:" not in text and "PASSWORD=" not in text and "mysql://ota:ota@" not in text
    mysql = services["mysql"]
    assert mysql["environment"]["MYSQL_PASSWORD_FILE"].startswith("/run/ota-credentials/")
    assert mysql["environment"]["MYSQL_ROOT_PASSWORD_FILE"].startswith("/run/ota-credentials/")
    assert mysql["depends_on"]["credentials"]["condition"] == "service_completed_successfully"
    assert "connections.json" in airflow["environment"]["AIRFLOW__SECRETS__BACKEND_KWARGS"]
    assert "group_add" not in airflow


def test_dockerfile_builds_release_binaries_into_a_slim_non_root_image():
    text = (REPO / "docker" / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert "slim" in stages[-1]
    # The full release build is the default; prebuilt binaries are a choice (make smoke).
    assert "ARG BINARIES=build" in text and "FROM ${BINARIES} AS binaries" in stages
    assert "cargo build --release --locked" in text
    for binary in ["stage-files", "load-raw", "dedup", "export-mysql"]:
        assert f"target/release/{binary}" in text
    assert "ca-certificates" in text
    assert "\nUSER 10001" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target/" in ignored and "service_accounts/" in ignored and "data/" in ignored


def test_service_accounts_hold_no_keys():
    folder = REPO / "service_accounts"
    assert not list(folder.glob("*.json")) or all("private_key" not in p.read_text() for p in folder.glob("*.json"))
    assert "/service_accounts/*.json" in (REPO / ".gitignore").read_text()
