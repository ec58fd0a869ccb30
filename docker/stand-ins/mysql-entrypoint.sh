#!/bin/sh
# The official MySQL image's first-start contract, on MariaDB: on an empty data
# directory, creates the root password, the database and the user from the environment
# (each password also as *_FILE), then runs the server in the foreground with the given
# flags.
set -eu
DATADIR=/var/lib/mysql
# VAR_FILE names a file holding VAR's value (Docker secrets), as in the official image;
# giving both is an error.
file_env() {
  var="$1"
  eval "value=\${$var:-}; file=\${${var}_FILE:-}"
  if [ -n "$value" ] && [ -n "$file" ]; then
    echo "error: both $var and ${var}_FILE are set" >&2
    exit 1
  fi
  if [ -n "$file" ]; then
    value="$(cat "$file")"
  fi
  export "$var=$value"
  unset "${var}_FILE"
}
file_env MYSQL_ROOT_PASSWORD
file_env MYSQL_PASSWORD
if [ ! -d "$DATADIR/mysql" ]; then
  mariadb-install-db --user=mysql --datadir="$DATADIR" --skip-test-db >/dev/null
  mariadbd --user=mysql --datadir="$DATADIR" --skip-networking --socket=/run/mysqld/init.sock &
  pid=$!
  i=0
  until mariadb-admin --socket=/run/mysqld/init.sock ping >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -lt 60 ] || { echo "mariadb did not start" >&2; exit 1; }
    sleep 1
  done
  quote() { printf "%s" "$1" | sed "s/'/''/g"; }
  {
    if [ -n "${MYSQL_ROOT_PASSWORD:-}" ]; then
      echo "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '$(quote "$MYSQL_ROOT_PASSWORD")';"
      echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
      echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(quote "$MYSQL_ROOT_PASSWORD")';"
    fi
    if [ -n "${MYSQL_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;"
    fi
    if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
      echo "CREATE USER IF NOT EXISTS '$(quote "$MYSQL_USER")'@'%' IDENTIFIED BY '$(quote "$MYSQL_PASSWORD")';"
      [ -z "${MYSQL_DATABASE:-}" ] || echo "GRANT ALL ON \`$MYSQL_DATABASE\`.* TO '$(quote "$MYSQL_USER")'@'%';"
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb --socket=/run/mysqld/init.sock -uroot
  kill "$pid"
  wait "$pid" || true
fi
exec mariadbd --user=mysql --datadir="$DATADIR" --bind-address=0.0.0.0 --port=3306 \
  --skip-name-resolve "$@"
