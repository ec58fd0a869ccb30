"""The compose stack as users run it, brought up by scripts/smoke.sh (make smoke), which
exports the project's names and ports and the Docker client before running these tests:
DOCKER, COMPOSE_PROJECT_NAME, OTA_AIRFLOW_PORT. Screenshots and other artifacts go to
OTA_TEST_ARTIFACTS (default ~/.cache/ota-pipeline/artifacts/stack)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "docker")
CREDENTIALS = "/run/ota-credentials"
# Rows MySQL serves after the historic load of the seeded sample (seed 42, 7 days of
# 20 000 rows), less the rejected and the duplicate rows.
EXPECTED_ROWS = 135632
WINDOW = {"start_date": "2024-01-03", "end_date": "2024-01-05"}


def compose(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    """`docker compose` on the stack under test (its project comes from the environment)."""
    proc = subprocess.run([DOCKER, "compose", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def airflow_password() -> str:
    """The admin password Airflow generated at the stack's first start, as `make
    password` prints it (its last line)."""
    proc = subprocess.run(
        ["make", "-s", "password", f"DOCKER={DOCKER}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def mysql_query(sql: str, user: str = "ota", password: str | None = None) -> subprocess.CompletedProcess:
    """A statement through the mysql client in the MySQL container, as `user` with
    `password` (default: the generated password of `ota`)."""
    secret = f'"$(cat {CREDENTIALS}/mysql-password)"' if password is None else f"'{password}'"
    return compose(
        "exec",
        "-T",
        "mysql",
        "sh",
        "-c",
        f"mysql -h127.0.0.1 -u{user} -p{secret} -N -e '{sql}'",
        check=False,
    )


def served_rows() -> int:
    proc = mysql_query("SELECT COUNT(*) FROM ota.ota_events")
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


class AirflowApi:
    """Airflow's REST API (v2) as admin."""

    def __init__(self, port: str, password: str):
        self.base = f"http://127.0.0.1:{port}"
        self.token = self.login("admin", password)

    def login(self, username: str, password: str) -> str:
        return self.call("POST", "/auth/token", {"username": username, "password": password}, auth=False)[
            "access_token"
        ]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def wait_for_dag(self, dag_id: str) -> None:
        """The DAG file is parsed a little after the server answers."""
        for _ in range(90):
            try:
                self.call("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError:
                time.sleep(2)
        raise AssertionError(f"{dag_id} never appeared")

    def trigger(self, dag_id: str, conf: dict) -> str:
        self.wait_for_dag(dag_id)
        body = {"logical_date": None, "conf": conf}
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def wait(self, dag_id: str, run_id: str, timeout: int = 1800) -> str:
        """Waits for the run to end; returns its state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise AssertionError(f"{dag_id} {run_id} still running after {timeout} s")

    def task_states(self, dag_id: str, run_id: str) -> list[tuple[str, str]]:
        tasks = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return sorted((t["task_id"], t["state"]) for t in tasks)

    def rows_written(self, dag_id: str, run_id: str) -> int:
        """export_mysql's summary (its XCom) says how many rows the run wrote."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/export_mysql/xcomEntries/return_value"
        value = self.call("GET", path)["value"]
        summary = json.loads(value) if isinstance(value, str) else value
        return summary["counts"]["rows_written"]

    def run(self, dag_id: str, conf: dict) -> str:
        """Triggers a run and waits for it; fails unless it succeeded."""
        run_id = self.trigger(dag_id, conf)
        state = self.wait(dag_id, run_id)
        assert state == "success", (dag_id, run_id, state, self.task_states(dag_id, run_id))
        return run_id


@pytest.fixture(scope="session")
def airflow() -> AirflowApi:
    return AirflowApi(os.environ["OTA_AIRFLOW_PORT"], airflow_password())


@pytest.fixture(scope="session")
def loaded(airflow) -> dict:
    """The sample loaded as a user would: ota_historic_load, then ota_pipeline over a
    window; returns the window's run id and what MySQL then serves."""
    airflow.run("ota_historic_load", {})
    run_id = airflow.run("ota_pipeline", WINDOW)
    return {"run_id": run_id, "rows": served_rows()}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("OTA_TEST_ARTIFACTS", Path.home() / ".cache/ota-pipeline/artifacts/stack"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
