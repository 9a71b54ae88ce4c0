"""Shared pytest fixtures. ``comfy_server``: one real ComfyUI server per session, started lazily.

Before it starts, the server's base directory gets what the node tests use: a tiny random-weight
CLIP checkpoint in ``models/pez`` (``pez-tiny.safetensors`` + ``pez-tiny.json``) and a few small
images in ``input/`` (see ``TEST_IMAGES``, plus ComfyUI's own ``example.png``). Its Hugging Face
cache is an empty folder and HF_HUB_OFFLINE is set, so presets are never found or downloaded.
torch runs single-threaded there: on a shared, busy CPU that is 10-30x faster for the tiny model.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # any import mode: `import conftest`
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # `import comfy_harness`
from comfy_harness import COMFY_DIR, ComfyServer  # noqa: E402

_LOG_TAIL = 8000
TINY_MODEL = "pez-tiny.safetensors"
# node id -> display name: a public contract, never renamed
PEZ_DISPLAY_NAMES = {
    "PEZ_LoadModel": "PEZ Load Model",
    "PEZ_InvertImage": "PEZ Invert Image",
    "PEZ_DistillPrompt": "PEZ Distill Prompt",
    "PEZ_StylePrompt": "Style Prompt from Images",
    "PEZ_ConcatPrompts": "Concat Prompts",
    "PEZ_PromptSimilarity": "PEZ Prompt Similarity",
}
DEMO_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "pez-demo-shape.png"
# name -> (size, mode, background, shape colour, shape): RGB and RGBA PNGs of different sizes
TEST_IMAGES = {
    "pez_red_circle.png": ((64, 64), "RGB", "white", "red", "ellipse"),
    "pez_blue_square.png": ((80, 48), "RGB", "white", "blue", "rectangle"),
    "pez_green_rgba.png": ((40, 40), "RGBA", (0, 0, 0, 0), "green", "ellipse"),
}


def png_bytes(size: tuple[int, int], mode: str, background: object, colour: str, shape: str) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, background)  # type: ignore[arg-type]
    w, h = size
    getattr(ImageDraw.Draw(image), shape)((w // 5, h // 5, w - w // 5, h - h // 5), fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def prepare_base_dir(server: ComfyServer) -> None:
    """Files the node tests need, written before the server starts."""
    from tiny_models import write_tiny_checkpoint

    write_tiny_checkpoint(server.models_dir, Path(TINY_MODEL).stem)
    for name, spec in TEST_IMAGES.items():
        server.add_file(f"input/{name}", png_bytes(*spec))
    example = COMFY_DIR / "input" / "example.png"  # what the example workflows load
    if example.is_file():
        shutil.copyfile(example, server.input_dir / "example.png")
    server.add_file(f"input/{DEMO_IMAGE.name}", DEMO_IMAGE)  # the CPU example's (and the demo's) image


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
