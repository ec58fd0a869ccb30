#!/usr/bin/env bash
# make smoke: the compose stack for real. Starts a Docker engine if none answers
# (scripts/docker-engine.sh), makes the base images no registry can give here
# (scripts/stand-in-images.sh; used only where the official ones are absent), builds the
# pipeline image from this workspace's binaries (BINARIES=prebuilt: the image's own
# release build takes about an hour on 2 cores) and the Airflow image, brings the stack
# up, triggers ota_historic_load and then ota_pipeline over three of its days through
# Airflow's REST API, checks what MySQL serves (the sample's known row count; each run's
# reconcile task compares MySQL with the warehouse), runs the window again (it must
# write nothing), and takes the stack down with its volumes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"
export DOCKER_BUILDKIT=1
DOCKER="$(scripts/docker-engine.sh)"
compose() { "$DOCKER" compose "$@"; }

# Rows MySQL serves after the historic load of the seeded sample (seed 42, 7 days of
# 20 000 rows), less the rejected and the duplicate rows.
EXPECTED_ROWS=135632

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
AIRFLOW_BASE=apache/airflow:3.3.2-python3.11
MYSQL_IMAGE=mysql:8.4
if ! have "$AIRFLOW_BASE" || ! have "$MYSQL_IMAGE" || ! have debian:bookworm-slim; then
  scripts/stand-in-images.sh "$DOCKER"
  have "$AIRFLOW_BASE" || AIRFLOW_BASE=ota-stand-in/airflow:3.3.2-python3.11
  have "$MYSQL_IMAGE" || MYSQL_IMAGE=ota-stand-in/mysql:mariadb
fi
export OTA_AIRFLOW_BASE_IMAGE="$AIRFLOW_BASE" OTA_MYSQL_IMAGE="$MYSQL_IMAGE"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export OTA_MYSQL_PORT="${OTA_MYSQL_PORT:-$(free_port)}" OTA_AIRFLOW_PORT="${OTA_AIRFLOW_PORT:-$(free_port)}"
export OTA_DOCKER_GID="$(stat -c %g /var/run/docker.sock)"
# A stack of its own names beside yours: project, network, volumes, image.
export COMPOSE_PROJECT_NAME=ota-smoke OTA_NETWORK=ota-smoke OTA_DATA_VOLUME=ota-smoke-data \
  OTA_SECRETS_VOLUME=ota-smoke-secrets OTA_IMAGE=ota-pipeline:smoke

started=$(date +%s)
echo "== the pipeline image from this workspace's binaries" >&2
cargo build -q -p ota-cli --bins
context="$(mktemp -d)"
trap 'rm -rf "$context"; compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
mkdir "$context/prebuilt"
for binary in stage-files load-raw dedup export-mysql ota-gen; do
  strip -o "$context/prebuilt/$binary" "$CARGO_TARGET_DIR/debug/$binary"
done
"$DOCKER" build -q --network host --build-arg BINARIES=prebuilt -f docker/Dockerfile -t "$OTA_IMAGE" "$context" >/dev/null

echo "== the Airflow image (FROM $AIRFLOW_BASE, with the Docker provider)" >&2
ca="$(pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -1)"
[ -n "$ca" ] && [ -f "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
"$DOCKER" build -q --network host --secret "id=ca,src=$ca" --build-arg "AIRFLOW_BASE_IMAGE=$AIRFLOW_BASE" \
  -f docker/airflow.Dockerfile -t ota-airflow:3.3.2 docker >/dev/null

echo "== compose up (Airflow on 127.0.0.1:$OTA_AIRFLOW_PORT, MySQL on 127.0.0.1:$OTA_MYSQL_PORT)" >&2
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d --no-build --wait --wait-timeout 300

# Triggers DAG $1 with conf $2 through the REST API, waits for it, prints the
# export_mysql summary's rows_written; fails unless the run succeeded.
run_dag() {
  python3 - "$OTA_AIRFLOW_PORT" "${OTA_AIRFLOW_PASSWORD:-admin}" "$1" "$2" <<'PY'
import json, sys, time, urllib.request
port, password, dag, conf = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(base + path, data, headers, method=method), timeout=30) as r:
        return json.loads(r.read() or b"{}")
token = call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
for _ in range(60):  # the DAG file is parsed a little after the server answers
    try:
        call("GET", f"/api/v2/dags/{dag}", token=token)
        break
    except urllib.error.HTTPError:
        time.sleep(2)
run = call("POST", f"/api/v2/dags/{dag}/dagRuns", {"logical_date": None, "conf": conf}, token)["dag_run_id"]
for _ in range(360):
    state = call("GET", f"/api/v2/dags/{dag}/dagRuns/{run}", token=token)["state"]
    if state in ("success", "failed"):
        break
    time.sleep(5)
tasks = call("GET", f"/api/v2/dags/{dag}/dagRuns/{run}/taskInstances", token=token)["task_instances"]
print(f"{dag} {run}: {state} {sorted((t['task_id'], t['state']) for t in tasks)}", file=sys.stderr)
if state != "success":
    sys.exit(1)
summary = call("GET", f"/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/export_mysql/xcomEntries/return_value", token=token)
print(json.loads(summary["value"])["counts"]["rows_written"] if isinstance(summary["value"], str) else summary["value"]["counts"]["rows_written"])
PY
}

served() {
  compose exec -T mysql mysql -uota "-p${OTA_MYSQL_PASSWORD:-ota}" -N -e "SELECT COUNT(*) FROM ota.ota_events" 2>/dev/null
}

run_dag ota_historic_load '{}' >/dev/null
window='{"start_date": "2024-01-03", "end_date": "2024-01-05"}'
run_dag ota_pipeline "$window" >/dev/null
rows="$(served)"
[ "$rows" = "$EXPECTED_ROWS" ] || { echo "error: MySQL serves $rows rows, expected $EXPECTED_ROWS" >&2; exit 1; }
again="$(run_dag ota_pipeline "$window")"
[ "$again" = 0 ] || { echo "error: the window run again wrote $again rows" >&2; exit 1; }
[ "$(served)" = "$EXPECTED_ROWS" ] || { echo "error: MySQL changed on a re-run" >&2; exit 1; }
echo "smoke passed in $(( $(date +%s) - started )) s: both DAGs green on the compose stack, $rows rows served, a re-run wrote nothing" >&2
