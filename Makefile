# Everything runs from a fresh machine: `make demo` and `make test` set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv comfyui browser test demo serve bench clean

venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

comfyui: venv
	bash scripts/setup_comfyui.sh

test: venv comfyui
	$(PY) -m pytest -q

demo: venv comfyui
	$(PY) -m scripts.demo

clean:
	rm -rf $(VENV) .comfyui
