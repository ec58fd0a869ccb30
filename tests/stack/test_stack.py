"""The compose stack for real: the sample served once through both DAGs, Airflow running
unprivileged in the Docker socket's group whatever its gid, no password anyone could
guess, and the trigger form used in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.parse

import pytest
from conftest import (
    CREDENTIALS,
    DOCKER,
    EXPECTED_ROWS,
    REPO,
    WINDOW,
    airflow_password,
    compose,
    mysql_query,
    served_rows,
)

AIRFLOW_UID = 50000
AIRFLOW_IMAGE = "ota-airflow:3.3.2"
CHROMIUM = os.environ.get("OTA_CHROMIUM", "/usr/bin/chromium")
# Lists Airflow's processes in its container: pid, real uid, supplementary groups, command.
LIST_AIRFLOW_PROCESSES = """
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
        command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
    except (OSError, ValueError):
        continue
    if "airflow" in command and int(pid) != os.getpid():
        found.append([int(pid), int(status["Uid"].split()[0]), status["Groups"].split(), command])
print(json.dumps(found))
"""


def test_the_sample_is_served_once(loaded):
    assert loaded["rows"] == EXPECTED_ROWS


def test_airflow_runs_as_its_user_in_the_docker_sockets_group(loaded):
    socket_gid = str(os.stat("/var/run/docker.sock").st_gid)
    out = compose("exec", "-T", "airflow", "python3", "-c", LIST_AIRFLOW_PROCESSES).stdout
    processes = json.loads(out)
    commands = " | ".join(p[3] for p in processes)
    assert "scheduler" in commands and "api_server" in commands, commands
    for pid, uid, groups, command in processes:
        assert uid == AIRFLOW_UID, (pid, uid, command)
        assert socket_gid in groups, (pid, groups, command)


@pytest.mark.parametrize("gid", [4242, None])
def test_the_entrypoint_joins_whatever_group_owns_the_socket(tmp_path, gid):
    """No gid is written anywhere: a host whose socket has another group gets that one;
    without a socket, Airflow's own groups only (never root's)."""
    mounts = []
    if gid is not None:
        path = tmp_path / "docker.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        os.chown(path, 0, gid)
        os.chmod(path, 0o660)
        mounts = ["-v", f"{path}:/var/run/docker.sock"]
    proc = subprocess.run(
        [DOCKER, "run", "--rm", *mounts, AIRFLOW_IMAGE, "bash", "-c", "id -u; id -G"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    uid, groups = proc.stdout.split("\n")[:2]
    assert uid == str(AIRFLOW_UID)
    assert set(groups.split()) == ({"0", str(gid)} if gid is not None else {"0"})


def test_no_password_is_a_default(loaded, airflow):
    # The passwords a guess would try are refused.
    with pytest.raises(urllib.error.HTTPError) as refused:
        airflow.login("admin", "admin")
    assert refused.value.code == 401
    for user, password in [("ota", "ota"), ("root", "root"), ("root", ""), ("root", "ota")]:
        proc = mysql_query("SELECT 1", user=user, password=password)
        assert proc.returncode != 0 and "Access denied" in proc.stderr, (user, password, proc.stdout)
    assert mysql_query("SELECT 1").returncode == 0

    # None is in a container's configuration, and Airflow cannot read MySQL's root one.
    generated = {airflow_password(), *credentials().values()}
    assert all(len(secret) >= 16 for secret in generated), "a generated password is short"
    containers = compose("ps", "-a", "-q").stdout.split()
    assert len(containers) >= 3
    for container in containers:
        config = json.loads(subprocess.run([DOCKER, "inspect", container], capture_output=True, text=True).stdout)
        env = "\n".join(config[0]["Config"]["Env"] or [])
        assert not any(secret in env for secret in generated), container
    denied = compose(
        "exec", "-T", "-u", str(AIRFLOW_UID), "airflow", "cat", f"{CREDENTIALS}/mysql-root-password", check=False
    )
    assert denied.returncode != 0 and "Permission denied" in denied.stderr

    # The one-shot that made them keeps them when it runs again (a restart, an up).
    before = credentials()
    compose("run", "--rm", "--no-deps", "credentials")
    assert credentials() == before

    # Both ports answer on this machine only.
    for service, port in [("airflow", "8080"), ("mysql", "3306")]:
        assert compose("port", service, port).stdout.strip().startswith("127.0.0.1:"), service


def test_credentials_left_empty_are_made_again():
    """A credentials volume whose password files exist but are empty (a first start cut
    short, a careless restore) gets new random passwords: an empty one is never kept.
    Run under a project of its own, so the stack under test keeps its passwords."""
    project = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'ota-pipeline')}-seeded"
    volume = f"{project}_credentials"
    image = os.environ.get("OTA_IMAGE", "ota-pipeline:latest")
    # Names of its own for everything the stack names from the environment, too.
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "OTA_NETWORK": project,
        "OTA_DATA_VOLUME": f"{project}-data",
        "OTA_SECRETS_VOLUME": f"{project}-secrets",
    }

    def in_volume(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DOCKER, "run", "--rm", "-u", "0", "-v", f"{volume}:/c", "--entrypoint", "sh", image, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
        )

    subprocess.run([DOCKER, "volume", "create", volume], check=True, capture_output=True, timeout=60)
    try:
        seeded = in_volume(": > /c/mysql-password; : > /c/mysql-root-password; echo '{}' > /c/connections.json")
        assert seeded.returncode == 0, seeded.stderr
        made = subprocess.run(
            [DOCKER, "compose", "run", "--rm", "--no-deps", "credentials"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        read = in_volume("cat /c/mysql-password; echo; cat /c/mysql-root-password; echo; cat /c/connections.json")
        assert read.returncode == 0, read.stderr
        user, root, connections = read.stdout.split("\n")[:3]
        assert len(user) >= 16 and len(root) >= 16 and user != root, read.stdout
        assert json.loads(connections) == {"mysql_default": f"mysql://ota:{user}@mysql:3306/ota"}
    finally:
        subprocess.run([DOCKER, "compose", "down", "-v"], cwd=REPO, env=env, capture_output=True, timeout=120)
        subprocess.run([DOCKER, "volume", "rm", "-f", volume], capture_output=True, timeout=60)


def credentials() -> dict[str, str]:
    """The generated MySQL passwords, as the credentials volume holds them."""
    out = compose(
        "exec", "-T", "mysql", "sh", "-c", f"cd {CREDENTIALS} && cat mysql-password && echo && cat mysql-root-password"
    ).stdout
    user, root = out.split("\n")[:2]
    return {"mysql-password": user, "mysql-root-password": root}


def test_the_trigger_form_in_a_browser(loaded, airflow, artifacts):
    """Logs in with the generated password, fills a window in the ota_pipeline trigger
    form, triggers it and waits for the run to end green: the window is loaded already,
    so it writes nothing."""
    from playwright.sync_api import expect, sync_playwright

    base = airflow.base
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(airflow_password())
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base}/")

        page.goto(f"{base}/dags/ota_pipeline")
        page.get_by_role("button", name="Trigger").first.click()
        form = page.get_by_role("dialog")
        sections = [form.get_by_role("button", name=name, exact=True) for name in ("Window", "Operations")]
        for section in sections:
            expect(section).to_be_visible()

        # Each param in its section, by its title. (The form's labels are not tied to
        # their inputs, so the inputs are found by the ids the form gives them.)
        sections[0].click()
        window = form.get_by_role("region", name="Window")
        for title, name in [("First day", "start_date"), ("Last day", "end_date")]:
            expect(window.get_by_text(title, exact=True)).to_be_visible()
            window.locator(f"#element_{name}").fill(WINDOW[name])
        form.screenshot(path=str(artifacts / "trigger-form.png"))

        sections[1].click()
        operations = form.get_by_role("region", name="Operations")
        labels = operations.locator("label")
        for title in ("Full refresh", "Only reconcile", "Dry run"):
            label = labels.filter(has_text=title)
            expect(label).to_be_visible()
            # A switch always holds a value: not marked required.
            assert label.inner_text().strip() == title
        texts = form.locator("label").all_inner_texts()
        assert not any("_" in text for text in texts if text), texts
        form.screenshot(path=str(artifacts / "trigger-form-operations.png"))

        form.get_by_role("button", name="Trigger", exact=True).click()
        page.wait_for_url("**/runs/**")
        run_id = urllib.parse.unquote(page.url.rsplit("/runs/", 1)[1])
        state = airflow.wait("ota_pipeline", run_id)
        page.reload()
        expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(artifacts / "finished-run.png"))
        browser.close()

    assert state == "success", airflow.task_states("ota_pipeline", run_id)
    conf = airflow.call("GET", f"/api/v2/dags/ota_pipeline/dagRuns/{run_id}")["conf"]
    assert {k: conf.get(k) for k in WINDOW} == WINDOW
    assert airflow.rows_written("ota_pipeline", run_id) == 0
    assert served_rows() == loaded["rows"]
    for shot in ("trigger-form.png", "trigger-form-operations.png", "finished-run.png"):
        assert (artifacts / shot).stat().st_size > 10_000, shot
