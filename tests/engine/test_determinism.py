"""A fixed seed gives the same prompt in fresh processes, on a quiet machine and on a busy one.

Each case runs the same job twice in a new process: once on a quiet machine, once while other processes
keep every core busy. Where the job reports its stages, the load lasts only while the PEZ loop runs (so a
rule that compared polishing's time with the loop's would polish more on the second run); the results
must be identical to the last bit (the same device, dtype and thread count).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from comfy_harness import ComfyServer
from helpers import TINY_MODEL, write_tiny_checkpoint
from paths import REPO_ROOT

TEXT = "a small green square on a white background"
LOAD_SECONDS = 300  # a load process ends by itself after this, whatever happens to the test


@contextmanager
def busy_cores() -> Iterator[list[subprocess.Popen]]:
    """One spinning process per core, bounded in time; stopped on exit."""
    spin = f"import time\nend = time.monotonic() + {LOAD_SECONDS}\nwhile time.monotonic() < end: pass"
    load = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        yield load
    finally:
        stop(load)


def stop(load: list[subprocess.Popen]) -> None:
    for process in load:
        process.kill()
        process.wait()


def run_loaded_until_polishing(command: list[str], load: list[subprocess.Popen] | None) -> str:
    """Run ``command``; stop ``load`` once its stderr mentions polishing. Its stdout."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seen = []

    def watch() -> None:
        for chunk in iter(lambda: os.read(process.stderr.fileno(), 4096), b""):
            seen.append(chunk)
            if load and b"polishing" in b"".join(seen[-2:]):
                stop(load)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = process.stdout.read().decode()
    assert process.wait(timeout=600) == 0, b"".join(seen).decode(errors="replace")[-3000:]
    watcher.join(timeout=10)
    assert not load or b"polishing" in b"".join(seen), "the run never reported polishing"
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def quiet_then_busy(command: list[str]) -> tuple[str, str]:
    quiet = run_loaded_until_polishing(command, None)
    with busy_cores() as load:
        busy = run_loaded_until_polishing(command, load)
    return quiet, busy


LIBRARY_RUN = """
import json, sys
import pez_core
model = pez_core.load_model(sys.argv[1], device="cpu")
def progress(p):
    if p.stage == "polishing":
        print("polishing", file=sys.stderr, flush=True)
result = pez_core.distill(model, sys.argv[2], pez_core.PezConfig(prompt_len=16, steps=40, seed=3), callback=progress)
print(json.dumps([result.prompt, result.token_ids, result.similarity, result.unpolished_prompt]))
"""


def test_library_gives_the_same_prompt_quiet_and_busy(tiny_model: Path) -> None:
    quiet, busy = quiet_then_busy([sys.executable, "-c", LIBRARY_RUN, str(tiny_model), TEXT])
    assert json.loads(busy) == json.loads(quiet)


def test_cli_gives_the_same_prompt_quiet_and_busy(tiny_model: Path) -> None:
    command = [sys.executable, "-m", "pez_core", "distill", TEXT, "--model", str(tiny_model),
               "--steps", "40", "--prompt-len", "16", "--seed", "3", "--json"]
    quiet, busy = quiet_then_busy(command)
    assert json.loads(busy)["prompt"] and json.loads(busy) | {"seconds": 0} == json.loads(quiet) | {"seconds": 0}


def test_a_readable_prompt_is_the_same_quiet_and_busy() -> None:
    """The demo model with its fluency prior on (auto): the prior's scores, proposals and draft depend on no clock."""
    command = [sys.executable, "-m", "pez_core", "invert", str(REPO_ROOT / "assets" / "pez-demo-shape.png"),
               "--model", "shapes-demo", "--device", "cpu", "--steps", "40", "--seed", "3", "--json"]
    quiet, busy = quiet_then_busy(command)
    assert json.loads(quiet)["fluency_model"] == "shapes-caption-lm" and json.loads(quiet)["perplexity"] > 0
    assert json.loads(busy) | {"seconds": 0} == json.loads(quiet) | {"seconds": 0}


CAPTION_RUN = """
import json, sys
import numpy as np
import pez_core
model = pez_core.load_model("shapes-demo", device="cpu")
images = list(np.random.default_rng(2).random((3, 32, 32, 3)))
def progress(p):
    if p.stage == "polishing":
        print("polishing", file=sys.stderr, flush=True)
config = pez_core.PezConfig(prompt_len=4, steps=30, seed=3, batch_invariant=True, template="a photo of {}")
results = pez_core.invert(model, images, config, callback=progress)
print(json.dumps([[r.prompt, r.token_ids, r.similarity, r.unpolished_prompt, r.perplexity] for r in results]))
"""


def test_a_caption_jobs_prompts_are_the_same_quiet_and_busy() -> None:
    """What a caption job runs: batch-invariant, with a template and the demo's fluency prior (one prior per
    image, padded lanes, polishing one image at a time, per-image kick budgets)."""
    quiet, busy = quiet_then_busy([sys.executable, "-c", CAPTION_RUN])
    assert len(json.loads(quiet)) == 3 and json.loads(busy) == json.loads(quiet)


def test_comfyui_gives_the_same_prompt_quiet_and_busy(comfy_server: ComfyServer) -> None:
    def graph(seed: int) -> dict:
        return {"m": {"class_type": "PEZ_LoadModel", "inputs": {"model": TINY_MODEL, "precision": "auto",
                                                                 "device": "auto"}},
                "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
                    "pez_model": ["m", 0], "text": TEXT, "target": "length", "prompt_length": 8, "steps": 60,
                    "seed": seed, "vocabulary": "words"}}}

    def run(seed: int):
        result = comfy_server.run(graph(seed), timeout=300)
        assert result.ok, result.error
        assert "d" not in {n for m in result.of_type("execution_cached") for n in m["nodes"]}  # really ran
        return result.outputs["d"]

    quiet = run(3)
    with busy_cores():
        run(4)  # evicts seed 3's cached result, so the next run computes again
        busy = run(3)
    assert busy == quiet
