#!/usr/bin/env bash
# Set up what tests/browser/test_browser.py needs: Debian's chromium and Playwright for Python.
#
#   - chromium from apt (/usr/bin/chromium); Playwright drives it through executable_path.
#   - playwright (pinned in requirements/browser.txt) into the venv.
#
# Never runs `playwright install`: that downloads browser builds from outside the package
# registries. Idempotent: does nothing when both are already present (FORCE=1 to redo).
# Env: VENV (default .venv). Needs root (or sudo) for apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
REQS="$ROOT/requirements/browser.txt"
CHROMIUM="/usr/bin/chromium"

log() { echo "[setup_browser] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$PY" ]] || die "no virtualenv at $VENV (create it first, e.g. 'make venv')"
[[ -f "$REQS" ]] || die "missing $REQS"

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || die "apt-get needs root (or sudo)"
  SUDO="sudo"
fi

# --- 1. chromium (Debian package) ---------------------------------------------------------
if [[ "${FORCE:-0}" != 1 && -x "$CHROMIUM" ]]; then
  log "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
  log "installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation
  [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM is missing"
  log "installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
fi

# --- 2. playwright (Python, pinned) -------------------------------------------------------
want="$(grep -E '^playwright==' "$REQS" | head -n1 | cut -d= -f3)"
[[ -n "$want" ]] || die "no 'playwright==<version>' pin in $REQS"
have="$("$PY" -c 'from importlib.metadata import version; print(version("playwright"))' 2>/dev/null || true)"
if [[ "${FORCE:-0}" != 1 && "$have" == "$want" ]]; then
  log "playwright $have already in $VENV"
else
  log "installing playwright==$want into $VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q -r "$REQS"
fi
log "done (no 'playwright install': tests launch $CHROMIUM)"
