#!/usr/bin/env bash
# make smoke: the compose stack for real. Starts a Docker engine if none answers
# (scripts/docker-engine.sh), makes the base images no registry can give here
# (scripts/stand-in-images.sh; used only where the official ones are absent), builds the
# pipeline image from this workspace's binaries (BINARIES=prebuilt: the image's own
# release build takes about an hour on 2 cores) and the Airflow image, brings the stack
# up under names of its own, runs tests/stack against it (both DAGs through the REST
# API, MySQL checked, a re-run that writes nothing, the generated passwords, the Docker
# socket's group, the trigger form in headless Chromium; screenshots in
# ~/.cache/ota-pipeline/artifacts/stack), and takes the stack down with its volumes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/need.sh
. scripts/need.sh
need python chromium
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ota-pipeline/target}"
export DOCKER_BUILDKIT=1
DOCKER="$(scripts/docker-engine.sh)"
compose() { "$DOCKER" compose "$@"; }

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

echo "== tests/stack against it" >&2
VENV="$(scripts/airflow-venv.sh)"
DOCKER="$DOCKER" "$VENV/bin/python" -m pytest tests/stack -q -p no:cacheprovider
echo "smoke passed in $(( $(date +%s) - started )) s" >&2
