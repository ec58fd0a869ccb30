#!/usr/bin/env bash
# make bench: builds the release binaries and runs ota-bench against the MySQL at
# OTA_MYSQL_URL (it works in its own database, ota_bench). Settings, all optional:
#   ROWS_PER_DAY (1000000), DAYS (3), REPEAT (3), STEADY_ROWS_PER_DAY (100000; 0 skips),
#   BENCH_DIR (generated data and logs, kept between runs; ~/.cache/ota-pipeline/bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"
export OTA_MYSQL_URL="${OTA_MYSQL_URL:-mysql://root@127.0.0.1:3306/ota}"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/ota-pipeline/bench}"

cargo build --release -p ota-cli --bins -p ota-bench
exec "$CARGO_TARGET_DIR/release/ota-bench" --bin-dir "$CARGO_TARGET_DIR/release" --work-dir "$BENCH_DIR" "$@"
