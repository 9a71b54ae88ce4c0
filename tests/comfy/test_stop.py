""""Stop & use best" through the real server: ``POST /pez/stop`` ends a running optimisation early and
the node outputs the best prompt so far; Cancel still cancels; a stop for a node that is not running
is refused and never stops a later run. (The button on the node: tests/browser/test_browser.py.)"""

from __future__ import annotations

import time
from typing import Any

from comfy_harness import ComfyServer
from helpers import TINY_MODEL

LONG = 100_000  # steps: far more than a test waits for


def graph(steps: int, seed: int) -> dict[str, Any]:
    return {
        "m": {"class_type": "PEZ_LoadModel", "inputs": {"model": TINY_MODEL, "precision": "auto", "device": "cpu"}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "pez_red_circle.png"}},
        "inv": {"class_type": "PEZ_InvertImage", "inputs": {
            "pez_model": ["m", 0], "images": ["img", 0], "prompt_length": 4, "steps": steps, "restarts": 0,
            "learning_rate": 0.1, "seed": seed, "vocabulary": "words"}},
    }


def live_steps(server: ComfyServer, prompt_id: str) -> list[int]:
    return [m["data"]["step"] for m in server.messages(prompt_id) if m["type"] == "pez.progress"]


def queue_and_wait_for_progress(server: ComfyServer, seed: int) -> str:
    prompt_id = server.queue(graph(LONG, seed))
    deadline = time.monotonic() + 60
    while not live_steps(server, prompt_id):
        assert time.monotonic() < deadline, "the long run never reported progress"
        time.sleep(0.05)
    return prompt_id


def stop(server: ComfyServer, node_id: Any) -> Any:
    return server.request("POST", "/pez/stop", json={"node_id": node_id})


def test_stop_returns_the_best_prompt_so_far(comfy_server: ComfyServer) -> None:
    prompt_id = queue_and_wait_for_progress(comfy_server, seed=21)
    answer = stop(comfy_server, "inv")
    assert answer.status_code == 200 and answer.json() == {"stopping": True}, answer.text
    result = comfy_server.wait(prompt_id, timeout=60)
    assert result.ok, (result.status, result.error)
    ui = result.outputs["inv"]
    assert len(ui["text"]) == 1 and ui["text"][0].strip()
    assert 0.0 < ui["pez_similarity"][0] <= 1.0 + 1e-5
    assert max(live_steps(comfy_server, prompt_id)) < LONG  # it ended early, not at the last step
    assert "stopped early" in comfy_server.log_text(tail=20_000)


def test_cancel_still_cancels(comfy_server: ComfyServer) -> None:
    prompt_id = queue_and_wait_for_progress(comfy_server, seed=22)
    comfy_server.interrupt()
    result = comfy_server.wait(prompt_id, timeout=60)
    assert result.status == "interrupted"
    assert "inv" not in result.outputs


def test_stop_of_a_node_that_is_not_running_is_refused(comfy_server: ComfyServer) -> None:
    answer = stop(comfy_server, "inv")
    assert answer.status_code == 409 and answer.json()["stopping"] is False
    assert "not running" in answer.json()["error"]
    for bad in ({}, {"node_id": ""}, {"node_id": None}):
        assert comfy_server.request("POST", "/pez/stop", json=bad).status_code == 400
    assert comfy_server.request("POST", "/pez/stop", data=b"not json").status_code == 400
    # the refused stop leaves nothing behind: the next run goes to its last step
    result = comfy_server.run(graph(30, seed=23), timeout=120)
    assert result.ok, result.error
    assert max(live_steps(comfy_server, result.prompt_id)) == 30


def test_oversized_stop_requests_are_refused_and_a_normal_stop_still_works(comfy_server: ComfyServer) -> None:
    prompt_id = queue_and_wait_for_progress(comfy_server, seed=24)
    long_id = "x" * 300 + ":inv"  # would match the running node by its last part
    body = b'{"node_id": "' + b"y" * 64 * 1024 + b':inv"}'
    for sent in ({"data": body}, {"data": iter([body[:5000], body[5000:]])}):  # with a length, and chunked
        answer = comfy_server.request("POST", "/pez/stop", **sent)
        assert answer.status_code == 413 and "over 4096 bytes" in answer.json()["error"], answer.text
    answer = stop(comfy_server, long_id)
    assert answer.status_code == 400 and "has 304 characters, over the limit of 256" in answer.json()["error"]
    answer = stop(comfy_server, "inv")
    assert answer.status_code == 200 and answer.json() == {"stopping": True}, answer.text
    result = comfy_server.wait(prompt_id, timeout=60)
    assert result.ok and max(live_steps(comfy_server, prompt_id)) < LONG, (result.status, result.error)
    assert "x" * 100 not in comfy_server.log_text() and "y" * 100 not in comfy_server.log_text()
