"""Shared pytest fixtures. ``comfy_server``: one real ComfyUI server per session, started lazily."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # any import mode: `import comfy_harness`
from comfy_harness import ComfyServer  # noqa: E402

_LOG_TAIL = 8000


@pytest.fixture(scope="session")
def comfy_server() -> Iterator[ComfyServer]:
    """A running ComfyUI with this repo linked in as a custom-node pack (needs `make comfyui`)."""
    server = ComfyServer()
    try:
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
