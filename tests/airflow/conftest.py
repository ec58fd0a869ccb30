"""Airflow test settings: a throw-away AIRFLOW_HOME on SQLite, set before Airflow is
imported, and helpers to run the real `airflow` CLI and the pipeline binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/ota-pipeline/target")) / "debug"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="ota-airflow-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "OTA_TASK_RUNNER": os.environ.get("OTA_TASK_RUNNER", "local"),
    }
)
# The DAG files' helper package (ota_airflow), importable as Airflow makes it from the
# DAGs folder.
sys.path.insert(0, str(REPO / "dags"))
MYSQL_SERVER = os.environ.get("OTA_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")


def mysql_server() -> tuple[str, int]:
    """The test server's host and port, as OTA_TEST_MYSQL_URL names them."""
    from urllib.parse import urlsplit

    server = urlsplit(MYSQL_SERVER)
    return server.hostname or "127.0.0.1", server.port or 3306


def mariadb(*args: str) -> list[str]:
    """The mariadb client's command line, as root on the test server."""
    host, port = mysql_server()
    return ["mariadb", f"-h{host}", f"-P{port}", "-uroot", *args]


def airflow(*args: str, env: dict | None = None, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs the real airflow CLI of this virtualenv."""
    cli = Path(sys.executable).parent / "airflow"
    proc = subprocess.run(
        [str(cli), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"airflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture(scope="session", autouse=True)
def metadata_db():
    airflow("db", "migrate")
    # The pool the DAGs' steps share (OTA_POOL): one slot, one writer of the warehouse.
    airflow("pools", "set", "ota_pipeline", "1", "OTA pipeline steps: one at a time")
    yield
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


class Pipeline:
    """A lake, a warehouse and a fresh MySQL database, as OTA_* settings."""

    def __init__(self, root: Path):
        self.root = root
        self.lake = root / "lake"
        self.lake.mkdir(parents=True)
        self.db = f"ota_af_{uuid.uuid4().hex[:12]}"
        self.env = {
            "PATH": f"{TARGET}:{os.environ['PATH']}",
            "OTA_LAKE_URL": f"file://{self.lake}",
            "OTA_WAREHOUSE_URL": f"duckdb://{root / 'warehouse.duckdb'}",
            "OTA_MYSQL_URL": f"{MYSQL_SERVER}/{self.db}",
            "OTA_TASK_RUNNER": "local",
        }

    def bin(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(TARGET / name), *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{name} {args} exited {proc.returncode}\n{proc.stderr[-3000:]}")
        return proc

    def generate(self, start: str, days: int, rows: int) -> None:
        self.bin(
            "ota-gen",
            "--seed",
            "11",
            "--start",
            start,
            "--days",
            str(days),
            "--rows-per-day",
            str(rows),
            "--out",
            str(self.lake),
        )

    def reconcile(self) -> dict:
        """Warehouse vs MySQL per event date (exit 1 on drift)."""
        proc = self.bin("export-mysql", "--reconcile")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def drop(self) -> None:
        subprocess.run(mariadb("-e", f"DROP DATABASE IF EXISTS `{self.db}`"), check=False)


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    yield p
    p.drop()
