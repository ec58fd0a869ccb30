#!/usr/bin/env bash
# Base images for a machine that reaches no image registry, made locally (the Debian base
# is kept by its tag; the others rebuild from BuildKit's cache, instant when unchanged):
# - debian:bookworm-slim: a minbase rootfs from Debian's mirror (mmdebstrap), imported;
# - ota-stand-in/airflow:3.3.2-python3.11: Debian's Python 3.11 and Airflow from PyPI,
#   laid out as apache/airflow is (docker/stand-ins/airflow.Dockerfile);
# - ota-stand-in/mysql:mariadb: Debian's MariaDB with the environment contract of the
#   mysql image (docker/stand-ins/mysql.Dockerfile).
# The stack uses them only when told to (OTA_AIRFLOW_BASE_IMAGE, OTA_MYSQL_IMAGE); its
# defaults stay the real images. pip inside a build trusts the CA bundle pip is
# configured with here, handed in as a BuildKit secret.
# Usage: scripts/stand-in-images.sh DOCKER_CLIENT
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DOCKER="${1:-docker}"
AIRFLOW_IMAGE=ota-stand-in/airflow:3.3.2-python3.11
MYSQL_IMAGE=ota-stand-in/mysql:mariadb
export DOCKER_BUILDKIT=1

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

if ! have debian:bookworm-slim; then
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "== debian:bookworm-slim from Debian's mirror (mmdebstrap)" >&2
  # Slim as Docker Hub's is: no manuals, docs (but copyrights) or translations, and no
  # apt caches left in a layer.
  mmdebstrap --quiet --variant=minbase --include=ca-certificates \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""' \
    bookworm "$tmp/rootfs.tar"
  "$DOCKER" import "$tmp/rootfs.tar" debian:bookworm-slim >/dev/null
fi

# The CA bundle pip trusts on this machine (pip config's cert, else the system's).
ca_bundle() {
  local cert
  cert="$(pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -1)"
  [ -n "$cert" ] && [ -f "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
  echo "$cert"
}

# Built each time: BuildKit's cache makes an unchanged one instant, and a changed
# Dockerfile or entrypoint is never missed.
echo "== $AIRFLOW_IMAGE: a stand-in from Debian's Python and PyPI" >&2
"$DOCKER" build -q --network host --secret "id=ca,src=$(ca_bundle)" \
  -f "$ROOT/docker/stand-ins/airflow.Dockerfile" -t "$AIRFLOW_IMAGE" "$ROOT/docker/stand-ins" >/dev/null

echo "== $MYSQL_IMAGE: a stand-in from Debian's MariaDB" >&2
"$DOCKER" build -q --network host \
  -f "$ROOT/docker/stand-ins/mysql.Dockerfile" -t "$MYSQL_IMAGE" "$ROOT/docker/stand-ins" >/dev/null
