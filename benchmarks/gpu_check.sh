#!/usr/bin/env bash
# One device run: GPU tests + GPU benchmark. The GPU image has torch, torchvision, regex, timm and
# huggingface_hub but not open_clip_torch, ftfy or wcwidth: `make gpu-wheels` puts them in .whl/
# (ignored by git); run this script on the device with `.whl` carried. Output lands in $OUT (or ./artifacts).
set -euo pipefail
out=${OUT:-artifacts}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
# a failing test must not cost the benchmark (device time is scarce): run both, report both
status=0
timeout 200 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib tests/test_gpu.py tests/test_core.py \
  2>&1 | tee "$out/tests.log" || status=1
timeout 300 python3 benchmarks/gpu.py --models ViT-H-14 ViT-L-14 2>&1 | tee "$out/bench.md" || status=1
exit $status
