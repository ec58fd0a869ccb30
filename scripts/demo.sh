#!/usr/bin/env bash
# Runs the whole pipeline on the embedded default (local lake folder + DuckDB) against
# MySQL: generates sample case data if data/ has none, splits it into daily files (the
# historic load), loads, deduplicates, exports, then reconciles.
# MySQL: OTA_MYSQL_URL; unset, the server at 127.0.0.1:3306, or when none answers there
# a project-local MariaDB started for the demo (scripts/with-mysql.sh). PROFILE=release
# builds optimised (for real volumes and benchmarks; the first build takes about an hour
# on 2 cores, the dev build about 20 minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/need.sh
. scripts/need.sh
need rust
if [ -z "${OTA_WITH_MYSQL:-}" ]; then
  exec env OTA_WITH_MYSQL=1 scripts/with-mysql.sh "$0" "$@"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"
PROFILE="${PROFILE:-dev}"
if [ "$PROFILE" = dev ]; then OUT=debug; else OUT="$PROFILE"; fi

cargo build --profile "$PROFILE" -p ota-cli --bins
BIN="$CARGO_TARGET_DIR/$OUT"

export OTA_LAKE_URL="${OTA_LAKE_URL:-file://$ROOT/data/lake}"
export OTA_WAREHOUSE_URL="${OTA_WAREHOUSE_URL:-duckdb://$ROOT/data/warehouse.duckdb}"
export OTA_MYSQL_URL="${OTA_MYSQL_URL:-mysql://root@127.0.0.1:3306/ota}"
CASE_DATA="${CASE_DATA:-$ROOT/data/case_data.parquet.gzip}"

if [ ! -f "$CASE_DATA" ]; then
  echo "== no case data at $CASE_DATA: generating a sample (3 days x ${ROWS_PER_DAY:-100000} rows)"
  "$BIN/ota-gen" --seed 42 --start 2024-01-01 --days 3 --rows-per-day "${ROWS_PER_DAY:-100000}" --single "$CASE_DATA"
fi

step() {
  local name=$1; shift
  echo "== $name $*"
  local out
  out=$("$BIN/$name" "$@")
  echo "$out"
  LAST=$(printf '%s\n' "$out" | tail -n 1)
}

step stage-files --from "$CASE_DATA"
START=$(printf '%s' "$LAST" | sed -n 's/.*"window":{"start":"\([0-9-]*\)","end":"\([0-9-]*\)".*/\1/p')
END=$(printf '%s' "$LAST" | sed -n 's/.*"window":{"start":"\([0-9-]*\)","end":"\([0-9-]*\)".*/\2/p')
step load-raw --start-date "$START" --end-date "$END"
step dedup --start-date "$START" --end-date "$END"
step export-mysql --start-date "$START" --end-date "$END"
echo "== reconcile (warehouse vs MySQL, per event date)"
"$BIN/export-mysql" --reconcile
