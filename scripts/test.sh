#!/usr/bin/env bash
# Runs every test: the Rust unit and end-to-end tests, then the Airflow DAG tests with a
# real Airflow. Needs a MySQL or MariaDB server: OTA_TEST_MYSQL_URL (default
# mysql://root@127.0.0.1:3306, a user that may create and drop databases).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

# The DAG tests run the debug binaries through `airflow dags test`.
cargo build -q -p ota-cli --bins
VENV="$(scripts/airflow-venv.sh)"
"$VENV/bin/python" -m pytest tests/airflow -q -p no:cacheprovider
