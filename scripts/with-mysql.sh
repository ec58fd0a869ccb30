#!/usr/bin/env bash
# Runs a command with a MySQL/MariaDB server to talk to.
#
# - A server you named (OTA_MYSQL_URL for the demo, OTA_TEST_MYSQL_URL for the tests) is
#   used as it is: never started or stopped here.
# - Else a server answering at 127.0.0.1:3306 is used.
# - Else a project-local MariaDB is started for the command and stopped after it: its own
#   data directory under the cache dir (~/.cache/ota-pipeline/mariadb), its own port and
#   socket, root without a password, local infile on.
# - Else (no server binaries) one line says what to install.
#
# Exports OTA_MYSQL_URL (database ota), OTA_TEST_MYSQL_URL (the server) and, for the
# emulator tests' network namespace, OTA_MYSQL_SOCKET.
# Usage: scripts/with-mysql.sh CMD [ARGS...]
set -euo pipefail

answers() { # host port: a MySQL greeting arrives (protocol version 10)
  if ! command -v python3 >/dev/null 2>&1; then
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
    return
  fi
  python3 - "$1" "$2" <<'EOF' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.settimeout(2)
    header = s.recv(5)
    sys.exit(0 if len(header) == 5 and header[4] == 10 else 1)
except OSError:
    sys.exit(1)
EOF
}

if [ -n "${OTA_MYSQL_URL:-}" ] || [ -n "${OTA_TEST_MYSQL_URL:-}" ]; then
  exec "$@"
fi
if answers 127.0.0.1 3306; then
  export OTA_MYSQL_URL="mysql://root@127.0.0.1:3306/ota"
  export OTA_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306"
  exec "$@"
fi

find_bin() {
  local name
  for name in "$@"; do
    command -v "$name" 2>/dev/null && return 0
    [ -x "/usr/sbin/$name" ] && { echo "/usr/sbin/$name"; return 0; }
  done
  return 1
}
MARIADBD="$(find_bin mariadbd mysqld || true)"
INSTALL_DB="$(find_bin mariadb-install-db mysql_install_db || true)"
if [ -z "$MARIADBD" ] || [ -z "$INSTALL_DB" ]; then
  echo "error: no MySQL/MariaDB server answers at 127.0.0.1:3306 and none is installed to start one here." >&2
  echo "       Install it with: sudo apt-get install -y mariadb-server   (or point OTA_MYSQL_URL / OTA_TEST_MYSQL_URL at yours," >&2
  echo "       e.g. the compose stack's: docker compose up -d mysql)" >&2
  exit 1
fi

DATADIR="${OTA_LOCAL_MYSQL_DIR:-$HOME/.cache/ota-pipeline/mariadb}"
SOCKET="$DATADIR/mysqld.sock"
USER_ARGS=()
if [ "$(id -u)" = 0 ]; then USER_ARGS=(--user=root); fi
if [ ! -d "$DATADIR/mysql" ]; then
  mkdir -p "$DATADIR"
  "$INSTALL_DB" --no-defaults --datadir="$DATADIR" "${USER_ARGS[@]}" \
    --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
    >"$DATADIR/install.log" 2>&1 || { echo "error: mariadb-install-db failed; see $DATADIR/install.log" >&2; exit 1; }
fi
PORT=3307
while answers 127.0.0.1 "$PORT" || (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
  PORT=$((PORT + 1))
done
echo "== no server at 127.0.0.1:3306: starting a project-local MariaDB on port $PORT ($DATADIR)" >&2
"$MARIADBD" --no-defaults --datadir="$DATADIR" --socket="$SOCKET" --pid-file="$DATADIR/mysqld.pid" \
  --port="$PORT" --bind-address=127.0.0.1 "${USER_ARGS[@]}" --skip-name-resolve --skip-log-bin \
  --innodb-buffer-pool-size=256M --local-infile=1 --max-allowed-packet=64M \
  </dev/null >/dev/null 2>"$DATADIR/server.log" &
SERVER=$!
stop_server() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}
trap stop_server EXIT
for _ in $(seq 1 120); do
  answers 127.0.0.1 "$PORT" && break
  kill -0 "$SERVER" 2>/dev/null || { echo "error: MariaDB exited while starting; see $DATADIR/server.log" >&2; exit 1; }
  sleep 0.5
done
answers 127.0.0.1 "$PORT" || { echo "error: MariaDB did not answer within 60 s; see $DATADIR/server.log" >&2; exit 1; }

export OTA_MYSQL_URL="mysql://root@127.0.0.1:$PORT/ota"
export OTA_TEST_MYSQL_URL="mysql://root@127.0.0.1:$PORT"
export OTA_MYSQL_SOCKET="$SOCKET"
"$@"
