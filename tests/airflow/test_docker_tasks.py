"""The DAG in Docker mode on a real Docker engine (started, or installed, by
scripts/docker-engine.sh): each step runs as a container of the pipeline image, built here
from this workspace's binaries. Credentials reach a container only as files on the
secrets volume: no container shows one while it runs or fails, and none is left after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, TARGET, mariadb, mysql_server
from test_dags import dag_test

BINARIES = ["stage-files", "load-raw", "dedup", "export-mysql", "ota-gen"]


@pytest.fixture(scope="module")
def docker() -> str:
    """The docker client of an engine that answers, with the base image the pipeline
    image builds on (made locally where no registry is reachable)."""
    engine = subprocess.run([str(REPO / "scripts" / "docker-engine.sh")], capture_output=True, text=True, timeout=900)
    assert engine.returncode == 0, engine.stderr
    client = engine.stdout.strip().splitlines()[-1]
    subprocess.run([str(REPO / "scripts" / "stand-in-images.sh"), client], check=True, timeout=1800)
    return client


@pytest.fixture(scope="module")
def image(docker, tmp_path_factory):
    """The pipeline image with this workspace's (stripped) debug binaries."""
    context = tmp_path_factory.mktemp("image")
    (context / "prebuilt").mkdir()
    for binary in BINARIES:
        subprocess.run(["strip", "-o", str(context / "prebuilt" / binary), str(TARGET / binary)], check=True)
    tag = f"ota-pipeline:test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            docker,
            "build",
            "-q",
            "--network",
            "host",
            "--build-arg",
            "BINARIES=prebuilt",
            "-f",
            str(REPO / "docker" / "Dockerfile"),
            "-t",
            tag,
            str(context),
        ],
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    yield tag
    for container in containers_of(docker, tag):
        subprocess.run([docker, "rm", "-f", container], capture_output=True)
    subprocess.run([docker, "rmi", "-f", tag], capture_output=True)


@pytest.fixture
def secrets_volume(docker):
    """A Docker volume over a folder on a tmpfs: the worker writes a step's credential
    files there (OTA_SECRETS_DIR), its container mounts the volume (OTA_SECRETS_VOLUME),
    as the compose stack's Airflow and task containers do."""
    folder = Path(tempfile.mkdtemp(prefix="ota-secrets-", dir="/dev/shm"))
    os.chmod(folder, 0o711)
    name = f"ota-test-secrets-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            docker,
            "volume",
            "create",
            "--driver",
            "local",
            "--opt",
            "type=none",
            "--opt",
            "o=bind",
            "--opt",
            f"device={folder}",
            name,
        ],
        check=True,
        capture_output=True,
    )
    yield name, folder
    subprocess.run([docker, "volume", "rm", "-f", name], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def containers_of(docker: str, image: str) -> list[str]:
    out = subprocess.run(
        [docker, "ps", "-a", "-q", "--filter", f"ancestor={image}"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


class ContainerWatch:
    """Inspects every container of an image while it exists (each step's lives for a
    second or two), from a thread, until stopped."""

    def __init__(self, docker: str, image: str):
        self.docker, self.image = docker, image
        self.seen: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for container in containers_of(self.docker, self.image):
                if container not in self.seen:
                    inspected = subprocess.run(
                        [self.docker, "inspect", container], capture_output=True, text=True
                    ).stdout
                    if inspected.strip() not in ("", "[]"):
                        self.seen[container] = inspected
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_docker_tasks_see_credentials_only_as_files_and_keep_none(pipeline, docker, image, secrets_volume):
    volume, folder = secrets_volume
    password = "Dock-S3cret-9q"
    user = f"ota_dock_{pipeline.db[-8:]}"
    host, port = mysql_server()
    subprocess.run(
        mariadb(
            "-e",
            f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"GRANT ALL ON `{pipeline.db}`.* TO '{user}'@'127.0.0.1';",
        ),
        check=True,
    )
    try:
        pipeline.generate("2024-01-01", 2, 300)
        os.chmod(pipeline.root, 0o777)
        env = {k: v for k, v in pipeline.env.items() if k != "OTA_MYSQL_URL"}
        env.update(
            {
                "OTA_TASK_RUNNER": "docker",
                "OTA_IMAGE": image,
                "OTA_DOCKER_NETWORK": "host",
                "OTA_DATA_DIR": str(pipeline.root),
                "OTA_TASK_USER": f"{os.getuid()}:{os.getgid()}",
                "OTA_LAKE_URL": "file:///data/lake",
                "OTA_WAREHOUSE_URL": "duckdb:///data/warehouse.duckdb",
                "OTA_SECRETS_VOLUME": volume,
                "OTA_SECRETS_DIR": str(folder),
                "OTA_TASK_RETRIES": "0",
                "OTA_MYSQL_CONN_ID": "ota_docker_mysql",
                "AIRFLOW_CONN_OTA_DOCKER_MYSQL": json.dumps(
                    {"conn_type": "mysql", "host": host, "port": port, "login": user}
                    | {"password": password, "schema": pipeline.db}
                ),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        saved = dict(os.environ)
        os.environ.pop("OTA_MYSQL_URL", None)
        try:
            window = {"start_date": "2024-01-01", "end_date": "2024-01-02"}
            with ContainerWatch(docker, image) as watch:
                green = dag_test(pipeline, window, env=env)
            served = subprocess.run(
                mariadb("-N", "-e", f"SELECT COUNT(*) FROM `{pipeline.db}`.ota_events"),
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            assert int(served) > 500
            assert password not in green.stdout + green.stderr
            assert os.listdir(folder) == []

            # The export fails (its user lost its rights): its container shows no secret
            # either, and the credential files are gone.
            subprocess.run(mariadb("-e", f"REVOKE ALL ON `{pipeline.db}`.* FROM '{user}'@'127.0.0.1'"), check=True)
            pipeline.generate("2024-01-02", 1, 400)
            with ContainerWatch(docker, image) as failing:
                failed = dag_test(pipeline, window, env=env, check=False)
            assert failed.returncode != 0 and "export_mysql" in failed.stdout
            assert password not in failed.stdout + failed.stderr

            # A window stage-files refuses (exit 2 in its container) fails at once, not
            # retried: the exit code is read from Docker's result, not from a message.
            refused_env = {**env, "OTA_TASK_RETRIES": "2"}
            refused_window = {"start_date": "2024-01-03", "end_date": "2024-01-01"}
            refused = dag_test(pipeline, refused_window, env=refused_env, check=False)
            assert refused.returncode != 0
            assert "refused its input or settings" in refused.stdout + refused.stderr
        finally:
            os.environ.clear()
            os.environ.update(saved)
        inspected = {**watch.seen, **failing.seen}
        exports = [i for i in inspected.values() if '"export-mysql"' in i]
        assert exports, f"no export container was seen: {len(inspected)} containers"
        assert all("OTA_MYSQL_URL_FILE=/run/ota-secrets/" in i for i in exports)
        assert not [i for i in inspected.values() if password in i]
        assert containers_of(docker, image) == []
        assert os.listdir(folder) == []
    finally:
        subprocess.run(mariadb("-e", f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"), check=False)
