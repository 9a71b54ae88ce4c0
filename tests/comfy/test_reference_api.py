"""The reference point beside a node's similarity, through a real ComfyUI server: ``pez_reference`` in the
``ui`` output (and so in /history), one {"caption", "similarity"} per prompt, what the plain caption scores."""
from __future__ import annotations

import pytest

from api import image_node, invert_node, model_node, run_ok
from comfy_harness import ComfyServer
from pez_core.clip.objective import REFERENCE_CAPTION


def similarity_node(text: str, images: list | None = None, other: str = "") -> dict:
    inputs = {"pez_model": ["m", 0], "text": text, "other_text": other, **({"images": images} if images else {})}
    return {"class_type": "PEZ_PromptSimilarity", "inputs": inputs}


def assert_reference(ui: dict, n: int, caption: str = REFERENCE_CAPTION) -> list[float]:
    references = ui["pez_reference"]
    assert len(references) == len(ui["text"]) == n, ui
    for r in references:
        assert set(r) == {"caption", "similarity"} and r["caption"] == caption, r
        assert isinstance(r["similarity"], float) and -1.0 <= r["similarity"] <= 1.0, r
    return [r["similarity"] for r in references]


def test_invert_style_and_distill_show_what_a_plain_caption_scores(comfy_server: ComfyServer) -> None:
    text = "a red circle on a white background"
    graph = {
        "m": model_node(), "a": image_node("pez_red_circle.png"), "b": image_node("pez_blue_square.png"),
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
        "inv": invert_node(["batch", 0]),
        "style": {**invert_node(["batch", 0]), "class_type": "PEZ_StylePrompt"},
        "tpl": invert_node(["a", 0], template="a tiger, {}"),
        "d": {"class_type": "PEZ_DistillPrompt", "inputs": {
            "pez_model": ["m", 0], "text": text, "target": "length", "prompt_length": 3, "steps": 8, "seed": 0,
            "vocabulary": "words"}},
        # the same plain caption scored by PEZ Prompt Similarity: the reference is that number
        "sim_a": similarity_node(REFERENCE_CAPTION, ["a", 0]),
        # the second image as the batch holds it (ImageBatch resizes it to the first's size)
        "second": {"class_type": "ImageFromBatch", "inputs": {"image": ["batch", 0], "batch_index": 1, "length": 1}},
        "sim_b": similarity_node(REFERENCE_CAPTION, ["second", 0]),
        "sim_both": similarity_node(REFERENCE_CAPTION, ["batch", 0]),
        "sim_text": similarity_node(REFERENCE_CAPTION, other=text),
        "sim_tpl": similarity_node(f"a tiger, {REFERENCE_CAPTION}", ["a", 0]),
    }
    out = run_ok(comfy_server, graph, timeout=180).outputs
    plain = {name: out[name]["pez_similarity"][0] for name in ("sim_a", "sim_b", "sim_both", "sim_text", "sim_tpl")}
    assert assert_reference(out["inv"], 2) == pytest.approx([plain["sim_a"], plain["sim_b"]], abs=1e-4)
    assert assert_reference(out["style"], 1) == pytest.approx([plain["sim_both"]], abs=1e-4)
    assert assert_reference(out["d"], 1) == pytest.approx([plain["sim_text"]], abs=1e-4)
    assert assert_reference(out["tpl"], 1, f"a tiger, {REFERENCE_CAPTION}") == pytest.approx([plain["sim_tpl"]], abs=1e-4)
    assert "pez_reference" not in out["sim_a"]  # scoring a prompt has no learned result to compare
