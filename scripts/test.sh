#!/usr/bin/env bash
# Runs every test. Needs a MySQL or MariaDB server: OTA_TEST_MYSQL_URL (default
# mysql://root@127.0.0.1:3306, a user that may create and drop databases).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast
else
  exec cargo test --workspace --no-fail-fast
fi
