#!/usr/bin/env bash
# Runs every test: the Rust unit and end-to-end tests, the cloud backends against their
# emulators, then the Airflow DAG tests with a real Airflow. They talk to the MySQL or
# MariaDB server at OTA_TEST_MYSQL_URL (a user that may create and drop databases); unset,
# the one at 127.0.0.1:3306, and when none answers there a project-local MariaDB started
# for the run (scripts/with-mysql.sh). SKIP_EMULATORS=1 leaves out the emulator tests.
# Last, make smoke runs the compose stack on a Docker engine (started, or installed as
# root, by scripts/docker-engine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/need.sh
. scripts/need.sh
need rust python
[ -n "${SKIP_EMULATORS:-}" ] || need netns
if [ -z "${OTA_WITH_MYSQL:-}" ]; then
  exec env OTA_WITH_MYSQL=1 scripts/with-mysql.sh "$0" "$@"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  if [ -z "${SKIP_EMULATORS:-}" ]; then
    # The GCS lake and BigQuery warehouse against their emulators (the tests marked
    # ignored), in a network namespace of their own: nothing can reach a real service.
    cargo nextest run --workspace --no-run
    CARGO_NET_OFFLINE=true scripts/with-emulators.sh \
      cargo nextest run --workspace --no-fail-fast --run-ignored only
  fi
else
  cargo test --workspace --no-fail-fast
  if [ -z "${SKIP_EMULATORS:-}" ]; then
    cargo test --workspace --no-run
    CARGO_NET_OFFLINE=true scripts/with-emulators.sh \
      cargo test --workspace --no-fail-fast -- --ignored
  fi
fi

# The DAG tests run the debug binaries through `airflow dags test` (and in task
# containers, on a Docker engine scripts/docker-engine.sh starts).
cargo build -q -p ota-cli --bins
VENV="$(scripts/airflow-venv.sh)"
"$VENV/bin/python" -m pytest tests/airflow -q -p no:cacheprovider

# The compose stack for real (make smoke).
scripts/smoke.sh
