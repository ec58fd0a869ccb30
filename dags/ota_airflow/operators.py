"""The steps as operators of the configured runner (DockerOperator or BashOperator):
exit codes read as the binaries mean them, credentials added when a task runs, lineage
from each step's summary, and the pipeline's shape."""

from __future__ import annotations

import functools
import json
import os
from datetime import timedelta

from .credentials import (
    KEY_FILES,
    SECRETS_TARGET,
    STEP_CREDENTIALS,
    cleared_settings,
    local_secrets_root,
    secret_files,
    step_secrets,
)
from .lineage import LINEAGE, step_assets, step_lineage
from .settings import (
    OPERATION_SETTINGS,
    PLAIN_SETTINGS,
    on_quarantine,
    pool,
    task_retries,
    task_runner,
    task_timeout,
)
from .window import argv_env, route, step_command

# The binaries' exit code for input or settings the user must fix (docs/design.md: 2).
USER_ERROR_EXIT = 2
# The exit code of a step that did what it could and held the rest back: load-raw
# quarantined files, export-mysql kept dates it would not delete.
PARTIAL_EXIT = 3


def fail_exception() -> type[Exception]:
    """The exception that fails a task without its retries: the Task SDK's, or on an
    Airflow without it, the one of ``airflow.exceptions``."""
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:
        from airflow.exceptions import AirflowFailException
    return AirflowFailException


def run_step(operator, context):
    """Runs the step; a refusal of its input or settings (exit 2) fails the task at once,
    without the retries meant for faults: a retry would be refused the same way. So does
    a step that held part of its work back (exit 3: quarantined files, dates an export
    would not delete), unless ``OTA_ON_QUARANTINE=warn``."""
    from airflow.exceptions import AirflowException

    AirflowFailException = fail_exception()
    try:
        return operator.execute_step(context)
    except AirflowFailException:
        raise
    except AirflowException as error:
        code = operator.step_exit_code()
        if code == USER_ERROR_EXIT:
            raise AirflowFailException(
                f"{operator.task_id} refused its input or settings (exit 2, see the log above); "
                "not retried: fix the params or settings and trigger again"
            ) from error
        if code == PARTIAL_EXIT:
            held = "quarantined files" if operator.task_id == "load_raw" else "held dates"
            message = (
                f"{operator.task_id} {held} (exit 3): their names and reasons are in "
                "files_quarantined or held_dates of the summary above; the rest was done"
            )
            if on_quarantine() == "warn":
                operator.log.warning("%s; carrying on (OTA_ON_QUARANTINE=warn)", message)
                return None
            raise AirflowFailException(
                f"{message}. Not retried: re-deliver or fix the files, or loosen the limits, "
                "then clear the task (or set OTA_ON_QUARANTINE=warn to carry on without them)"
            ) from error
        raise


def on_failure(context) -> None:
    """Failure hook: calls the ``module:function`` that ``OTA_ON_FAILURE`` names (a
    notifier of your own, say) with the task's context; nothing when unset."""
    target = os.environ.get("OTA_ON_FAILURE", "").strip()
    if not target:
        return
    import importlib

    module_name, _, function = target.partition(":")
    getattr(importlib.import_module(module_name), function or "notify")(context)


class StepOperator:
    """What the operators of both runners add to the provider's: the step's exit codes
    read as the binaries mean them (run_step), its summary kept, and OpenLineage facets
    from that summary. Subclasses say where the credentials go (``execute_step``) and
    where the exit code of a failed step is read (``step_exit_code``)."""

    def execute(self, context):
        result = run_step(self, context)
        try:
            self.ota_summary = json.loads(result) if isinstance(result, str) else result
        except ValueError:
            self.ota_summary = None
        return result

    def step_exit_code(self) -> int | None:
        raise NotImplementedError

    def get_openlineage_facets_on_complete(self, task_instance):
        return step_lineage(self.task_id, getattr(self, "ota_summary", None))


@functools.cache
def local_operator():
    """BashOperator that adds the step's credentials to its process environment when it
    runs (after templates were rendered and recorded, so they never show in the UI)."""
    try:
        from airflow.providers.standard.operators.bash import BashOperator
    except ImportError:  # Airflow 2.10 without the standard provider
        from airflow.operators.bash import BashOperator

    class StepBashOperator(StepOperator, BashOperator):
        def execute_step(self, context):
            secrets = step_secrets(self.task_id)
            with secret_files(secrets, local_secrets_root()) as files:
                self.env = {**(self.env or {}), **cleared_settings(self.task_id, secrets), **files}
                return BashOperator.execute(self, context)

        def step_exit_code(self):
            process = self.subprocess_hook.sub_process
            return process.returncode if process is not None else None

    return StepBashOperator


@functools.cache
def docker_operator():
    """DockerOperator that adds the step's credentials to its private environment when it
    runs (never a template field, never shown in the UI)."""
    from airflow.providers.docker.operators.docker import DockerOperator

    class StepDockerOperator(StepOperator, DockerOperator):
        def execute_step(self, context):
            from docker.types import Mount

            self.record_exit_code()
            secrets = step_secrets(self.task_id)
            if not secrets:
                return DockerOperator.execute(self, context)
            root, volume = os.environ.get("OTA_SECRETS_DIR"), os.environ.get("OTA_SECRETS_VOLUME")
            if not (root and volume and os.path.isdir(root)):
                raise fail_exception()(
                    "credentials reach Docker tasks as files on a tmpfs volume, never as "
                    "environment: set OTA_SECRETS_VOLUME (the Docker volume) and "
                    "OTA_SECRETS_DIR (where this worker mounts it); the compose stack does"
                )
            with secret_files(secrets, root, readable_by_others=True) as files:
                inside = {
                    variable: f"{SECRETS_TARGET}/{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"
                    for variable, path in files.items()
                }
                self.environment = {**(self.environment or {}), **inside}
                self.mounts = [*self.mounts, Mount(source=volume, target=SECRETS_TARGET, type="volume", read_only=True)]
                return DockerOperator.execute(self, context)

        def record_exit_code(self):
            """Keeps the container's exit status as Docker's wait call returns it (the
            provider removes a failed container, so it cannot be inspected after)."""
            self.ota_exit_code = None
            client = self.cli
            wait = client.wait

            def wait_and_record(*args, **kwargs):
                result = wait(*args, **kwargs)
                self.ota_exit_code = result.get("StatusCode")
                return result

            client.wait = wait_and_record

        def step_exit_code(self):
            return getattr(self, "ota_exit_code", None)

    return StepDockerOperator


def make_task(dag, step: str, extra: list[str] | None = None):
    """One step as an operator of the configured runner."""
    command = step_command(step, extra)
    assets = step_assets()
    inlets, outlets = LINEAGE[step]
    # reconcile: drift is not a fault a retry could mend, so it fails the run at once.
    retries = 0 if step == "reconcile" else task_retries()
    common = {
        "task_id": step,
        "dag": dag,
        "pool": pool(),
        "inlets": [assets[a] for a in inlets],
        "outlets": [assets[a] for a in outlets],
        "on_failure_callback": on_failure,
        "execution_timeout": task_timeout(),
        "retries": retries,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    }
    if task_runner() == "local":
        # The summary is the last line of stdout, so it becomes the XCom.
        line, env = argv_env(command)
        env.update(OPERATION_SETTINGS)
        return local_operator()(bash_command=line, env=env, append_env=True, **common)

    from docker.types import Mount

    environment = {k: os.environ[k] for k in PLAIN_SETTINGS if os.environ.get(k)}
    environment.update(OPERATION_SETTINGS)
    mounts = []
    for credential, (variable, target) in KEY_FILES.items():
        host_path = os.environ.get(variable)
        if host_path and credential in STEP_CREDENTIALS[step]:
            mounts.append(Mount(source=host_path, target=target, type="bind", read_only=True))
            environment[variable] = target
    # /data of the task: a Docker volume (OTA_DATA_VOLUME, the compose stack's) or a host
    # folder (OTA_DATA_DIR, an absolute path on the Docker host).
    data_volume, data_dir = os.environ.get("OTA_DATA_VOLUME"), os.environ.get("OTA_DATA_DIR")
    if data_volume:
        mounts.append(Mount(source=data_volume, target="/data", type="volume"))
    elif data_dir:
        mounts.append(Mount(source=data_dir, target="/data", type="bind"))
    return docker_operator()(
        image=os.environ.get("OTA_IMAGE", "ota-pipeline:latest"),
        command=command,
        environment=environment,
        mounts=mounts,
        # uid:gid of the container (OTA_TASK_USER), so files it writes in a host folder
        # belong to that folder's owner; unset: the image's user.
        user=os.environ.get("OTA_TASK_USER", "").strip() or None,
        auto_remove="success",
        docker_url=os.environ.get("OTA_DOCKER_URL", "unix://var/run/docker.sock"),
        network_mode=os.environ.get("OTA_DOCKER_NETWORK", "bridge"),
        mount_tmp_dir=False,
        xcom_all=False,
        **common,
    )


def build_pipeline(dag, first_extra: list[str] | None = None) -> None:
    """stage_files >> has_data >> load_raw >> dedup >> export_mysql >> reconcile, with
    has_data also leading straight to reconcile (``reconcile_only``)."""
    try:
        from airflow.providers.standard.operators.python import BranchPythonOperator
    except ImportError:  # Airflow 2.10 without the standard provider
        from airflow.operators.python import BranchPythonOperator

    stage = make_task(dag, "stage_files", first_extra)
    gate = BranchPythonOperator(
        task_id="has_data", python_callable=route, execution_timeout=timedelta(minutes=5), dag=dag
    )
    load = make_task(dag, "load_raw")
    dedup = make_task(dag, "dedup")
    export = make_task(dag, "export_mysql")
    check = make_task(dag, "reconcile")
    # After the export, or alone when has_data routes straight to it; never after a failure.
    check.trigger_rule = "none_failed_min_one_success"
    # Templates that pull XCom add no dependency by themselves: wire them explicitly.
    stage >> gate >> load >> dedup >> export >> check
    gate >> check
