"""The example workflows (UI format, example_workflows/*.json) against the running server.

Every file must match the server's /object_info (node types, widget counts, typed links), is served
by ComfyUI's template browser, and its PEZ part runs: the file is converted to the API format the
way the graph editor does it, models that cannot load offline become the tiny test checkpoint,
steps are cut, and the nodes that need a diffusion checkpoint are left out. The images they load are
the shipped samples in ``assets/`` (which ``make serve`` copies into its ``input/``; the caption example's
folder of demo shapes is made there too, see ``example_inputs.py``), and each PEZ Load
Model that names a preset declares the weights file for the frontend's missing-models dialog. Workflows saved
before pez_core was split into layers (``data/saved-before-layers-*.json``) still run as they were saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from comfy_harness import FRONTEND_ONLY, ComfyServer, input_type, inputs_in_order, is_widget, widget_values_per_input
from comfy_harness import workflow_to_api as to_api
from example_inputs import write_caption_demo
from helpers import TINY_MODEL
from paths import REPO_ROOT, SAMPLES

EXAMPLES = REPO_ROOT / "example_workflows"
FILES = sorted(EXAMPLES.glob("*.json"))
# example workflows as commit 6d9758a shipped them, the last before pez_core/engine existed: fixed test data,
# whatever the examples become
SAVED_BEFORE_LAYERS = sorted((Path(__file__).resolve().parent / "data").glob("saved-before-layers-*.json"))
PROMPT_NODES = {"PEZ_InvertImage", "PEZ_StylePrompt", "PEZ_DistillPrompt"}  # the nodes that learn a prompt
PACK = "pez_hard_prompts"
NEEDS_CHECKPOINT = {"CheckpointLoaderSimple"}
TEST_STEPS = 8


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict[str, Any]:
    for sample in SAMPLES:  # what `make serve` puts into input/ for the examples
        comfy_server.add_file(f"input/{sample.name}", sample)
    write_caption_demo(comfy_server.input_dir)  # the folder the caption example captions
    return comfy_server.object_info()


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def runnable_part(graph: dict[str, dict[str, Any]], models_dir: Path, *, keep_models: bool = False
                  ) -> dict[str, dict[str, Any]]:
    """Drop what needs a diffusion checkpoint; few steps for the PEZ nodes, and (unless ``keep_models``)
    the tiny model for models that cannot load offline."""
    from pez_core import bundled_models

    dropped = {k for k, v in graph.items() if v["class_type"] in NEEDS_CHECKPOINT}
    changed = True
    while changed:  # and everything fed by it
        changed = False
        for key, node in graph.items():
            if key not in dropped and any(isinstance(v, list) and v[0] in dropped for v in node["inputs"].values()):
                dropped.add(key)
                changed = True
    part = {k: json.loads(json.dumps(v)) for k, v in graph.items() if k not in dropped}
    for node in part.values():
        inputs = node["inputs"]
        if node["class_type"] == "PEZ_LoadModel":
            model = inputs["model"]
            if not keep_models and model not in bundled_models() and not (models_dir / model).is_file():
                inputs["model"] = TINY_MODEL  # presets and downloads are not available offline
        if node["class_type"].startswith("PEZ_") and "steps" in inputs:
            inputs["steps"] = TEST_STEPS
    return part


def test_there_are_seven_examples() -> None:
    assert len(FILES) == 7, FILES


def test_templates_are_served(comfy_server: ComfyServer) -> None:
    listed = comfy_server.get_json("/workflow_templates")
    assert sorted(listed[PACK]) == sorted(f.stem for f in FILES)
    for path in FILES:
        resp = comfy_server.request("GET", f"/api/workflow_templates/{PACK}/{quote(path.name)}")
        assert resp.ok, (path.name, resp.status_code)
        assert resp.json() == load(path)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_images_are_shipped_and_models_declared(path: Path) -> None:
    """No "Invalid image file" under `make serve`; the CLIP weights are offered by the missing-models
    dialog the way the SD checkpoint is (`name` in models/pez, a download `url`)."""
    from pez_core import PRESETS, preset_of_file

    shipped = {sample.name for sample in SAMPLES}
    for node in load(path)["nodes"]:
        if node["type"] == "LoadImage":
            assert node["widgets_values"][0] in shipped, (path.name, node["id"], node["widgets_values"][0])
        if node["type"] == "PEZ_LoadModel":
            value = node["widgets_values"][0]
            # the frontend offers a declared model only when a widget holds its name: a preset's file name,
            # which the node loads from models/pez, or (not downloaded yet) as that preset
            assert value not in PRESETS, f"{path.name}: name the preset's file ({PRESETS[value].file_stem}.safetensors)"
            if preset_of_file(value) is None:
                continue
            [model] = node["properties"]["models"]
            assert model["directory"] == "pez" and model["url"].startswith("https://huggingface.co/"), model
            assert model["name"] == value and model["url"].split("?")[0].endswith(".safetensors"), model


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_workflow_matches_the_server(object_info: dict[str, Any], path: Path) -> None:
    workflow = load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    assert workflow["last_node_id"] >= max(nodes)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])
    assert any(node["type"].startswith("PEZ_") for node in nodes.values())
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in object_info, f"{path.name}: unknown node type {node['type']}"
        info = object_info[node["type"]]
        expected = sum(widget_values_per_input(spec) for _, spec in inputs_in_order(info) if is_widget(spec))
        assert len(node["widgets_values"]) == expected, (path.name, node["id"], node["type"])
        cnr = ("pez-hard-prompts", "0.1.0") if node["type"].startswith("PEZ_") else ("comfy-core", "0.3.75")
        assert (node["properties"]["cnr_id"], node["properties"]["ver"]) == cnr
        specs = dict(inputs_in_order(info))
        for entry in node["inputs"]:
            assert entry["name"] in specs, (path.name, node["type"], entry["name"])
            assert entry["type"] == input_type(specs[entry["name"]])
            assert ("widget" in entry) == is_widget(specs[entry["name"]])
        for slot, output in enumerate(node["outputs"]):
            assert output["type"] == info["output"][slot] and output["name"] == info["output_name"][slot]
    seen_links = set()
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        assert link_id not in seen_links
        seen_links.add(link_id)
        out = nodes[origin]["outputs"][origin_slot]
        into = nodes[target]["inputs"][target_slot]
        assert link_id in (out["links"] or []) and into["link"] == link_id, (path.name, link_id)
        assert kind == out["type"] == into["type"], (path.name, link_id)
    for node in nodes.values():  # no dangling link ids
        for entry in node.get("inputs", []):
            assert entry.get("link") is None or entry["link"] in seen_links
        for output in node.get("outputs", []):
            assert set(output["links"] or []) <= seen_links


SHIPPED_WITH_A_PRESET_FILE = [f for f in FILES if any(
    n["type"] == "PEZ_LoadModel" and n["widgets_values"][0].endswith(".safetensors") for n in load(f)["nodes"])]


@pytest.mark.parametrize("path", SHIPPED_WITH_A_PRESET_FILE, ids=[f.stem for f in SHIPPED_WITH_A_PRESET_FILE])
def test_example_as_shipped_passes_validation(comfy_server: ComfyServer, object_info: dict[str, Any], path: Path
                                              ) -> None:
    """Its CLIP weights file not downloaded yet (a fresh install): ComfyUI accepts the graph, and PEZ Load
    Model goes for the preset it names (offline here, so it says which file to save where)."""
    graph = runnable_part(to_api(load(path), object_info), comfy_server.models_dir, keep_models=True)
    result = comfy_server.run(graph, timeout=120)  # a validation error would raise PromptRejected here
    assert result.status == "error" and result.error["node_type"] == "PEZ_LoadModel", (result.status, result.error)
    message = result.error["exception_message"]
    [value] = {n["widgets_values"][0] for n in load(path)["nodes"] if n["type"] == "PEZ_LoadModel"}
    assert f"save it as models/pez/{value} or under any other name" in message, message
    assert "unset HF_HUB_OFFLINE" in message and "pretrained" not in message, message  # no library words


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_pez_part_runs(comfy_server: ComfyServer, object_info: dict[str, Any], path: Path) -> None:
    graph = runnable_part(to_api(load(path), object_info), comfy_server.models_dir)
    pez_nodes = {k: v["class_type"] for k, v in graph.items() if v["class_type"].startswith("PEZ_")}
    text_nodes = [k for k, kind in pez_nodes.items() if kind != "PEZ_LoadModel"]
    assert text_nodes
    result = comfy_server.run(graph, timeout=120)
    assert result.ok, (result.status, (result.error or {}).get("exception_message"))
    for key in text_nodes:
        ui = result.outputs[key]
        assert ui["text"] and all(isinstance(t, str) for t in ui["text"])
        assert "pez_similarity" in ui or "pez_token_count" in ui or "pez_captions" in ui
        for counts in ui.get("pez_captions", []):  # the caption example: every demo shape captioned (now or before)
            assert counts["written"] + counts["skipped"] == counts["total"] > 0 and not counts["failed"], counts


@pytest.mark.parametrize("path", SAVED_BEFORE_LAYERS, ids=[f.stem for f in SAVED_BEFORE_LAYERS])
def test_a_workflow_saved_before_the_layers_runs_unchanged(comfy_server: ComfyServer, object_info: dict[str, Any],
                                                             path: Path) -> None:
    """Converted as the graph editor does and cut down as the examples are (the tiny model for what cannot load
    offline, few steps), a workflow saved by the pack before the layering runs and learns a prompt."""
    graph = runnable_part(to_api(load(path), object_info), comfy_server.models_dir)
    learners = [k for k, v in graph.items() if v["class_type"] in PROMPT_NODES]
    assert learners, path.name
    result = comfy_server.run(graph, timeout=120)
    assert result.ok, (result.status, (result.error or {}).get("exception_message"))
    for key in learners:
        prompts = result.outputs[key]["text"]
        assert prompts and all(isinstance(p, str) and p.strip() for p in prompts), (key, prompts)
