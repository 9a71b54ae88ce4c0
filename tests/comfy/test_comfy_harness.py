"""Smoke test of the ComfyUI test harness through a real server (no model weights needed)."""

from __future__ import annotations

import pytest

from comfy_harness import ComfyServer, PromptRejected, comfyui_version

# EmptyImage -> PreviewImage: core nodes, CPU only, no weights; PreviewImage is an output node.
IMAGE_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def test_system_stats(comfy_server: ComfyServer) -> None:
    stats = comfy_server.system_stats()
    assert stats["system"]["comfyui_version"] == comfyui_version(comfy_server.comfy_dir)
    assert stats["devices"][0]["type"] == "cpu"


def test_object_info_has_core_nodes(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    assert {"CLIPTextEncode", "LoadImage", "EmptyImage", "PreviewImage"} <= info.keys()
    assert "clip" in comfy_server.object_info("CLIPTextEncode")["CLIPTextEncode"]["input"]["required"]


def test_graph_without_output_is_refused(comfy_server: ComfyServer) -> None:
    with pytest.raises(PromptRejected) as excinfo:
        comfy_server.queue({"1": IMAGE_GRAPH["1"]})
    assert excinfo.value.status == 400
    assert excinfo.value.body["error"]["type"] == "prompt_no_outputs"


def test_image_graph_runs(comfy_server: ComfyServer) -> None:
    result = comfy_server.run(IMAGE_GRAPH, timeout=60)
    assert result.ok, result.error
    assert result.prompt_id and result.of_type("execution_start")
    assert result.of_type("execution_success") and result.error is None
    images = result.outputs["2"]["images"]
    assert len(images) == 1 and images[0]["type"] == "temp"
    entry = comfy_server.history(result.prompt_id)
    assert entry is not None and entry["status"]["status_str"] == "success"
    assert entry["outputs"] == result.outputs


def test_runtime_error_is_reported(comfy_server: ComfyServer) -> None:
    graph = {  # ImageToMask(channel="alpha") on an RGB image raises IndexError while executing
        "1": IMAGE_GRAPH["1"],
        "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    result = comfy_server.run(graph, timeout=60)
    assert result.status == "error"
    assert result.error is not None and result.error["node_type"] == "ImageToMask"
    assert result.history is not None and result.history["status"]["status_str"] == "error"


def test_setting_round_trip(comfy_server: ComfyServer) -> None:
    comfy_server.post_setting("PEZ.test.setting", {"x": 1})
    assert comfy_server.get_json("/settings/PEZ.test.setting") == {"x": 1}
