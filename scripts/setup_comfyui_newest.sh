#!/usr/bin/env bash
# Set up the second test pass: ComfyUI 0.33.0 (the newest we can get) in .comfyui-newest/, with a
# venv of its own in .venv-newest/ (both ignored by git).
#
# No package registry here has a ComfyUI newer than 0.3.75, so the source comes from a tarball of
# upstream 0.33.0 (default ../shared/comfyui/ComfyUI-0.33.0.tar.gz, see the README beside it).
# The venv gets: ComfyUI's requirements.txt with comfyui-frontend-package==1.58.1 (the newest on
# the index) instead of its 1.49.6 pin, torch 2.14.1 / torchvision 0.29.1 (as the main venv),
# torchaudio 2.11.1 --no-deps (0.33.0 will not start without torchaudio and no build matches
# torch 2.14.1; this one imports), this pack's test requirements and Playwright.
#
# Exit status 3 (and nothing done) when the tarball is absent: `make test` then skips the pass.
# --check: only that test (0: the tarball is there).
# Idempotent: stamps record what was done (FORCE=1 redoes everything).
# Env: COMFY_TARBALL, NEWEST_DIR (default .comfyui-newest), NEWEST_VENV (default .venv-newest), PYTHON.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMFY_VERSION="0.33.0"
FRONTEND_VERSION="1.58.1"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
TORCHAUDIO_PIN="torchaudio==2.11.1"
# ../shared beside this checkout, or beside the main checkout when this is a git worktree
main_root="$(cd "$(git -C "$ROOT" rev-parse --git-common-dir 2>/dev/null || echo "$ROOT/.git")/.." 2>/dev/null && pwd || echo "$ROOT")"
TARBALL="${COMFY_TARBALL:-}"
for dir in "$ROOT/.." "$main_root/.."; do
  [[ -n "$TARBALL" ]] || [[ ! -f "$dir/shared/comfyui/ComfyUI-$COMFY_VERSION.tar.gz" ]] \
    || TARBALL="$(cd "$dir/shared/comfyui" && pwd)/ComfyUI-$COMFY_VERSION.tar.gz"
done
TARBALL="${TARBALL:-$ROOT/../shared/comfyui/ComfyUI-$COMFY_VERSION.tar.gz}"
COMFY_DIR="${NEWEST_DIR:-$ROOT/.comfyui-newest}"
VENV="${NEWEST_VENV:-$ROOT/.venv-newest}"
PYTHON="${PYTHON:-python3}"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[setup_comfyui_newest] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ ! -f "$TARBALL" ]]; then
  log "no $TARBALL: nothing to set up"
  exit 3
fi
[[ "${1:-}" != --check ]] || exit 0  # --check: only say whether the tarball is there
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- 1. ComfyUI source -------------------------------------------------------------------
SRC_STAMP="$COMFY_DIR/.pez-setup-stamp"
src_key="$(sha256sum "$TARBALL" | cut -d' ' -f1)"
if [[ "${FORCE:-0}" != 1 && -f "$SRC_STAMP" && "$(cat "$SRC_STAMP")" == "$src_key" ]]; then
  log "ComfyUI $COMFY_VERSION already in ${COMFY_DIR#"$ROOT/"}/"
else
  log "unpacking $(basename "$TARBALL") into ${COMFY_DIR#"$ROOT/"}/"
  tmp="$COMFY_DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$TARBALL" -C "$tmp" --no-same-owner
  src="$tmp/ComfyUI-$COMFY_VERSION"
  [[ -f "$src/main.py" ]] || die "$TARBALL does not hold ComfyUI-$COMFY_VERSION/main.py"
  grep -q "__version__ = \"$COMFY_VERSION\"" "$src/comfyui_version.py" \
    || die "unexpected ComfyUI version: $(cat "$src/comfyui_version.py")"
  echo "$src_key" > "$src/.pez-setup-stamp"
  rm -rf "$COMFY_DIR"
  mv "$src" "$COMFY_DIR"
  rm -rf "$tmp"
  trap - EXIT
fi

# --- 2. its venv -------------------------------------------------------------------------
DEPS_STAMP="$VENV/.pez-deps-stamp"
deps_key="$(hash_of "$COMFY_DIR/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/requirements/browser.txt" \
  "${BASH_SOURCE[0]}")"
if [[ "${FORCE:-0}" != 1 && -f "$DEPS_STAMP" && "$(cat "$DEPS_STAMP")" == "$deps_key" ]]; then
  log "dependencies already installed in ${VENV#"$ROOT/"}"
else
  [[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
  req="$(mktemp)"
  trap 'rm -f "$req"' EXIT
  # torch* pinned here; the frontend pin replaced by the newest; websocket-client for the harness.
  grep -vE '^\s*(torch|torchvision|torchaudio|comfyui-frontend-package)\b' "$COMFY_DIR/requirements.txt" > "$req"
  printf '%s\n' "${TORCH_PINS[@]}" "comfyui-frontend-package==$FRONTEND_VERSION" websocket-client >> "$req"
  log "installing ComfyUI $COMFY_VERSION requirements, frontend $FRONTEND_VERSION, ${TORCH_PINS[*]}"
  # (the grep drops pip's warnings about this machine's unused local index folders)
  "$PY" -m pip install -q -r "$req" -r "$ROOT/requirements-dev.txt" -r "$ROOT/requirements/browser.txt" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  "$PY" -m pip install -q --no-deps "$TORCHAUDIO_PIN"
  "$PY" -m pip install -q --no-deps -e "$ROOT"
  rm -f "$req"
  trap - EXIT
  "$PY" - "$FRONTEND_VERSION" <<'EOF'
import importlib.metadata as md, sys
for mod in ("aiohttp", "sqlalchemy", "torchaudio", "open_clip", "playwright", "websocket", "pez_core"):
    __import__(mod)
for dist, want in (("torch", "2.14.1"), ("torchvision", "0.29.1"), ("comfyui-frontend-package", sys.argv[1])):
    have = md.version(dist).split("+")[0]
    if have != want:
        raise SystemExit(f"{dist} is {have}, expected {want}")
EOF
  echo "$deps_key" > "$DEPS_STAMP"
fi
# the editable install must be this checkout's: a venv made for another checkout would test that one
installed="$("$PY" -P -c 'import os, pez_core; print(os.path.dirname(os.path.dirname(os.path.realpath(pez_core.__file__))))' 2>/dev/null || true)"
if [[ "$installed" != "$(realpath "$ROOT")" ]]; then
  log "pointing the venv's editable install of this pack at $ROOT (was: ${installed:-none})"
  "$PY" -m pip install -q --no-deps -e "$ROOT"
fi
log "ready: $PY ${COMFY_DIR#"$ROOT/"}/main.py (ComfyUI $COMFY_VERSION, frontend $FRONTEND_VERSION)"
