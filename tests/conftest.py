"""Shared pytest fixtures. ``model``: a tiny random-weight CLIP per test module. ``comfy_server``: one real
ComfyUI server per session, started lazily.

Before it starts, the server's base directory gets what the node tests use: a tiny random-weight
CLIP checkpoint in ``models/pez`` (``pez-tiny.safetensors`` + ``pez-tiny.json``) and a few small
images in ``input/`` (see ``TEST_IMAGES``, plus ComfyUI's own ``example.png``). Its Hugging Face
cache is an empty folder and HF_HUB_OFFLINE is set, so presets are never found or downloaded.
torch runs single-threaded there: on a shared, busy CPU that is 10-30x faster for the tiny model.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# The repository root is a ComfyUI pack whose `nodes/` folder would shadow ComfyUI's own top-level
# `nodes` module if the root were importable (as `python -m pytest` makes it): tests get pez_core from
# the (editable) install and their helpers from tests/support, never the root itself. Test files are
# imported by path (--import-mode=importlib, pyproject.toml): no folder of tests needs to be on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
sys.path.insert(0, str(TESTS / "support"))
from comfy_harness import COMFY_DIR, DEFAULT_PYTHON, ComfyServer, comfyui_version  # noqa: E402
from helpers import DEMO_IMAGE, TEST_IMAGES, TINY_MODEL, png_bytes, write_tiny_checkpoint  # noqa: E402

_LOG_TAIL = 8000


def pytest_report_header() -> str:
    """Which ComfyUI and frontend the server tests run against (the log of each pass names them)."""
    try:
        version = comfyui_version()
    except OSError:
        return f"ComfyUI: none in {COMFY_DIR} (run: make comfyui)"
    probe = "import importlib.metadata as m; print(m.version('comfyui-frontend-package'))"
    try:
        frontend = subprocess.run([str(DEFAULT_PYTHON), "-c", probe], capture_output=True, text=True,
                                  timeout=60).stdout.strip() or "not installed"
    except (OSError, subprocess.TimeoutExpired):
        frontend = "unknown"
    return f"ComfyUI {version} in {COMFY_DIR} (frontend {frontend}, Python {DEFAULT_PYTHON})"


def prepare_base_dir(server: ComfyServer) -> None:
    """Files the node tests need, written before the server starts."""
    write_tiny_checkpoint(server.models_dir, Path(TINY_MODEL).stem)
    for name, spec in TEST_IMAGES.items():
        server.add_file(f"input/{name}", png_bytes(*spec))
    example = COMFY_DIR / "input" / "example.png"  # what the example workflows load
    if example.is_file():
        shutil.copyfile(example, server.input_dir / "example.png")
    server.add_file(f"input/{DEMO_IMAGE.name}", DEMO_IMAGE)  # the CPU example's (and the demo's) image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-weight CLIP on the CPU, one per test module (the engine's and the CLIP layer's tests)."""
    import pez_core

    return pez_core.load_model(str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))), device="cpu")


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A running ComfyUI with this repo linked in as a custom-node pack (needs `make comfyui`)."""
    hf_cache = tmp_path_factory.mktemp("empty-hf-cache")
    server = ComfyServer(env={"HF_HOME": str(hf_cache), "HF_HUB_CACHE": str(hf_cache / "hub"), "OMP_NUM_THREADS": "1"})
    try:
        prepare_base_dir(server)
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of the server log to failing tests that used ``comfy_server``."""
    report = yield
    server = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and isinstance(server, ComfyServer):
        report.sections.append(("ComfyUI server log (tail)", server.log_text(tail=_LOG_TAIL)))
    return report
