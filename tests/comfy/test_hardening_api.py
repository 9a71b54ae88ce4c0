"""Hostile and careless input through a real ComfyUI server, where a user meets it: refused (or answered),
the input at fault named, the server alive and the next prompt fine. Times are measured by
benchmarks/hostile.py, not asserted here."""
from __future__ import annotations

import json
import random
import re
import string
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from api import RawClient, invert_graph, model_node, run_error, run_ok
from comfy_harness import ComfyServer, PromptRejected
from fake_hub import FakeHub, closed_port
from helpers import TINY_CONFIG, write_tiny_checkpoint

LONG_WORD = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(30_000))


def concat(**inputs: Any) -> dict[str, Any]:
    return {"class_type": "PEZ_ConcatPrompts", "inputs": {"prompt_1": "", "prompt_2": "", "separator": ", ", **inputs}}


def similarity(text: Any, other: Any = "", **extra: Any) -> dict[str, Any]:
    return {"class_type": "PEZ_PromptSimilarity",
            "inputs": {"pez_model": ["m", 0], "text": text, "other_text": other, **extra}}


def assert_next_prompt_ok(server: ComfyServer) -> None:
    assert server.system_stats()
    result = run_ok(server, {"c": concat(prompt_1="a tiger", prompt_2="watercolor")})
    assert result.outputs["c"]["text"] == ["a tiger, watercolor"]


# --- 1. long text ---------------------------------------------------------------------------------------
def test_a_30000_letter_word_in_concat_prompts_is_answered(comfy_server: ComfyServer) -> None:
    result = run_ok(comfy_server, {"c": concat(prompt_1="a tiger", prompt_2=LONG_WORD)})
    [count] = result.outputs["c"]["pez_token_count"]
    assert count > 3000 and "over CLIP's limit" in result.outputs["c"]["pez_warning"][0]
    assert_next_prompt_ok(comfy_server)


@pytest.mark.parametrize(("graph", "fragment"), [
    (lambda big: {"c": concat(prompt_1="a", prompt_2=big)}, "prompt_2 has 60,000 characters"),
    (lambda big: {"c": concat(prompt_1="a", prompt_2="b", separator=big)}, "separator has 60,000 characters"),
    (lambda big: {"m": model_node(), "s": similarity("a cat", big)}, "other prompt has 60,000 characters"),
    (lambda big: {"m": model_node(), "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
        "pez_model": ["m", 0], "text": big, "target": "0.5", "prompt_length": 4, "steps": 2, "seed": 0,
        "vocabulary": "words"}}}, "text has 60,000 characters"),
    (lambda big: {**invert_graph(blocklist=big)}, "blocklist has 60,000 characters"),
    (lambda big: {**invert_graph(negative_text=big)}, "negative_text has 60,000 characters"),
])
def test_texts_over_the_limit_are_refused_naming_the_input(comfy_server: ComfyServer, graph, fragment) -> None:
    error = run_error(comfy_server, graph("x" * 60_000))
    assert fragment in error["exception_message"]
    assert_next_prompt_ok(comfy_server)


# --- 2. linked inputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("restarts", 3000, "restarts must be an integer from 1 to 64, got 3000"),
    ("steps", 10**9, "steps must be an integer from 1 to 100000, got 1000000000"),
    ("prompt_length", 500, "prompt length must be an integer from 1 to 75"),
    ("seed", -5, "seed must be an integer from 0"),
])
def test_linked_values_past_the_widget_bounds_are_refused(comfy_server: ComfyServer, name, value, fragment) -> None:
    graph = invert_graph()
    graph["n"] = {"class_type": "PrimitiveInt", "inputs": {"value": value}}
    graph["inv"]["inputs"][name] = ["n", 0]
    error = run_error(comfy_server, graph)
    assert error["node_type"] == "PEZ_InvertImage" and fragment in error["exception_message"]
    assert_next_prompt_ok(comfy_server)


# --- 3. memory comes back -------------------------------------------------------------------------------------
def test_free_model_and_node_cache_releases_pez_models(comfy_server: ComfyServer) -> None:
    run_ok(comfy_server, {"m": model_node(), "s": similarity("a cat", "a dog")})
    before = comfy_server.log_text().count("PEZ: released")
    resp = comfy_server.request("POST", "/free", json={"unload_models": True, "free_memory": True})
    assert resp.ok
    run_ok(comfy_server, {"c": concat(prompt_1="a", prompt_2="b")})  # the flags are read after a prompt
    deadline = time.monotonic() + 30  # ComfyUI unloads once the prompt is done: poll, do not race it
    while comfy_server.log_text().count("PEZ: released") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert comfy_server.log_text().count("PEZ: released") == before + 1
    assert re.search(r"PEZ: released [1-9]\d* cached model\(s\)", comfy_server.log_text())
    run_ok(comfy_server, {"m": model_node(), "s": similarity("a cat", "a dog")})  # loads again


def test_a_replaced_checkpoint_is_reloaded(comfy_server: ComfyServer) -> None:
    write_tiny_checkpoint(comfy_server.models_dir, "pez-swap", seed=1)
    graph = {"m": model_node("pez-swap.safetensors"), "s": similarity("a red circle", "a blue square")}
    first = run_ok(comfy_server, graph).outputs["s"]["pez_similarity"][0]
    write_tiny_checkpoint(comfy_server.models_dir, "pez-swap", seed=2)
    graph["s"]["inputs"]["text"] = "a red circle "  # a new input, so ComfyUI runs the nodes again
    second = run_ok(comfy_server, graph).outputs["s"]["pez_similarity"][0]
    assert second != pytest.approx(first, abs=1e-6)


class NotATensor:
    """An object in a pickle: loading it would run code (torch's weights_only refuses it)."""


# --- 4. model files ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_model_files(comfy_server: ComfyServer) -> Iterator[None]:
    models = comfy_server.models_dir
    tiny = write_tiny_checkpoint(Path(tempfile.mkdtemp()), "t")
    configs = {"nullcfg": None, "listcfg": [1, 2],
               "negwidth": {**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "width": -8}},
               "context64": {**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "context_length": 64}}}
    for name, config in configs.items():
        (models / f"{name}.safetensors").write_bytes(tiny.read_bytes())
        (models / f"{name}.json").write_text(json.dumps(config))

    torch.save({"x": NotATensor()}, str(models / "ViT-B-32-evil.pt"))
    yield
    for name in [*configs, "ViT-B-32-evil"]:
        for suffix in (".safetensors", ".json", ".pt"):
            (models / f"{name}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize(("model", "fragments"), [
    ("nullcfg.safetensors", ["nullcfg.json must be an open_clip model config"]),
    ("listcfg.safetensors", ["listcfg.json must be an open_clip model config"]),
    ("negwidth.safetensors", ["text_cfg.width is -8"]),
    ("context64.safetensors", ["context length of 77", "context_length"]),
    ("ViT-B-32-evil.pt", ["could run code", "not loaded"]),
])
def test_hostile_model_files_are_refused_before_building(comfy_server: ComfyServer, hostile_model_files: None,
                                                          model: str, fragments: list[str]) -> None:
    error = run_error(comfy_server, {"m": model_node(model), "s": similarity("a cat", "a dog")})
    assert error["node_type"] == "PEZ_LoadModel"
    for fragment in fragments:
        assert fragment in error["exception_message"]
    assert "weights_only" not in error["exception_message"]
    assert_next_prompt_ok(comfy_server)


# --- 6. the input at fault is named -------------------------------------------------------------------------------
@pytest.mark.parametrize(("node", "graph_of", "name"), [
    ("d", lambda: {"m": model_node(), "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
        "pez_model": ["m", 0], "text": "a cat", "target": "0.5", "prompt_length": 4, "steps": 2, "seed": 0,
        "vocabulary": "emoji"}}}, "vocabulary"),
])
def test_a_wrong_combo_is_reported_against_that_input_only(comfy_server: ComfyServer, node, graph_of, name) -> None:
    with pytest.raises(PromptRejected) as excinfo:
        comfy_server.queue(graph_of())
    errors = excinfo.value.body["node_errors"][node]["errors"]
    assert {e["extra_info"]["input_name"] for e in errors} == {name}


@pytest.mark.parametrize("value", [42, {"name": "pez-tiny.safetensors"}])
def test_a_model_that_is_no_name_is_refused_naming_the_input(comfy_server: ComfyServer, value: Any) -> None:
    with pytest.raises(PromptRejected) as excinfo:
        comfy_server.queue({"m": {**model_node(), "inputs": {**model_node()["inputs"], "model": value}},
                            "s": similarity("a", "b")})
    [error] = excinfo.value.body["node_errors"]["m"]["errors"]
    assert error["extra_info"]["input_name"] == "model"
    assert f"model must be a model name (text), got {type(value).__name__} {value!r}" in error["details"]
    assert "choose one of: " in error["details"]
    assert_next_prompt_ok(comfy_server)


@pytest.mark.parametrize(("graph_of", "node_type", "fragment"), [
    (lambda: {"m": {**model_node(), "inputs": {**model_node()["inputs"], "device": "gpu"}},
              "s": similarity("a", "b")}, "PEZ_LoadModel", "device 'gpu' is not one of: auto, cpu"),
    (lambda: {"m": {**model_node(), "inputs": {**model_node()["inputs"], "precision": "fp8"}},
              "s": similarity("a", "b")}, "PEZ_LoadModel", "precision 'fp8' is not one of: auto, fp32"),
    (lambda: {"m": model_node(), "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
        "pez_model": ["m", 0], "text": "a cat", "target": "0.9", "prompt_length": 4, "steps": 2, "seed": 0,
        "vocabulary": "words"}}}, "PEZ_DistillPrompt", "target '0.9' is not one of"),
    (lambda: {"m": model_node(), "s": similarity("a cat", "\x00\x01")}, "PEZ_PromptSimilarity",
     "the other prompt is empty to CLIP"),
    (lambda: {"m": model_node(), "s": similarity("\x00", "a cat")}, "PEZ_PromptSimilarity",
     "the prompt to score is empty to CLIP"),
    (lambda: {**invert_graph(negative_images=["nan", 0]),
              "mask": {"class_type": "SolidMask", "inputs": {"value": "nan", "width": 8, "height": 8}},
              "nan": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}}},
     "PEZ_InvertImage", "negative_images: the image contains NaN"),
    (lambda: {**invert_graph(negative_text="\x00")}, "PEZ_InvertImage", "negative_text is empty to CLIP"),
])
def test_errors_name_the_input_at_fault(comfy_server: ComfyServer, graph_of, node_type, fragment) -> None:
    try:  # the node names the input at fault ...
        error = run_error(comfy_server, graph_of())
        assert error["node_type"] == node_type and fragment in error["exception_message"]
    except PromptRejected as refused:  # ... or ComfyUI does, where it checks V3 combo values itself (0.33+)
        [errors] = [e["errors"] for e in refused.body["node_errors"].values() if e["class_type"] == node_type]
        assert {e["extra_info"]["input_name"] for e in errors} == {fragment.split()[0]}, errors
    assert_next_prompt_ok(comfy_server)


def test_concat_of_separators_only_warns(comfy_server: ComfyServer) -> None:
    result = run_ok(comfy_server, {"c": concat(prompt_1=" , ", prompt_2=",,", separator=",")})
    assert result.outputs["c"]["text"] == [""]
    [warning] = result.outputs["c"]["pez_warning"]
    assert "empty" in warning and "separator" in warning


# --- 7. similarities stay in [-1, 1] ----------------------------------------------------------------------------------
def test_a_text_scored_against_itself_is_at_most_one(comfy_server: ComfyServer) -> None:
    texts = ["a red circle", "a photo of a cat on a sofa", "tiger " * 30, LONG_WORD[:300]]
    graph: dict[str, Any] = {"m": model_node()}
    for i, text in enumerate(texts):
        graph[f"s{i}"] = similarity(text, text)
    result = run_ok(comfy_server, graph)
    for i in range(len(texts)):
        [value] = result.outputs[f"s{i}"]["pez_similarity"]
        assert value <= 1.0 and value == pytest.approx(1.0, abs=1e-4)


# --- 5 + issue 12: downloads (a second server whose Hugging Face endpoint is a loopback port) ------------------------
PRESETS_REPOS = {"ViT-H-14 · laion2b_s32b_b79k": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 "ViT-bigG-14 · laion2b_s39b_b160k": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"}


@pytest.fixture(scope="module")
def online_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ComfyServer, int]]:
    """ComfyUI "online" (HF_HUB_OFFLINE unset) with HF_ENDPOINT on a loopback port nothing listens on yet."""
    port = closed_port()
    cache = tmp_path_factory.mktemp("online-hf-cache")
    server = ComfyServer(env={"HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub"), "HF_HUB_OFFLINE": "0",
                              "HF_ENDPOINT": f"http://127.0.0.1:{port}", "OMP_NUM_THREADS": "1"})
    try:
        server.start()
        yield server, port
    finally:
        server.stop()


def load_graph(preset: str) -> dict[str, Any]:
    return {"m": model_node(preset), "s": similarity("a cat", "a dog")}


def test_an_unreachable_hub_fails_with_the_file_to_save(online_server) -> None:
    server, _ = online_server
    error = run_error(server, load_graph("ViT-B-32 · laion2b_s34b_b79k"), timeout=60)
    message = error["exception_message"]
    assert error["node_type"] == "PEZ_LoadModel"
    assert "could not download the weights of ViT-B-32 / laion2b_s34b_b79k" in message
    assert "models/pez/ViT-B-32-laion2b_s34b_b79k.safetensors" in message
    assert server.system_stats()


def test_a_download_shows_its_size_and_progress_on_the_node(online_server) -> None:
    server, port = online_server
    preset, repo = "ViT-H-14 · laion2b_s32b_b79k", PRESETS_REPOS["ViT-H-14 · laion2b_s32b_b79k"]
    content = b"not a model" * (3 << 20)  # 33 MB: several progress steps; fails to load afterwards
    with FakeHub({f"{repo}/open_clip_model.safetensors": (content, 0.002)}, port=port):
        client = RawClient(server)
        try:
            _, frames = client.run(load_graph(preset), timeout=120)
        finally:
            client.close()
    texts = [f[2] for _, f in frames if isinstance(f, tuple) and f[1] == "m"]
    assert any("open_clip_model.safetensors, 34.6 MB" in t and "Cancel" in t for t in texts), texts
    bars = [f["data"] for _, f in frames if isinstance(f, dict) and f["type"] == "progress"
            and f["data"]["node"] == "m"]
    assert bars and bars[-1]["value"] == bars[-1]["max"] == len(content)
    assert any(b["value"] < len(content) for b in bars)
    [error] = [f["data"] for _, f in frames if isinstance(f, dict) and f["type"] == "execution_error"]
    assert "damaged" in error["exception_message"]  # downloaded, then checked


def test_a_download_can_be_cancelled(online_server) -> None:
    import time

    server, port = online_server
    preset, repo = "ViT-bigG-14 · laion2b_s39b_b160k", PRESETS_REPOS["ViT-bigG-14 · laion2b_s39b_b160k"]
    with FakeHub({f"{repo}/open_clip_model.safetensors": (bytes(64 << 20), 0.05)}, port=port):  # ~50 s
        prompt_id = server.queue(load_graph(preset))
        deadline = time.monotonic() + 60
        while not any(m["type"] == "progress" and m["data"].get("node") == "m" for m in server.messages(prompt_id)):
            assert time.monotonic() < deadline, "the download never reported progress"
            time.sleep(0.05)
        server.interrupt()
        result = server.wait(prompt_id, timeout=30)
    assert result.status == "interrupted"
    assert server.system_stats()
