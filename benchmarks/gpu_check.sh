#!/usr/bin/env bash
# One device run, most valuable first: probes -> ViT-H-14 -> ViT-L-14 -> the GPU tests -> time to quality
# (planted prompts, ViT-H-14) -> two text towers (SDXL's ViT-L-14 + ViT-bigG-14). Each part has its own
# time limit, cut to what is left of the whole run's (RUN_LIMIT, 7 min: with a machine start of a few
# minutes, inside a 15-minute budget; what is left then fits a short rerun, e.g. RUN_LIMIT=150); a part
# that would get under 20 s is skipped and says so. Everything is written to $OUT as
# it goes: results.jsonl (one JSON line per measurement), <part>.log, summary.txt. A failing part does not
# stop the next. The device has torch but not open_clip_torch, ftfy or wcwidth: `make gpu-wheels` puts
# them in .whl/ (ignored by git; carry it). `gpu_check.sh --check` runs only the checks that need no GPU.
# `gpu_check.sh --device cpu --quick` runs every part on this CPU with small random-weight models and a few
# steps, in $PYTHON's own packages (no wheels): the script's whole path, tested before a device is lent.
set -uo pipefail
out=${OUT:-artifacts}
wheels=${WHEELS:-.whl}
py=${PYTHON:-python3}
site=${SITE:-/tmp/site}

fail() { echo "gpu_check: $*" >&2; exit 2; }
cpu=; [ "$*" = "--device cpu --quick" ] && cpu=1

# 1. fail at once, not after a machine start: exactly one version of each wheel the device lacks
[ -n "$cpu" ] || for name in open_clip_torch ftfy wcwidth; do
  found=$(ls "$wheels"/ 2>/dev/null | grep -c "^${name}-[0-9][^-]*-.*\.whl$")
  [ "$found" = 1 ] || fail "$wheels/ holds $found ${name} wheels, not 1: run \`make gpu-wheels\` here and carry .whl"
done
[ -f benchmarks/gpu.py ] && [ -d pez_core ] || fail "run from the repository root"
"$py" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || fail "$py is not Python >= 3.11 (the run uses python -P)"
[ "${1:-}" = --check ] && { echo "gpu_check: checks passed"; exit 0; }

mkdir -p "$out" || fail "cannot write to $out"
# 2. install: wheels are zip files; unpacked into a site folder with pez_core linked beside them, so
# neither pip nor the repository root (whose nodes/ would shadow ComfyUI's) is needed on sys.path
rm -rf "$site" && mkdir -p "$site" || fail "cannot create $site"
[ -n "$cpu" ] || for w in "$wheels"/*.whl; do "$py" -m zipfile -e "$w" "$site" || fail "cannot unpack $w"; done
ln -s "$PWD/pez_core" "$site/pez_core"
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$py" -P -c "import open_clip, pez_core" > "$out/import.log" 2>&1 \
  || fail "open_clip or pez_core does not import: $(tail -1 "$out/import.log")"
[ -n "$cpu" ] || "$py" -c "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'" > "$out/cuda.log" 2>&1 \
  || fail "torch sees no CUDA device here (this part is for the GPU machine): $(tail -1 "$out/cuda.log")"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  date -u +%FT%TZ; } | tee "$out/gpu.txt"

results="$out/results.jsonl"
started=$SECONDS
run_limit=${RUN_LIMIT:-420}
status=0
# part NAME SECONDS CMD...: run with its own time limit (at most what is left of the run's), log to $OUT,
# note the outcome in summary.txt
part() {
  local name=$1 limit=$(($2 * slow)) t0=$SECONDS rc left; shift 2
  left=$((run_limit - (SECONDS - started)))
  if [ "$left" -lt 20 ]; then
    echo "$name: skipped, ${left} s left of the run's ${run_limit} s" | tee -a "$out/summary.txt"
    status=1
    return 1
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "== $name (limit ${limit} s) ==" | tee -a "$out/summary.txt"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] || [ $rc = 137 ] && echo ' (time limit)')" \
    | tee -a "$out/summary.txt"
  [ $rc = 0 ] || status=1
  return $rc
}

if [ -n "$cpu" ]; then  # the same parts, small: the path, not the speed (the probes fail: they need CUDA)
  big=ViT-S-32 small=ViT-S-32-alt pair=b32 dev=(--device cpu --quick) planted=(3 6) joint=(--steps 1 --prompt-len 2)
  # the path, not the speed: limits far above what a busy 2-core CPU needs (409 s in all at load ~5), so only a
  # hang is cut, never a slow part
  slow=20 run_limit=${RUN_LIMIT:-7200}
else
  big=ViT-H-14 small=ViT-L-14 pair=sdxl dev=() planted=(300 1000 3000) joint=(--steps 100) slow=1
fi
# 3. the unknown first: cuDNN attention inside a CUDA graph at L+2 = 18 positions (a crash costs this process only)
if ! part probe-cudnn 45 "$py" benchmarks/gpu.py "${dev[@]}" --probe cudnn --models $small --results "$results"; then
  export TORCH_CUDNN_SDPA_DEPRIORITIZED=1
  echo "probe-cudnn failed: the rest runs with TORCH_CUDNN_SDPA_DEPRIORITIZED=1" | tee -a "$out/summary.txt"
fi
if ! part probe-engine 60 "$py" benchmarks/gpu.py "${dev[@]}" --probe engine --models $small --results "$results"; then
  export PEZ_CAPTURE_SDPA=math
  echo "probe-engine failed: the rest captures with PEZ_CAPTURE_SDPA=math" | tee -a "$out/summary.txt"
fi
part bench-$big 140 "$py" benchmarks/gpu.py "${dev[@]}" --models $big --results "$results"
part bench-$small 80 "$py" benchmarks/gpu.py "${dev[@]}" --models $small --results "$results"
# only the tests that need the device; -P: the repository root stays off sys.path
part tests 120 env PYTHONPATH="$site:$PWD/tests/support" "$py" -P -m pytest -q --noconftest -rs tests/engine/test_gpu.py
# time to quality: the reference loop's 3000-step similarity, and the engine's time to it (rows as they come)
part planted-$big 120 "$py" benchmarks/planted.py --model $big --seeds 1 --reference-steps "${planted[@]}" \
  --budget-steps "${planted[-1]}" --polish swap+prune off --results "$out/planted.jsonl"
part joint-$pair 60 "$py" benchmarks/joint.py --pair $pair "${joint[@]}"
echo "gpu_check: done in $((SECONDS - started)) s, exit $status" | tee -a "$out/summary.txt"
exit $status
