"""One prompt for several models through a real ComfyUI server: PEZ Combine Models and the SDXL preset.

Tiny random towers of different widths stand in for the real models: two checkpoints for Combine,
and two saved under the SDXL preset's offline file names (ViT-L-14-openai, ViT-bigG-14-laion2b_s39b_b160k).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from comfy_harness import ComfyServer
from helpers import TINY_MODEL, write_variant

SDXL = "SDXL (ViT-L-14 · openai + ViT-bigG-14 · laion2b_s39b_b160k)"
FILES = {"pez-joint-a": (16, 32, 3), "pez-joint-b": (24, 40, 4),  # name: text width, embed dim, seed
         "ViT-L-14-openai": (16, 32, 5), "ViT-bigG-14-laion2b_s39b_b160k": (24, 48, 6)}


@pytest.fixture(scope="module")
def joint_files(comfy_server: ComfyServer) -> Iterator[None]:
    """The tiny towers, added while the server runs (ComfyUI re-reads a changed model folder); removed after."""
    folder = comfy_server.models_dir
    for name, (width, dim, seed) in FILES.items():
        write_variant(folder, name, width, dim, seed)
    yield
    for name in FILES:
        for suffix in (".safetensors", ".json"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)


def load(model: str) -> dict[str, Any]:
    return {"class_type": "PEZ_LoadModel", "inputs": {"model": model, "precision": "auto", "device": "auto"}}


def combine(*weights: float) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for n, weight in enumerate(weights, 1):
        inputs[f"pez_model_{n}"], inputs[f"weight_{n}"] = [f"m{n}", 0], weight
    return {"class_type": "PEZ_CombineModels", "inputs": inputs}


def invert(model: str, steps: int = 10) -> dict[str, Any]:
    return {"class_type": "PEZ_InvertImage", "inputs": {
        "pez_model": [model, 0], "images": ["img", 0], "prompt_length": 4, "steps": steps, "restarts": 0,
        "learning_rate": 0.1, "seed": 0, "vocabulary": "words"}}


def distill(model: str) -> dict[str, Any]:
    return {"class_type": "PEZ_DistillPrompt", "inputs": {
        "pez_model": [model, 0], "text": "a red circle on a white background", "target": "length",
        "prompt_length": 4, "steps": 10, "seed": 0, "vocabulary": "words"}}


def run_ok(server: ComfyServer, graph: dict[str, Any]):
    result = server.run(graph, timeout=120)
    assert result.ok, (result.status, (result.error or {}).get("exception_message"))
    return result


def test_combine_node_schema(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    node = info["PEZ_CombineModels"]
    assert node["display_name"] == "PEZ Combine Models" and node["category"] == "PEZ"
    assert list(node["input"]["required"]) == ["pez_model_1", "weight_1", "pez_model_2", "weight_2"]
    assert list(node["input"]["optional"]) == ["pez_model_3", "weight_3", "pez_model_4", "weight_4"]
    assert node["input"]["required"]["pez_model_1"][0] == "PEZ_MODEL"
    assert node["input"]["required"]["weight_1"][1]["default"] == 1.0
    assert node["output"] == ["PEZ_MODEL"] and node["output_node"] is False
    assert SDXL in info["PEZ_LoadModel"]["input"]["required"]["model"][1]["options"]


def test_sdxl_preset_without_its_files_names_both_in_one_error(comfy_server: ComfyServer) -> None:
    """Before ``joint_files`` writes them (tests run in file order): a fresh install, offline."""
    assert not any((comfy_server.models_dir / f"{name}.safetensors").exists() for name in FILES)
    result = comfy_server.run({"m": load(SDXL), "d": distill("m")}, timeout=120)
    assert result.status == "error" and result.error is not None and result.error["node_type"] == "PEZ_LoadModel"
    message = result.error["exception_message"]
    assert "needs 2 weights files that are not on this machine (about 11.87 GB in all)" in message, message
    assert "open_clip_model.safetensors (1.71 GB)" in message and "open_clip_model.safetensors (10.16 GB)" in message
    assert ("save them in models/pez as ViT-L-14-openai.safetensors and ViT-bigG-14-laion2b_s39b_b160k.safetensors "
            "or under any other names") in message, message
    assert "pretrained" not in message and "combine()" not in message  # the library's words stay out


def test_combined_model_goes_wherever_a_model_goes(comfy_server: ComfyServer, joint_files: None) -> None:
    graph = {"m1": load("pez-joint-a.safetensors"), "m2": load("pez-joint-b.safetensors"), "c": combine(1.0, 3.0),
             "img": {"class_type": "LoadImage", "inputs": {"image": "pez_red_circle.png"}},
             "inv": invert("c"), "d": distill("c"),
             "s": {"class_type": "PEZ_PromptSimilarity", "inputs": {
                 "pez_model": ["c", 0], "text": ["d", 0], "images": ["img", 0], "other_text": ""}}}
    result = run_ok(comfy_server, graph)
    for node in ("inv", "d"):
        ui = result.outputs[node]
        [each] = ui["pez_model_similarities"]
        assert len(each) == 2 and all(-1 <= s <= 1 for s in each)
        # the joint similarity is the weighted mean of the models' (weights 1 : 3)
        assert ui["pez_similarity"][0] == pytest.approx(0.25 * each[0] + 0.75 * each[1], abs=1e-4)
    assert len(result.outputs["s"]["pez_similarity"]) == 1


def test_sdxl_preset_loads_both_encoders(comfy_server: ComfyServer, joint_files: None) -> None:
    graph = {"m": load(SDXL), "img": {"class_type": "LoadImage", "inputs": {"image": "pez_red_circle.png"}},
             "st": {"class_type": "PEZ_StylePrompt", "inputs": {**invert("m")["inputs"]}}}
    result = run_ok(comfy_server, graph)
    [each] = result.outputs["st"]["pez_model_similarities"]
    assert len(each) == 2
    assert result.outputs["st"]["pez_similarity"][0] == pytest.approx(sum(each) / 2, abs=1e-4)


def test_one_model_keeps_its_results_unchanged(comfy_server: ComfyServer) -> None:
    graph = {"m": load(TINY_MODEL), "d": distill("m")}
    ui = run_ok(comfy_server, graph).outputs["d"]
    assert set(ui) == {"text", "pez_similarity", "pez_ended", "pez_reference"}  # no per-model similarities


def test_all_weights_zero_is_a_clear_error(comfy_server: ComfyServer, joint_files: None) -> None:
    graph = {"m1": load("pez-joint-a.safetensors"), "m2": load("pez-joint-b.safetensors"), "c": combine(0.0, 0.0),
             "d": distill("c")}
    result = comfy_server.run(graph, timeout=120)
    assert result.status == "error" and result.error is not None
    assert result.error["node_type"] == "PEZ_CombineModels"
    assert "weight 0" in result.error["exception_message"]
