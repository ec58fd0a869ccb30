#!/usr/bin/env bash
# Runs every test: the Rust unit and end-to-end tests, the cloud backends against their
# emulators, then the Airflow DAG tests with a real Airflow. Needs a MySQL or MariaDB server: OTA_TEST_MYSQL_URL (default
# mysql://root@127.0.0.1:3306, a user that may create and drop databases).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # The GCS lake and BigQuery warehouse against their emulators (the tests marked
  # ignored), in a network namespace of their own: nothing can reach a real service.
  cargo nextest run --workspace --no-run
  CARGO_NET_OFFLINE=true scripts/with-emulators.sh \
    cargo nextest run --workspace --no-fail-fast --run-ignored only
else
  cargo test --workspace --no-fail-fast
  cargo test --workspace --no-run
  CARGO_NET_OFFLINE=true scripts/with-emulators.sh \
    cargo test --workspace --no-fail-fast -- --ignored
fi

# The DAG tests run the debug binaries through `airflow dags test`.
cargo build -q -p ota-cli --bins
VENV="$(scripts/airflow-venv.sh)"
"$VENV/bin/python" -m pytest tests/airflow -q -p no:cacheprovider
