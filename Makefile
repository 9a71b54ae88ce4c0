# Everything runs from a fresh machine: `make demo` and `make test` set up what they need.
# Tests and the demo never touch the network (HF_HUB_OFFLINE=1); `make serve` may download presets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv comfyui browser test demo serve bench gpu-wheels clean

venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt -c requirements/comfyui-constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

comfyui: venv
	bash scripts/setup_comfyui.sh

browser: venv
	bash scripts/setup_browser.sh

test: venv comfyui browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

demo: venv comfyui
	HF_HUB_OFFLINE=1 $(PY) -m scripts.demo

serve: venv comfyui
	$(PY) -m scripts.demo --serve

bench: venv
	$(PY) benchmarks/speed.py

# the wheels benchmarks/gpu_check.sh needs on the GPU machine (which has torch but no open_clip); a fresh
# folder, so it never holds two versions of one wheel (gpu_check.sh refuses that)
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.14

clean:
	rm -rf $(VENV) .comfyui .cache
