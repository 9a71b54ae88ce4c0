"""The PEZ nodes through a real ComfyUI server's HTTP + websocket API (tiny random-weight CLIP, CPU).

Prompts are learned with a few steps, so they mean nothing; the tests check the plumbing: schema,
execution, UI outputs, lists, progress, cancel, validation and error reporting.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import RawClient, image_node, invert_graph, invert_node, model_node, run_error, run_ok
from comfy_harness import ComfyServer, PromptRejected, RunResult
from helpers import PEZ_DISPLAY_NAMES as DISPLAY_NAMES, TINY_MODEL
from paths import REPO_ROOT

PACK_MODULE = "custom_nodes.pez_hard_prompts"
NODE_LIST = REPO_ROOT / "node_list.json"
TEXT_NODES = set(DISPLAY_NAMES) - {"PEZ_LoadModel", "PEZ_CombineModels"}  # the model nodes
LIVE_KEYS = {"node", "display_node", "step", "total", "similarity", "prompt"}  # the web extension's contract
LIVE_EXTRA = {"prompt_id", "prompts", "similarities", "stage"}
LONG_TEXT = ("a highly detailed oil painting of an old lighthouse on a rocky cliff at sunset, dramatic clouds, "
             "crashing waves, seagulls, warm golden light, deep blue shadows, impasto brush strokes, "
             "in the style of the romantic seascape painters of the nineteenth century, museum quality, "
             "rich texture, cinematic composition, wide angle view from the beach below the cliff, a small boat "
             "with a red sail far out at sea, mist over the water, the first stars in a violet sky")


def text_of(result: RunResult, node: str) -> list[str]:
    return result.outputs[node]["text"]


def combo_options(spec: list[Any]) -> list[Any]:
    """Options of a combo input spec: V1 ``[[options], {...}]`` or V3 ``["COMBO", {"options": [...]}]``."""
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def assert_text_ui(ui: dict[str, Any], n: int) -> None:
    """The UI contract of the text-producing nodes: one string and one float per prompt, and where each
    optimisation ended and what a plain caption scores against the same targets (a node that learns a prompt)."""
    assert {"text", "pez_similarity"} <= set(ui) <= {"text", "pez_similarity", "pez_ended", "pez_reference"}, ui
    assert ("pez_ended" in ui) == ("pez_reference" in ui), ui
    assert len(ui["text"]) == len(ui["pez_similarity"]) == len(ui.get("pez_ended", ui["text"])) == n
    assert len(ui.get("pez_reference", ui["text"])) == n
    assert all(set(r) == {"caption", "similarity"} and isinstance(r["caption"], str) and r["caption"].strip()
               and isinstance(r["similarity"], float) and -1.0 <= r["similarity"] <= 1.0
               for r in ui.get("pez_reference", [])), ui
    assert all(re.fullmatch(r"\d+ steps(, then polishing)?|stopped .*", e) for e in ui.get("pez_ended", [])), ui
    assert all(isinstance(t, str) and t.strip() for t in ui["text"])
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in ui["pez_similarity"])


# --- schema -----------------------------------------------------------------------------------------
LOCALE_NODE_DEFS = REPO_ROOT / "locales" / "en" / "nodeDefs.json"


def test_locales_repeat_the_input_labels(comfy_server: ComfyServer) -> None:
    """Frontend 1.32.9 labels a widget by its input's name unless the pack's locales name it: the labels
    that say what 0 means ("restarts (0 = auto)") are the schemas' display names, repeated in
    locales/en/nodeDefs.json (PEZ_UPDATE_LOCALES=1 rewrites it from the running server)."""
    info = comfy_server.object_info()
    labels = {node_id: {"inputs": {name: {"name": options["display_name"]}
                                   for section in ("required", "optional")
                                   for name, (_type, options) in sorted(info[node_id]["input"].get(section, {}).items())
                                   if options.get("display_name") not in (None, name)}}
              for node_id in sorted(DISPLAY_NAMES)}
    labels = {node_id: entry for node_id, entry in labels.items() if entry["inputs"]}
    assert labels, "no input has a label of its own"
    if os.environ.get("PEZ_UPDATE_LOCALES") == "1":
        LOCALE_NODE_DEFS.write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert json.loads(LOCALE_NODE_DEFS.read_text(encoding="utf-8")) == labels


def test_object_info_lists_the_nodes(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    for node_id, display in DISPLAY_NAMES.items():
        node = info[node_id]
        assert node["display_name"] == display
        assert node["category"] == "PEZ"
        assert node["python_module"] == PACK_MODULE
        assert node["description"]
        assert node["output_node"] is (node_id in TEXT_NODES)
        for section in ("required", "optional"):
            for name, (_type, options) in node["input"].get(section, {}).items():
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        if node_id in TEXT_NODES:
            assert "unique_id" in node["input"]["hidden"]
    models = combo_options(info["PEZ_LoadModel"]["input"]["required"]["model"])
    assert TINY_MODEL in models and "pez-tiny.json" not in models
    assert "ViT-L-14 · openai" in models and "ViT-H-14 · laion2b_s32b_b79k" in models
    invert = info["PEZ_InvertImage"]["input"]
    assert invert["required"]["seed"][1]["control_after_generate"] is True
    assert combo_options(invert["required"]["vocabulary"]) == ["full", "ascii", "words"]
    assert invert["required"]["vocabulary"][1]["default"] == "words"
    assert info["PEZ_InvertImage"]["output_is_list"] == [True, True, True]
    assert info["PEZ_StylePrompt"]["output_is_list"] == [False, False, False]
    for node_id in ("PEZ_InvertImage", "PEZ_StylePrompt", "PEZ_DistillPrompt"):  # appended last: old links hold
        assert info[node_id]["output_name"][-1] == "learned_prompt"
        assert list(info[node_id]["input"]["optional"])[-1] == "template"
    assert combo_options(info["PEZ_DistillPrompt"]["input"]["required"]["target"]) == [
        "length", "0.7", "0.5", "0.3", "0.1"]


def test_the_packs_nodes_folder_does_not_shadow_comfyuis_nodes_module(comfy_server: ComfyServer) -> None:
    """The pack's `nodes/` loads as part of the pack; ComfyUI's own top-level `nodes` keeps its core nodes."""
    info = comfy_server.object_info()
    assert {info[n]["python_module"] for n in ("CLIPTextEncode", "KSampler", "LoadImage")} == {"nodes"}
    assert {info[n]["python_module"] for n in DISPLAY_NAMES} == {PACK_MODULE}
    failed = [line for line in comfy_server.log_text().lower().splitlines()
              if "pez_hard_prompts" in line and ("cannot import" in line or "import failed" in line)]
    assert not failed, failed
    # nor can this test process import the pack's folder as a top-level `nodes` (see conftest.py)
    spec = importlib.util.find_spec("nodes")
    assert spec is None or REPO_ROOT not in Path(spec.origin or "").parents, spec


def test_node_list_json_matches_registered_nodes(comfy_server: ComfyServer) -> None:
    registered = {k for k, v in comfy_server.object_info().items() if v["python_module"] == PACK_MODULE}
    listed = json.loads(NODE_LIST.read_text())
    assert set(listed) == registered == set(DISPLAY_NAMES)
    assert all(isinstance(v, str) and v for v in listed.values())


# --- running each node ------------------------------------------------------------------------------
def test_invert_image(comfy_server: ComfyServer) -> None:
    result = run_ok(comfy_server, invert_graph(steps=20))
    assert_text_ui(result.outputs["inv"], 1)
    progress = [m for m in result.of_type("progress") if m["node"] == "inv"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 20
    live = result.of_type("pez.progress")
    assert live and LIVE_KEYS <= live[-1].keys()
    assert live[-1]["node"] == live[-1]["display_node"] == "inv"
    assert live[-1]["step"] == live[-1]["total"] == 20


def test_polish_and_stopping_inputs(comfy_server: ComfyServer) -> None:
    """The optional inputs appended last: a time budget ends a long run; polish off; a target stops early."""
    budget = run_ok(comfy_server, invert_graph(steps=100_000, polish="swap+prune", time_budget=3.0))
    assert_text_ui(budget.outputs["inv"], 1)
    bars = [m for m in budget.of_type("progress") if m["node"] == "inv"]
    assert bars and bars[-1]["max"] == 100_000 and bars[-1]["value"] < 100_000
    target = run_ok(comfy_server, invert_graph(steps=100_000, polish="off", target_similarity=0.05))
    assert target.outputs["inv"]["pez_similarity"][0] >= 0.05
    try:  # the node names the input at fault ...
        error = run_error(comfy_server, invert_graph(polish="bogus"))
        assert "polish 'bogus' is not one of" in error["exception_message"]
    except PromptRejected as refused:  # ... or ComfyUI does, where it checks V3 combos itself (0.33+)
        assert {e["extra_info"]["input_name"] for e in refused.body["node_errors"]["inv"]["errors"]} == {"polish"}


def test_readability_inputs(comfy_server: ComfyServer) -> None:
    """On the demo model, readability on runs its bundled prior and reports each prompt's perplexity; off reports
    none; on a CLIP whose prior (GPT-2) is not on this offline machine, the error says how to fix it."""
    demo = {**invert_graph(steps=20, length=6), "m": model_node("shapes-demo", device="cpu")}
    on = run_ok(comfy_server, {**demo, "inv": {**demo["inv"], "inputs": {**demo["inv"]["inputs"], "readability": "on",
                                                                         "fluency": 0.05}}})
    [perplexity] = on.outputs["inv"]["pez_perplexity"]
    assert 1 <= perplexity < 1e6
    off = run_ok(comfy_server, {**demo, "inv": {**demo["inv"], "inputs": {**demo["inv"]["inputs"], "readability": "off"}}})
    assert "pez_perplexity" not in off.outputs["inv"]
    error = run_error(comfy_server, invert_graph(readability="on"))
    assert "readability off" in error["exception_message"] and "gpt2" in error["exception_message"]


def test_blocklist_and_negatives(comfy_server: ComfyServer) -> None:
    [prompt] = text_of(run_ok(comfy_server, invert_graph(steps=10, seed=4, length=6)), "inv")
    graph = invert_graph(steps=10, seed=4, length=6, blocklist=", ".join(prompt.split()),
                         negative_images=["neg", 0], negative_text="a blue square")
    graph["neg"] = image_node("pez_blue_square.png")
    result = run_ok(comfy_server, graph)
    [again] = text_of(result, "inv")
    assert not set(again.split()) & set(prompt.split())  # "words": every token is a whole word


def test_invert_batch_gives_a_prompt_list_that_flows_downstream(comfy_server: ComfyServer) -> None:
    graph = {
        "m": model_node(), "a": image_node("pez_red_circle.png"), "b": image_node("pez_blue_square.png"),
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
        "inv": invert_node(["batch", 0]),
        "cat": {"class_type": "PEZ_ConcatPrompts",
                "inputs": {"prompt_1": "a tiger", "prompt_2": ["inv", 0], "separator": ", "}},
    }
    result = run_ok(comfy_server, graph)
    assert_text_ui(result.outputs["inv"], 2)
    prompts = text_of(result, "inv")
    assert text_of(result, "cat") == [f"a tiger, {p}" for p in prompts]  # one join per prompt, in order


def test_invert_image_list_is_optimised_in_one_run(comfy_server: ComfyServer) -> None:
    graph = {  # RebatchImages turns the batch into a list of single images: one call, two prompts
        "m": model_node(), "a": image_node("pez_red_circle.png"), "b": image_node("pez_blue_square.png"),
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
        "list": {"class_type": "RebatchImages", "inputs": {"images": ["batch", 0], "batch_size": 1}},
        "inv": invert_node(["list", 0]),
    }
    result = run_ok(comfy_server, graph)
    assert_text_ui(result.outputs["inv"], 2)
    live = result.of_type("pez.progress")
    assert {m["total"] for m in live} == {12}  # a single optimisation, not one per list item
    assert all(len(m["prompts"]) == len(m["similarities"]) == 2 and m["prompt"] == m["prompts"][0] for m in live)


def test_style_prompt(comfy_server: ComfyServer) -> None:
    graph = {
        "m": model_node(), "a": image_node("pez_red_circle.png"), "b": image_node("pez_blue_square.png"),
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
        "list": {"class_type": "RebatchImages", "inputs": {"images": ["batch", 0], "batch_size": 1}},
        "style": {**invert_node(["list", 0]), "class_type": "PEZ_StylePrompt"},
        "cat": {"class_type": "PEZ_ConcatPrompts",
                "inputs": {"prompt_1": "a tiger, ", "prompt_2": ["style", 0], "separator": ", "}},
    }
    result = run_ok(comfy_server, graph)
    assert_text_ui(result.outputs["style"], 1)
    [style] = text_of(result, "style")
    assert text_of(result, "cat") == [f"a tiger, {style}"]


def test_a_template_puts_the_learned_words_in_its_slot(comfy_server: ComfyServer) -> None:
    """Invert a batch and Style with a template: the prompt is whole, the third output the slot's words."""
    graph = {
        "m": model_node(), "a": image_node("pez_red_circle.png"), "b": image_node("pez_blue_square.png"),
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
        "inv": invert_node(["batch", 0], template="a tiger, {}"),
        "style": {**invert_node(["batch", 0], template="{} in the style of ukiyo-e"), "class_type": "PEZ_StylePrompt"},
        "learned": {"class_type": "PEZ_ConcatPrompts",
                    "inputs": {"prompt_1": ["inv", 2], "prompt_2": ["style", 2], "separator": " | "}},
    }
    result = run_ok(comfy_server, graph)
    prompts, learned = text_of(result, "inv"), text_of(result, "learned")
    [style] = text_of(result, "style")
    assert len(prompts) == len(learned) == 2 and style.endswith(" in the style of ukiyo-e")
    for prompt, both in zip(prompts, learned):
        mine, styles = both.split(" | ")
        assert prompt == f"a tiger, {mine}" and style == f"{styles} in the style of ukiyo-e"
    error = run_error(comfy_server, invert_graph(template="a tiger"))
    assert "template 'a tiger' has no {} slots" in error["exception_message"]


def test_distill_prompt_of_a_long_text(comfy_server: ComfyServer) -> None:
    from pez_core import clip_tokenizer

    assert len(clip_tokenizer().encode(LONG_TEXT)) > 75
    graph = {
        "m": model_node(),
        "text": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": LONG_TEXT}},
        "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
            "pez_model": ["m", 0], "text": ["text", 0], "target": "0.1", "prompt_length": 16, "steps": 10,
            "seed": 0, "vocabulary": "words"}},
        "d2": {"class_type": "PEZ_DistillPrompt", "inputs": {
            "pez_model": ["m", 0], "text": "a red circle on a white background", "target": "length",
            "prompt_length": 3, "steps": 10, "seed": 0, "vocabulary": "ascii"}},
    }
    result = run_ok(comfy_server, graph)
    assert_text_ui(result.outputs["d"], 1)
    assert_text_ui(result.outputs["d2"], 1)


def test_concat_prompts_counts_tokens_and_warns(comfy_server: ComfyServer) -> None:
    from pez_core import clip_tokenizer

    graph = {
        "short": {"class_type": "PEZ_ConcatPrompts", "inputs": {
            "prompt_1": "a tiger, ", "prompt_2": "watercolor, soft light", "separator": ", ",
            "prompt_3": "", "prompt_4": "  "}},
        "long": {"class_type": "PEZ_ConcatPrompts", "inputs": {
            "prompt_1": "tiger " * 50, "prompt_2": "stripes " * 40, "separator": " | "}},
    }
    result = run_ok(comfy_server, graph)
    short, long = result.outputs["short"], result.outputs["long"]
    assert short == {"text": ["a tiger, watercolor, soft light"], "pez_token_count": [7]}
    [text] = long["text"]
    assert long["pez_token_count"] == [len(clip_tokenizer().encode(text))] and long["pez_token_count"][0] > 75
    [warning] = long["pez_warning"]
    assert f"{long['pez_token_count'][0]} CLIP tokens" in warning and "75" in warning


def test_prompt_similarity(comfy_server: ComfyServer) -> None:
    graph = {
        **invert_graph(steps=10),
        "same_text": {"class_type": "PEZ_PromptSimilarity", "inputs": {
            "pez_model": ["m", 0], "text": "a red circle", "other_text": "a red circle"}},
        "vs_image": {"class_type": "PEZ_PromptSimilarity", "inputs": {
            "pez_model": ["m", 0], "text": ["inv", 0], "images": ["img", 0]}},
    }
    result = run_ok(comfy_server, graph)
    assert_text_ui(result.outputs["same_text"], 1)
    assert result.outputs["same_text"]["pez_similarity"][0] == pytest.approx(1.0, abs=1e-4)
    # the inverted prompt scored against its image: the similarity PEZ Invert Image reported
    assert text_of(result, "vs_image") == text_of(result, "inv")
    assert result.outputs["vs_image"]["pez_similarity"][0] == pytest.approx(
        result.outputs["inv"]["pez_similarity"][0], abs=1e-4)


def test_same_seed_same_prompt(comfy_server: ComfyServer) -> None:
    first = run_ok(comfy_server, invert_graph(steps=15, seed=7, length=6))
    other = run_ok(comfy_server, invert_graph(steps=15, seed=8, length=6))
    again = run_ok(comfy_server, invert_graph(steps=15, seed=7, length=6))
    cached = {n for m in again.of_type("execution_cached") for n in m["nodes"]}
    assert "inv" not in cached  # really computed again (seed 8 evicted the first result)
    assert text_of(again, "inv") == text_of(first, "inv")
    assert again.outputs["inv"]["pez_similarity"] == first.outputs["inv"]["pez_similarity"]
    assert text_of(other, "inv") != text_of(first, "inv")


# --- images that must work ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["1x1", "rgba_join", "rgba_png"])
def test_odd_images_work(comfy_server: ComfyServer, source: str) -> None:
    graphs = {
        "1x1": {"src": {"class_type": "EmptyImage",
                        "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": 0x336699}}},
        "rgba_join": {  # a 4-channel IMAGE
            "img": image_node("pez_green_rgba.png"),
            "src": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["img", 0], "alpha": ["img", 1]}}},
        "rgba_png": {"src": image_node("pez_green_rgba.png")},
    }
    graph = {**graphs[source], "m": model_node(), "inv": invert_node(["src", 0], steps=6)}
    result = run_ok(comfy_server, graph)
    assert_text_ui(result.outputs["inv"], 1)


# --- progress, live text, cancel ------------------------------------------------------------------------
def test_live_progress_for_the_web_extension(comfy_server: ComfyServer) -> None:
    graph = {**invert_graph(steps=120, seed=3), "cat": {"class_type": "PEZ_ConcatPrompts", "inputs": {
        "prompt_1": ["inv", 0], "prompt_2": "word " * 80, "separator": ", "}}}
    client = RawClient(comfy_server)
    try:
        prompt_id, frames = client.run(graph)
    finally:
        client.close()
    msgs = [f for _, f in frames if isinstance(f, dict)]
    assert msgs[-1]["type"] == "execution_success"
    live = [(t, m["data"]) for t, m in frames if isinstance(m, dict) and m["type"] == "pez.progress"]
    texts = [f[2] for _, f in frames if isinstance(f, tuple) and f[1] == "inv"]
    assert live and texts
    for _, data in live:
        assert data.keys() == LIVE_KEYS | LIVE_EXTRA and data["node"] == data["display_node"] == "inv"
        assert data["prompt_id"] == prompt_id
        assert data["total"] == 120 and 0 < data["step"] <= 120
        assert isinstance(data["similarity"], float) and isinstance(data["prompt"], str)
    assert live[-1][1]["step"] == 120
    assert all((t.startswith("step ") or t.startswith("polishing")) and " · sim " in t for t in texts)
    assert any(t.startswith("step 120/120 · sim ") for t in texts)
    assert {data["stage"] for _, data in live} <= {"pez", "polishing"}
    started = next(t for t, m in frames if isinstance(m, dict) and m["type"] == "executing"
                   and (m.get("data") or {}).get("node") == "inv")
    ended = next(t for t, m in frames if isinstance(m, dict) and m["type"] == "executed"
                 and (m.get("data") or {}).get("node") == "inv")
    assert len(live) <= (ended - started) / 0.25 + 2  # throttled to ~4 a second
    bars = [m["data"] for m in msgs if m["type"] == "progress" and m["data"]["node"] == "inv"]
    assert bars and bars[-1]["value"] == bars[-1]["max"] == 120
    [warning] = [f[2] for _, f in frames if isinstance(f, tuple) and f[1] == "cat"]  # shown on the node
    assert "CLIP tokens, over CLIP's limit of 75" in warning


def test_interrupt_stops_a_long_run(comfy_server: ComfyServer) -> None:
    """Cancel ends a 100,000-step run long before its end (how fast is measured by benchmarks/hostile.py)."""
    prompt_id = comfy_server.queue(invert_graph(steps=100_000, seed=5))
    deadline = time.monotonic() + 60
    while not any(m["type"] == "progress" and m["data"].get("node") == "inv"
                  for m in comfy_server.messages(prompt_id)):
        assert time.monotonic() < deadline, "the long run never reported progress"
        time.sleep(0.05)
    comfy_server.interrupt()
    result = comfy_server.wait(prompt_id, timeout=60)  # a hang guard, not a timing claim
    assert result.status == "interrupted"
    bars = [m["data"] for m in result.messages if m["type"] == "progress" and m["data"].get("node") == "inv"]
    assert bars[-1]["value"] < bars[-1]["max"] // 10, bars[-1]  # it stopped early, not at the end
    assert_text_ui(run_ok(comfy_server, invert_graph(steps=5, seed=6)).outputs["inv"], 1)


# --- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value"), [
    ("prompt_length", 0), ("prompt_length", 76), ("steps", 0), ("restarts", -1), ("learning_rate", 0.0),
    ("vocabulary", "emoji"),
])
def test_out_of_range_widgets_are_rejected(comfy_server: ComfyServer, name: str, value: Any) -> None:
    graph = invert_graph()
    graph["inv"]["inputs"][name] = value
    with pytest.raises(PromptRejected) as excinfo:
        comfy_server.queue(graph)
    assert excinfo.value.status == 400
    node = excinfo.value.body["node_errors"]["inv"]
    assert node["class_type"] == "PEZ_InvertImage"
    assert any(e["extra_info"]["input_name"] == name for e in node["errors"])


def _nan_image_graph() -> dict[str, Any]:
    # SolidMask's value widget converts the string "nan" with float(); the range check lets NaN through
    return {"m": model_node(),
            "mask": {"class_type": "SolidMask", "inputs": {"value": "nan", "width": 8, "height": 8}},
            "img": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
            "inv": invert_node(["img", 0])}


def _model_graph(model: str) -> dict[str, Any]:
    return {**invert_graph(), "m": model_node(model)}


PRESET_FILE = "ViT-B-32-laion2b_s34b_b79k.safetensors"  # where the offline error says to save the preset
BAD_INPUTS = {  # graph, failing node type, fragments the message must contain
    "empty distill text": (lambda: {"m": model_node(), "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
        "pez_model": ["m", 0], "text": "  ", "target": "0.5", "prompt_length": 4, "steps": 5, "seed": 0,
        "vocabulary": "words"}}}, "PEZ_DistillPrompt", ["empty"]),
    "empty similarity prompt": (lambda: {"m": model_node(), "s": {"class_type": "PEZ_PromptSimilarity", "inputs": {
        "pez_model": ["m", 0], "text": "", "other_text": "a cat"}}}, "PEZ_PromptSimilarity", ["empty"]),
    "nothing to compare": (lambda: {"m": model_node(), "s": {"class_type": "PEZ_PromptSimilarity", "inputs": {
        "pez_model": ["m", 0], "text": "a cat", "other_text": ""}}}, "PEZ_PromptSimilarity", ["images"]),
    "NaN image": (_nan_image_graph, "PEZ_InvertImage", ["NaN"]),
    "missing model file": (lambda: _model_graph("missing.safetensors"), "PEZ_LoadModel",
                           ["missing.safetensors", "models/pez"]),
    "model without config": (lambda: _model_graph("noconfig.safetensors"), "PEZ_LoadModel",
                             ["noconfig.safetensors", "noconfig.json"]),
    "corrupt model file": (lambda: _model_graph("broken.safetensors"), "PEZ_LoadModel",
                           ["broken.safetensors", "damaged"]),
    "preset offline": (lambda: _model_graph("ViT-H-14 · laion2b_s32b_b79k"), "PEZ_LoadModel",
                       ["ViT-H-14-laion2b_s32b_b79k.safetensors", "models/pez", "HF_HUB_OFFLINE"]),
    "preset file in models/pez is used": (lambda: _model_graph("ViT-B-32 · laion2b_s34b_b79k"), "PEZ_LoadModel",
                                          [PRESET_FILE, "damaged"]),
    # the examples name a preset's file, so the missing-models dialog offers it; until it is downloaded
    # the node loads the preset (offline here: the error says where to save the file)
    "preset file name, not downloaded": (lambda: _model_graph("ViT-H-14-laion2b_s32b_b79k.safetensors"),
                                         "PEZ_LoadModel", ["ViT-H-14-laion2b_s32b_b79k.safetensors", "HF_HUB_OFFLINE"]),
    "preset file name, downloaded": (lambda: _model_graph(PRESET_FILE), "PEZ_LoadModel", [PRESET_FILE, "damaged"]),
    "unknown model name": (lambda: _model_graph("ViT-Q-99 · nothing"), "PEZ_LoadModel",
                           ["ViT-Q-99 · nothing", "ViT-L-14 · openai", TINY_MODEL]),
}


@pytest.fixture(scope="module")
def bad_model_files(comfy_server: ComfyServer) -> Iterator[None]:
    """Damaged checkpoints (one with a valid config, one named like a preset's offline file) and a good
    one without config, added while the server runs; removed afterwards."""
    models = comfy_server.models_dir
    files = {
        "broken.safetensors": b"this is not a safetensors file" * 10,
        "broken.json": (models / "pez-tiny.json").read_bytes(),
        "noconfig.safetensors": (models / TINY_MODEL).read_bytes(),
        PRESET_FILE: b"not the real ViT-B-32 weights",
    }
    for name, content in files.items():
        (models / name).write_bytes(content)
    yield
    for name in files:
        (models / name).unlink(missing_ok=True)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_an_execution_error(comfy_server: ComfyServer, bad_model_files: None, case: str) -> None:
    make_graph, node_type, fragments = BAD_INPUTS[case]
    error = run_error(comfy_server, make_graph())
    assert error["node_type"] == node_type
    message = error["exception_message"]
    for fragment in fragments:
        assert fragment in message, message
    assert comfy_server.system_stats()  # still serving


def test_server_keeps_serving_after_errors(comfy_server: ComfyServer) -> None:
    run_error(comfy_server, _nan_image_graph())
    run_error(comfy_server, _model_graph("missing.safetensors"))
    result = run_ok(comfy_server, invert_graph(steps=5, seed=11))
    assert_text_ui(result.outputs["inv"], 1)
    assert math.isfinite(result.outputs["inv"]["pez_similarity"][0])


def test_every_node_is_found_by_what_other_tools_call_it(comfy_server: ComfyServer) -> None:
    """Where this ComfyUI's schema has search aliases (0.33 has, 0.3.75 not), the node search knows them."""
    info = comfy_server.object_info()
    if not any("search_aliases" in info[n] for n in DISPLAY_NAMES):
        pytest.skip("this ComfyUI's node schema has no search aliases")
    aliases = {n: set(info[n].get("search_aliases") or ()) for n in DISPLAY_NAMES}
    assert {"caption", "interrogate", "image to prompt", "img2prompt"} <= aliases["PEZ_InvertImage"]
    assert "caption folder" in aliases["PEZ_CaptionFolder"] and all(aliases.values())
