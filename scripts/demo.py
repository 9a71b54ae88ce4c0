"""The README's demo: a real ComfyUI with this pack inverts a sample image with the bundled model.

    python -m scripts.demo           # start ComfyUI, queue the CPU example workflow, print the prompt
    python -m scripts.demo --serve   # start ComfyUI with this pack on http://127.0.0.1:8188 and keep it up

Works offline: the workflow uses the bundled ``shapes-demo`` CLIP, which only knows coloured shapes.
For real images pick a real preset in PEZ Load Model (ViT-L-14 · openai for SD 1.x/SDXL/Flux,
ViT-H-14 for SD 2.x); it downloads on first use.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the ComfyUI harness the tests use too
from comfy_harness import COMFY_DIR, DEFAULT_PYTHON, PACK_NAME, ComfyServer, workflow_to_api  # noqa: E402
from example_inputs import write_caption_demo  # noqa: E402
from paths import SAMPLES  # noqa: E402

WORKFLOW = ROOT / "example_workflows" / "PEZ 1 · Image to prompt on the CPU (offline, no downloads).json"
SAMPLE = ROOT / "assets" / "pez-demo-shape.png"
SERVE_HOME = ROOT / ".comfyui-home"

log = logging.getLogger("demo")


def demo() -> int:
    workflow = json.loads(WORKFLOW.read_text())
    server = ComfyServer(extra_files={f"input/{SAMPLE.name}": SAMPLE})
    write_caption_demo(server.input_dir)  # so the caption example finds its folder in this server's input/ too
    with server:
        log.info("ComfyUI is up on %s; queueing %s", server.url, WORKFLOW.name)
        graph = workflow_to_api(workflow, server.object_info())
        started = time.perf_counter()
        result = server.run(graph, timeout=900)
        if not result.ok:
            log.error("the workflow failed: %s", json.dumps(result.error, indent=2)[:2000])
            return 1
        seconds = time.perf_counter() - started
        print(f"image:      {SAMPLE.relative_to(ROOT)}  (a large red star on a white background)")
        for node_id, node in graph.items():
            ui = result.outputs.get(node_id, {})
            if node["class_type"] == "PEZ_InvertImage":
                print(f"prompt:     {ui['text'][0]}")
                print(f"similarity: {ui['pez_similarity'][0]:.3f}   ({node['inputs']['steps']} steps, "
                      f"{seconds:.0f} s through the ComfyUI API queue)")
            elif node["class_type"] == "PEZ_ConcatPrompts":
                print(f"concat:     {ui['text'][0]}  ({ui['pez_token_count'][0]} CLIP tokens)")
    print("Open the graph editor with `make serve` (http://127.0.0.1:8188), and find the examples in the "
          "template browser under this pack's name. For real images choose a real preset in PEZ Load Model "
          "(ViT-L-14 · openai for SD 1.x, SDXL, Flux; ViT-H-14 for SD 2.x); it downloads on first use.")
    return 0


def serve(port: int) -> None:
    """ComfyUI in the foreground with this pack and the examples' images, in a folder of its own."""
    link = SERVE_HOME / "custom_nodes" / PACK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(ROOT, target_is_directory=True)
    (SERVE_HOME / "input").mkdir(exist_ok=True)
    for sample in SAMPLES:  # copies, not links: ComfyUI 0.33 rejects links that leave input/
        (SERVE_HOME / "input" / sample.name).write_bytes(sample.read_bytes())
    write_caption_demo(SERVE_HOME / "input", fresh=False)  # the caption example's shapes; earlier captions stay
    args = [str(DEFAULT_PYTHON), str(COMFY_DIR / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(SERVE_HOME), "--database-url", f"sqlite:///{SERVE_HOME}/comfyui.db",
            "--disable-auto-launch"]
    import torch
    if not torch.cuda.is_available():
        args.append("--cpu")
    os.execv(args[0], args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep a ComfyUI with this pack running")
    parser.add_argument("--port", type=int, default=8188)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.serve:
        serve(args.port)
    return demo()


if __name__ == "__main__":
    sys.exit(main())
