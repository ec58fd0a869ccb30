#!/usr/bin/env bash
# Creates (once) a cached virtualenv at DIR holding exactly PINS, and prints its path.
# Re-created when the pins change. Usage: scripts/venv.sh DIR PIN...
set -euo pipefail
VENV="$1"
shift
PINS="$*"
STAMP="$VENV/.ota-pins"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$PINS" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check uv >&2
  # shellcheck disable=SC2086
  "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" $PINS >&2
  echo "$PINS" > "$STAMP"
fi
echo "$VENV"
