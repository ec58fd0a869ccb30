#!/bin/sh
# The compose stack's Airflow entrypoint. The container starts as root only for this:
# it reads the group that owns the Docker socket mounted at /var/run/docker.sock
# (whatever gid the host gave it) and drops to the airflow user (AIRFLOW_UID, 50000,
# group 0 as in the official image) with that group added, so DockerOperator may start
# the step containers without a gid written anywhere. Then the image's own entrypoint.
set -eu
if [ "$(id -u)" = 0 ]; then
  uid="${AIRFLOW_UID:-50000}"
  groups=0
  if [ -S /var/run/docker.sock ]; then
    groups="0,$(stat -c %g /var/run/docker.sock)"
  fi
  HOME="$(getent passwd "$uid" | cut -d: -f6)"
  export HOME
  exec setpriv --reuid="$uid" --regid=0 --groups="$groups" --inh-caps=-all --no-new-privs -- "$0" "$@"
fi
if [ -x /entrypoint ]; then
  exec /usr/bin/dumb-init -- /entrypoint "$@"
fi
exec "$@"
