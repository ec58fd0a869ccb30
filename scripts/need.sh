#!/usr/bin/env bash
# Sourced by the scripts behind make: `need WHAT...` stops with one line saying what to
# install when a prerequisite is missing, instead of a stack trace further on.
need() {
  local what
  for what in "$@"; do
    case "$what" in
      rust)
        if ! command -v cargo >/dev/null 2>&1; then
          echo "error: cargo is not on PATH: install Rust 1.88 or newer with rustup (then open a new shell)" >&2
          exit 1
        fi ;;
      python)
        if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
          echo "error: the Airflow tests and linters need Python 3 with venv: sudo apt-get install -y python3 python3-venv" >&2
          exit 1
        fi ;;
      netns)
        if ! command -v unshare >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
          echo "error: the GCS/BigQuery emulator tests run in a network namespace of their own: sudo apt-get install -y util-linux iproute2" >&2
          exit 1
        fi
        if ! unshare -n true >/dev/null 2>&1; then
          echo "error: the GCS/BigQuery emulator tests need root (or CAP_SYS_ADMIN) for unshare -n; run make test as root, or skip them with SKIP_EMULATORS=1" >&2
          exit 1
        fi ;;
      chromium)
        if [ ! -x "${OTA_CHROMIUM:-/usr/bin/chromium}" ]; then
          echo "error: the browser test of the trigger form drives Debian's Chromium: sudo apt-get install -y chromium (or name another build in OTA_CHROMIUM)" >&2
          exit 1
        fi ;;
    esac
  done
}
