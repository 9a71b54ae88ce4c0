"""The LoRA captioning chain made of ComfyUI's core dataset nodes and the PEZ nodes, through a real server:
Load Image Dataset from Folder (a list of images of different sizes) → PEZ Invert Image (one prompt per image,
in order) → Concat Prompts (the trigger word before each) → Save Image and Text Dataset to Folder (one PNG and
one .txt per image). Also the variant that keeps a folder's existing captions (Load Image and Text Dataset from
Folder: a list of strings into Concat Prompts, an empty one where an image has no caption).

What the core nodes do with file names, in 0.3.75 and 0.33.0 alike: the loaders output only pixels (and
captions), no names, in directory-listing order (not sorted); the saver numbers its files
``<filename_prefix>_00000.png`` and pairs each with ``<same name>.txt``, reading only the first
``filename_prefix``. The original names are lost; PEZ Caption Folder (tests/comfy/test_caption_node.py) writes
``<image name>.txt`` beside each image instead.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from api import invert_node, model_node
from comfy_harness import ComfyServer, RunResult, comfyui_version
from helpers import png_bytes
from paths import REPO_ROOT

LOADER, TEXT_LOADER, SAVER = "LoadImageDataSetFromFolder", "LoadImageTextDataSetFromFolder", "SaveImageTextDataSetToFolder"
TRIGGER = "sks"
PREFIX = "image"
# name -> (image, its colour): sizes and modes differ, so the loader hands them on as a list, not a batch
SOURCES = {
    "red_circle.png": ((REPO_ROOT / "assets" / "pez-demo-red-circle.png").read_bytes(), "red"),      # 64x64 RGB
    "blue_square.png": ((REPO_ROOT / "assets" / "pez-demo-blue-square.png").read_bytes(), "blue"),   # 64x64 RGB
    "green_wide.png": (png_bytes((80, 48), "RGBA", "white", "green", "ellipse"), "green"),          # 80x48 RGBA
}
COLOURS = {colour for _, colour in SOURCES.values()}


def core_node(server: ComfyServer, name: str) -> dict[str, Any]:
    """A core node's object_info, or a skip naming the ComfyUI version that lacks it."""
    spec = server.object_info(name).get(name)
    if not spec:
        pytest.skip(f"ComfyUI {comfyui_version(server.comfy_dir)} has no {name} node")
    return spec


def make_dataset(server: ComfyServer, name: str, captions: dict[str, str] | None = None) -> None:
    """``<input>/<name>`` with the SOURCES images, the given ``<stem>.txt`` captions and a file that is no image."""
    folder = server.input_dir / name
    folder.mkdir()
    for file, (data, _) in SOURCES.items():
        (folder / file).write_bytes(data)
    for file, caption in (captions or {}).items():
        (folder / file).with_suffix(".txt").write_text(caption, encoding="utf-8")
    (folder / "notes.md").write_text("not an image\n")


def chain_graph(loader: str, folder: str, out_folder: str, saver: dict[str, Any], **concat: Any) -> dict[str, Any]:
    save = {"images": ["load", 0], "texts": ["cat", 0], "folder_name": out_folder, "filename_prefix": PREFIX}
    if "mode" in {**saver["input"].get("required", {}), **saver["input"].get("optional", {})}:
        save["mode"] = "overwrite"  # 0.33+: overwrite (numbered from 0) or increment
    return {
        "m": model_node("shapes-demo", device="cpu"),  # the bundled demo CLIP: its prompts name the colour
        "load": {"class_type": loader, "inputs": {"folder": folder}},
        "inv": invert_node(["load", 0], steps=30, length=4),
        "cat": {"class_type": "PEZ_ConcatPrompts",
                "inputs": {"prompt_1": TRIGGER, "prompt_2": ["inv", 0], "separator": ", ", **concat}},
        "save": {"class_type": SAVER, "inputs": save},
    }


def pixels(data: Path | bytes) -> bytes:
    """Size and RGB pixels, as the loader reads an image (alpha dropped) and the saver writes it back."""
    image = Image.open(data if isinstance(data, Path) else io.BytesIO(data)).convert("RGB")
    return repr(image.size).encode() + np.asarray(image).tobytes()


def saved_dataset(server: ComfyServer, out_folder: str) -> list[tuple[str, str, str]]:
    """(saved name, the source image it is, its caption) per saved image, in file order; the saver numbers its
    files, so the source is found by its pixels."""
    out = server.base_dir / "output" / out_folder
    pngs = sorted(p.name for p in out.glob("*.png"))
    txts = sorted(p.name for p in out.glob("*.txt"))
    assert pngs == [f"{PREFIX}_{i:05d}.png" for i in range(len(SOURCES))], pngs  # numbered: names are gone
    assert txts == [name.replace(".png", ".txt") for name in pngs], txts  # one caption per image
    source_of = {pixels(data): name for name, (data, _) in SOURCES.items()}
    sources = [source_of.get(pixels(out / name)) for name in pngs]
    assert sorted(map(str, sources)) == sorted(SOURCES), sources  # each image saved once, unchanged
    return [(png, src, (out / txt).read_text(encoding="utf-8")) for png, src, txt in zip(pngs, sources, txts)]


def prompts_of(result: RunResult) -> tuple[list[str], list[str]]:
    """Invert Image's prompts (one call for the whole list, one per image) and Concat Prompts' joins."""
    assert result.ok, (result.status, (result.error or {}).get("exception_message"))
    prompts, joined = result.outputs["inv"]["text"], result.outputs["cat"]["text"]
    assert len(prompts) == len(joined) == len(SOURCES), (prompts, joined)
    assert all(p.strip() for p in prompts), prompts
    assert len(set(prompts)) > 1, f"every image got the same prompt: {prompts}"  # one per image, not one for all
    return prompts, joined


def test_core_dataset_chain_writes_one_trigger_caption_per_image(comfy_server: ComfyServer) -> None:
    saver = core_node(comfy_server, SAVER)
    core_node(comfy_server, LOADER)
    make_dataset(comfy_server, "pez_lists_chain")
    result = comfy_server.run(chain_graph(LOADER, "pez_lists_chain", "pez_lists_chain_out", saver), timeout=120)
    prompts, joined = prompts_of(result)
    assert joined == [f"{TRIGGER}, {p}" for p in prompts]  # one join per prompt, in order

    saved = saved_dataset(comfy_server, "pez_lists_chain_out")
    assert [caption for _, _, caption in saved] == joined  # file k has prompt k: the lists stay aligned
    for _, source, caption in saved:
        assert caption.startswith(f"{TRIGGER}, ") and caption[len(TRIGGER) + 2:].strip(), caption
        # the caption describes its own image: the demo CLIP names the colour (all seeds, 20-30 steps, measured)
        words = set(caption.split())
        assert words & COLOURS == {SOURCES[source][1]}, (source, caption)


def test_existing_captions_are_kept_between_trigger_and_prompt(comfy_server: ComfyServer) -> None:
    """Two lists into Concat Prompts (the folder's captions and the prompts); an image without a caption file
    gets an empty string from the loader, which Concat skips."""
    saver = core_node(comfy_server, SAVER)
    core_node(comfy_server, TEXT_LOADER)
    existing = {"red_circle.png": "a toy on a table", "green_wide.png": "studio photo"}
    make_dataset(comfy_server, "pez_lists_chain_texts", existing)
    graph = chain_graph(TEXT_LOADER, "pez_lists_chain_texts", "pez_lists_chain_texts_out", saver,
                        prompt_2=["load", 1], prompt_3=["inv", 0])
    prompts, joined = prompts_of(comfy_server.run(graph, timeout=120))

    saved = saved_dataset(comfy_server, "pez_lists_chain_texts_out")
    assert [caption for _, _, caption in saved] == joined
    for (_, source, caption), prompt in zip(saved, prompts, strict=True):
        parts = [TRIGGER, existing[source], prompt] if source in existing else [TRIGGER, prompt]
        assert caption == ", ".join(parts), (source, caption)
        assert set(prompt.split()) & COLOURS == {SOURCES[source][1]}, (source, prompt)
