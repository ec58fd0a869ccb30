"""Credentials, from Airflow connections, resolved when a task runs and handed to the
step as files on a tmpfs, removed when it ends (Docker: the volume ``OTA_SECRETS_VOLUME``
the worker mounts at ``OTA_SECRETS_DIR``; local: /dev/shm), never as environment that
``docker inspect`` or a template field shows; each step gets only those it uses: MySQL
from a MySQL connection (``OTA_MYSQL_CONN_ID``, default ``mysql_default``) for the export
and reconcile, the GCS key (``OTA_GCS_CONN_ID``, default ``google_cloud_default``) for the
steps that read the lake, the BigQuery key (``OTA_BQ_CONN_ID``, default
``google_cloud_bigquery``) for the steps on the warehouse. A MySQL connection that does
not exist falls back to ``OTA_MYSQL_URL``; a Google connection without a key leaves the
binaries to Application Default Credentials (workload identity)."""

from __future__ import annotations

import contextlib
import json
import os
from urllib.parse import quote

# The credentials each step uses, and the only ones it gets: MySQL for the export and its
# reconcile, the GCS key for the steps that read the lake, the BigQuery key for every step
# (each uses the warehouse).
STEP_CREDENTIALS = {
    "stage_files": ("gcs", "bq"),
    "load_raw": ("gcs", "bq"),
    "dedup": ("bq",),
    "export_mysql": ("mysql", "bq"),
    "reconcile": ("mysql", "bq"),
}
# Each credential as the binaries read it from a file: the file's name, the variable
# naming its path, and the variables that must not hold it as well.
SECRET_FILES = {
    "mysql": ("mysql-url", "OTA_MYSQL_URL_FILE", ("OTA_MYSQL_URL",)),
    "gcs": ("gcs-key.json", "OTA_GCS_KEY_FILE", ("OTA_GCS_KEY_JSON",)),
    "bq": ("bq-key.json", "OTA_BQ_KEY_FILE", ("OTA_BQ_KEY_JSON",)),
}
# Airflow connections of the credentials: env variable naming the id -> default id. The
# two Google accounts are two connections: the lake's never holds the warehouse's key.
CONNECTION_IDS = {
    "OTA_MYSQL_CONN_ID": "mysql_default",
    "OTA_GCS_CONN_ID": "google_cloud_default",
    "OTA_BQ_CONN_ID": "google_cloud_bigquery",
}
# Service-account key files on the Docker host: credential -> (host path variable, path
# inside the container).
KEY_FILES = {
    "gcs": ("OTA_GCS_KEY_FILE", "/run/secrets/gcs-key.json"),
    "bq": ("OTA_BQ_KEY_FILE", "/run/secrets/bq-key.json"),
}
# Where a Docker task sees the secrets volume (OTA_SECRETS_VOLUME) the worker writes its
# credentials to (mounted in the worker at OTA_SECRETS_DIR).
SECRETS_TARGET = "/run/ota-secrets"


def connection_id(variable: str) -> str:
    """The Airflow connection id ``variable`` names (or its default)."""
    return os.environ.get(variable, "").strip() or CONNECTION_IDS[variable]


def get_connection(conn_id: str):
    """The Airflow connection ``conn_id``, or None when none is defined."""
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception as error:  # AirflowNotFoundException; its module moved between versions
        if type(error).__name__ == "AirflowNotFoundException":
            return None
        raise


def mysql_url(conn) -> str:
    """A MySQL connection as the URL the binaries take (``ssl_mode`` extra -> ssl-mode)."""
    user = quote(conn.login or "", safe="")
    password = f":{quote(conn.password, safe='')}" if conn.password else ""
    auth = f"{user}{password}@" if user or password else ""
    url = f"mysql://{auth}{conn.host or '127.0.0.1'}:{conn.port or 3306}/{quote(conn.schema or '', safe='')}"
    ssl_mode = (conn.extra_dejson or {}).get("ssl_mode")
    return f"{url}?ssl-mode={quote(str(ssl_mode), safe='')}" if ssl_mode else url


def google_key(conn) -> str | None:
    """The service-account key JSON of a Google Cloud connection (``keyfile_dict``, or the
    file ``key_path`` names on the worker), or None: Application Default Credentials."""
    extra = conn.extra_dejson or {}

    def field(name: str):
        return extra.get(name) or extra.get(f"extra__google_cloud_platform__{name}")

    keyfile_dict = field("keyfile_dict")
    if keyfile_dict:
        return keyfile_dict if isinstance(keyfile_dict, str) else json.dumps(keyfile_dict)
    key_path = field("key_path")
    if key_path:
        with open(key_path, encoding="utf-8") as key_file:
            return key_file.read()
    return None


def uses_google(service: str, settings: dict[str, str]) -> bool:
    """Whether the step talks to the real GCS (``gcs``) or BigQuery (``bq``): a gs:// lake or
    bigquery:// warehouse with no emulator endpoint (an emulator must never get a key)."""
    if service == "gcs":
        url, endpoint = settings.get("OTA_LAKE_URL", ""), settings.get("OTA_GCS_ENDPOINT")
        return url.startswith("gs://") and not endpoint
    url, endpoint = settings.get("OTA_WAREHOUSE_URL", ""), settings.get("OTA_BQ_ENDPOINT")
    return url.startswith("bigquery://") and not endpoint


def step_secrets(step: str) -> dict[str, str]:
    """At run time: the credentials ``step`` uses (STEP_CREDENTIALS), by credential, from
    the Airflow connections, masked in the task logs. A missing MySQL connection falls
    back to ``OTA_MYSQL_URL``; a Google connection without a key leaves the binaries to
    Application Default Credentials."""
    from airflow.sdk.log import mask_secret

    wanted = STEP_CREDENTIALS.get(step, ())
    secrets = {}
    if "mysql" in wanted:
        mysql = get_connection(connection_id("OTA_MYSQL_CONN_ID"))
        if mysql is not None:
            secrets["mysql"] = mysql_url(mysql)
        elif os.environ.get("OTA_MYSQL_URL"):
            secrets["mysql"] = os.environ["OTA_MYSQL_URL"]
    for service, variable in (("gcs", "OTA_GCS_CONN_ID"), ("bq", "OTA_BQ_CONN_ID")):
        if service not in wanted or not uses_google(service, dict(os.environ)):
            continue
        conn = get_connection(connection_id(variable))
        key = google_key(conn) if conn is not None else None
        if key:
            secrets[service] = key
    for value in secrets.values():
        mask_secret(value)
    return secrets


@contextlib.contextmanager
def secret_files(secrets: dict[str, str], root: str | None, readable_by_others: bool = False):
    """Writes each credential to a file of its own in a fresh directory under ``root`` (a
    tmpfs: /dev/shm where there is one) and yields {variable naming the file: its path};
    the directory and files are removed when the step ends, failed or not. The directory
    has a random name and its parent lets no one list it; the files are readable by their
    owner only, or by anyone who knows the path (``readable_by_others``: a task container
    that runs as another user)."""
    import shutil
    import tempfile

    if not secrets:
        yield {}
        return
    directory = tempfile.mkdtemp(prefix="ota-", dir=root)
    try:
        os.chmod(directory, 0o711 if readable_by_others else 0o700)
        files = {}
        for credential, value in secrets.items():
            name, variable, _ = SECRET_FILES[credential]
            path = os.path.join(directory, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if readable_by_others else 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(value)
            files[variable] = path
        yield files
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def cleared_settings(step: str, secrets: dict[str, str]) -> dict[str, str]:
    """The variables of the worker's environment the step must not see: those holding a
    credential it does not use, and those that would hold one it gets as a file; emptied
    (an empty setting counts as not given)."""
    cleared = {}
    for credential, (_, file_variable, variables) in SECRET_FILES.items():
        if credential not in STEP_CREDENTIALS.get(step, ()):
            cleared.update({v: "" for v in (file_variable, *variables)})
        elif credential in secrets:
            cleared.update({v: "" for v in variables})
    return cleared


def local_secrets_root() -> str | None:
    """Where the local runner writes credential files: a tmpfs where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
