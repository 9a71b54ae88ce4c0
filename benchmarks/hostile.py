"""Hostile and careless input through a real ComfyUI server: what the user is told, and how fast.

    python benchmarks/hostile.py            # add --rss for the model-cache memory figure (ViT-B-32, ~1 min)

Starts a throw-away ComfyUI (``.comfyui/``) with this pack and a tiny random CLIP, sends each case, and
prints a table: case | outcome | message (shortened) | seconds from queueing to the answer. A second
server whose Hugging Face endpoint is a closed loopback port, then a slow local fake hub, measures the
download cases. Nothing reaches the network.
"""
from __future__ import annotations

import argparse
import json
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the ComfyUI harness and test helpers
from comfy_harness import ComfyServer, PromptRejected  # noqa: E402
from fake_hub import FakeHub, SilentHub, closed_port  # noqa: E402
from helpers import TINY_CONFIG, TINY_MODEL, png_bytes, write_tiny_checkpoint  # noqa: E402

WORD = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(60_000))
CJK = "".join(random.Random(1).choice("日本語中文한국어") for _ in range(50_000))  # one "word" to the BPE
MODEL = {"class_type": "PEZ_LoadModel", "inputs": {"model": TINY_MODEL, "precision": "auto", "device": "auto"}}


def concat(a: Any, b: Any = "x", sep: str = ", ") -> dict:
    return {"c": {"class_type": "PEZ_ConcatPrompts", "inputs": {"prompt_1": a, "prompt_2": b, "separator": sep}}}


def similar(text: Any, other: Any, model: dict = MODEL) -> dict:
    return {"m": model, "s": {"class_type": "PEZ_PromptSimilarity",
                              "inputs": {"pez_model": ["m", 0], "text": text, "other_text": other}}}


def invert(**inputs: Any) -> dict:
    base = {"pez_model": ["m", 0], "images": ["i", 0], "prompt_length": 4, "steps": 2, "restarts": 0,
            "learning_rate": 0.1, "seed": 0, "vocabulary": "words"}
    return {"m": MODEL, "i": {"class_type": "LoadImage", "inputs": {"image": "red.png"}},
            "inv": {"class_type": "PEZ_InvertImage", "inputs": {**base, **inputs}}}


def linked(name: str, value: int) -> dict:
    graph = invert(**{name: ["n", 0]})
    graph["n"] = {"class_type": "PrimitiveInt", "inputs": {"value": value}}
    return graph


def model(name: str) -> dict:
    return similar("a cat", "a dog", {**MODEL, "inputs": {**MODEL["inputs"], "model": name}})


CASES: list[tuple[str, Callable[[], dict]]] = [
    ("Concat: one 30,000-letter word", lambda: concat("a tiger", WORD[:30_000])),
    ("Concat: one 50,000-letter word (the limit)", lambda: concat(WORD[:50_000], "")),
    ("Concat: one 60,000-letter word", lambda: concat("a tiger", WORD)),
    ("Concat: 50,000 CJK characters, no space", lambda: concat(CJK, "")),
    ("Concat: separators only", lambda: concat(" , ", ",,", ",")),
    ("Similarity: 10,000 distinct random words", lambda: similar(" ".join(
        "".join(random.Random(i).choice(string.ascii_lowercase) for _ in range(4)) for i in range(10_000)), "a cat")),
    ("Similarity: a text against itself", lambda: similar("a red circle on white", "a red circle on white")),
    ("Similarity: other prompt only control chars", lambda: similar("a cat", "\x00\x01")),
    ("Distill: 30,000-letter word", lambda: {"m": MODEL, "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
        "pez_model": ["m", 0], "text": WORD[:30_000], "target": "length", "prompt_length": 4, "steps": 2,
        "seed": 0, "vocabulary": "words"}}}),
    ("Invert: blocklist of one 40,000-letter word", lambda: invert(blocklist=WORD[:40_000])),
    ("Invert: restarts 3000 from an Int node", lambda: linked("restarts", 3000)),
    ("Invert: steps 10^9 from an Int node", lambda: linked("steps", 10**9)),
    ("Invert: NaN negative_images", lambda: {**invert(negative_images=["nan", 0]),
        "mask": {"class_type": "SolidMask", "inputs": {"value": "nan", "width": 8, "height": 8}},
        "nan": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}}}),
    ("Load Model: precision 'fp8' (combo)", lambda: {**similar("a", "b", {**MODEL, "inputs": {
        **MODEL["inputs"], "precision": "fp8"}})}),
    ("Load Model: config is JSON null", lambda: model("nullcfg.safetensors")),
    ("Load Model: text width -8", lambda: model("negwidth.safetensors")),
    ("Load Model: width 8192 × 96 layers", lambda: model("hugecfg.safetensors")),
    ("Load Model: context length 64", lambda: model("context64.safetensors")),
    ("Load Model: pickle with an object", lambda: model("ViT-B-32-evil.pt")),
]


class NotATensor:
    pass


def prepare(server: ComfyServer) -> None:
    import torch

    models = server.models_dir
    tiny = write_tiny_checkpoint(models, Path(TINY_MODEL).stem)
    server.add_file("input/red.png", png_bytes((64, 64), "RGB", "white", "red", "ellipse"))
    text = TINY_CONFIG["text_cfg"]
    configs = {"nullcfg": None, "negwidth": {**TINY_CONFIG, "text_cfg": {**text, "width": -8}},
               "hugecfg": {**TINY_CONFIG, "text_cfg": {**text, "width": 8192, "layers": 96, "heads": 64}},
               "context64": {**TINY_CONFIG, "text_cfg": {**text, "context_length": 64}}}
    for name, config in configs.items():
        (models / f"{name}.safetensors").write_bytes(tiny.read_bytes())
        (models / f"{name}.json").write_text(json.dumps(config))
    torch.save({"x": NotATensor()}, str(models / "ViT-B-32-evil.pt"))


def answer(server: ComfyServer, graph: dict, timeout: float = 120) -> tuple[str, str, float]:
    """(outcome, message, seconds from queueing to the answer)."""
    started = time.perf_counter()
    try:
        result = server.run(graph, timeout=timeout)
    except PromptRejected as e:
        errors = [err for node in e.body.get("node_errors", {}).values() for err in node["errors"]]
        named = sorted({err["extra_info"].get("input_name", "?") for err in errors})
        return "refused (400)", f"[{', '.join(named)}] {errors[0]['details'] if errors else e.body}", \
            time.perf_counter() - started
    seconds = time.perf_counter() - started
    if result.ok:
        ui = next(iter(result.outputs.values()), {})
        shown = {k: v for k, v in ui.items() if k != "text"}
        return "result", json.dumps(shown)[:150], seconds
    error = result.error or {}
    return result.status, str(error.get("exception_message", ""))[:150], seconds


def row(case: str, outcome: str, message: str, seconds: float) -> None:
    message = " ".join(message.split()).replace("|", "/")
    print(f"| {case} | {outcome} | {message} | {seconds:.2f} |", flush=True)


def online(cache: Path, endpoint: str) -> ComfyServer:
    """A started ComfyUI that may download (HF_HUB_OFFLINE unset), from ``endpoint`` on loopback."""
    server = ComfyServer(env={"HF_HOME": str(cache), "HF_HUB_OFFLINE": "0", "OMP_NUM_THREADS": "1",
                              "HF_ENDPOINT": endpoint})
    return server.start()


def download_cases() -> None:
    port, cache = closed_port(), Path(tempfile.mkdtemp(prefix="pez-hostile-hf-"))
    preset = model("ViT-B-32 · laion2b_s34b_b79k")
    with SilentHub() as silent:  # takes the connection, never answers
        server = online(cache, silent.url)
        try:
            row("Load Model: preset, hub never answers", *answer(server, preset))
        finally:
            server.stop()
    server = online(cache, f"http://127.0.0.1:{port}")
    try:
        row("Load Model: preset, hub port closed", *answer(server, preset))
        repo = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
        with FakeHub({f"{repo}/open_clip_model.safetensors": (bytes(64 << 20), 0.05)}, port=port):
            prompt_id = server.queue(model("ViT-H-14 · laion2b_s32b_b79k"))
            while not any(m["type"] == "progress" for m in server.messages(prompt_id)):
                time.sleep(0.02)
            started = time.perf_counter()
            server.interrupt()
            result = server.wait(prompt_id, timeout=60)
            row("Load Model: Cancel during a download", result.status, "(time from Cancel to the answer)",
                time.perf_counter() - started)
    finally:
        server.stop()


def rss_case(server: ComfyServer) -> None:
    """Three precisions of a ViT-B-32 (random weights), then ComfyUI's "Free model and node cache"."""
    import psutil
    from open_clip import create_model
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in create_model("ViT-B-32").state_dict().items()},
              str(server.models_dir / "ViT-B-32-random.safetensors"))
    proc = psutil.Process(server._proc.pid)  # noqa: SLF001 - the benchmark's own child
    figures = [f"start {proc.memory_info().rss / 2**30:.2f}"]
    for precision in ("fp32", "bf16", "fp16"):
        graph = model("ViT-B-32-random.safetensors")
        graph["m"]["inputs"] = {**graph["m"]["inputs"], "precision": precision}
        server.run(graph, timeout=300)
        figures.append(f"{precision} {proc.memory_info().rss / 2**30:.2f}")
    server.request("POST", "/free", json={"unload_models": True, "free_memory": True})
    server.run(concat("a", "b"))
    time.sleep(1)
    figures.append(f"after Free {proc.memory_info().rss / 2**30:.2f}")
    row("RSS (GiB), 3 precisions of ViT-B-32, then Free", "measured", " → ".join(figures), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss", action="store_true", help="also the model-cache memory figure (ViT-B-32)")
    args = parser.parse_args()
    print("| case | outcome | message | seconds |\n|---|---|---|---|")
    server = ComfyServer(env={"OMP_NUM_THREADS": "1"})
    prepare(server)
    server.start()
    try:
        answer(server, concat("warm", "up"))
        for case, graph in CASES:
            row(case, *answer(server, graph()))
        if args.rss:
            rss_case(server)
    finally:
        server.stop()
    download_cases()


if __name__ == "__main__":
    main()
