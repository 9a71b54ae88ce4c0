"""Graphs and clients for the tests that drive the PEZ nodes through a real ComfyUI server's API:
small API-format graphs (tiny test model, few steps), runs that must succeed or fail, and a raw websocket
client that also sees the binary progress-text frames."""
from __future__ import annotations

import json
import struct
import time
import uuid
from typing import Any

import websocket

from comfy_harness import HOST, ComfyServer, RunResult
from helpers import TINY_MODEL


def model_node(model: str = TINY_MODEL, device: str = "auto") -> dict[str, Any]:
    return {"class_type": "PEZ_LoadModel", "inputs": {"model": model, "precision": "auto", "device": device}}


def image_node(name: str = "pez_red_circle.png") -> dict[str, Any]:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def invert_node(images: list[Any], *, steps: int = 12, seed: int = 0, length: int = 4, **extra: Any) -> dict[str, Any]:
    inputs = {"pez_model": ["m", 0], "images": images, "prompt_length": length, "steps": steps, "restarts": 0,
              "learning_rate": 0.1, "seed": seed, "vocabulary": "words", **extra}
    return {"class_type": "PEZ_InvertImage", "inputs": inputs}


def invert_graph(**kw: Any) -> dict[str, Any]:
    return {"m": model_node(), "img": image_node(), "inv": invert_node(["img", 0], **kw)}


def run_ok(server: ComfyServer, graph: dict[str, Any], timeout: float = 90) -> RunResult:
    result = server.run(graph, timeout=timeout)
    assert result.ok, (result.status, (result.error or {}).get("exception_message"))
    return result


def run_error(server: ComfyServer, graph: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    result = server.run(graph, timeout=timeout)
    assert result.status == "error", (result.status, result.outputs)
    assert result.error is not None
    return result.error


class RawClient:
    """A second websocket client with its own client id: sees binary frames (progress text) too."""

    def __init__(self, server: ComfyServer):
        self.server, self.client_id = server, uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://{HOST}:{server.port}/ws?clientId={self.client_id}",
                                              timeout=10, http_no_proxy=[HOST, "localhost"])

    def run(self, graph: dict[str, Any], timeout: float = 60) -> tuple[str, list[tuple[float, Any]]]:
        """Queue ``graph`` as this client: its prompt id and the (receive time, frame) pairs until it
        ends. Binary text frames become ("text", node id, text)."""
        resp = self.server.request("POST", "/prompt", json={"prompt": graph, "client_id": self.client_id})
        assert resp.ok, resp.text
        prompt_id = resp.json()["prompt_id"]
        frames: list[tuple[float, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.ws.recv()
            now = time.monotonic()
            if isinstance(frame, bytes):
                (event,) = struct.unpack(">I", frame[:4])
                if event == 3:  # BinaryEventTypes.TEXT: node id length, node id, text
                    (n,) = struct.unpack(">I", frame[4:8])
                    frames.append((now, ("text", frame[8:8 + n].decode(), frame[8 + n:].decode())))
                continue
            msg = json.loads(frame)
            frames.append((now, msg))
            data = msg.get("data") or {}
            if msg["type"] in ("execution_success", "execution_error") and data.get("prompt_id") == prompt_id:
                return prompt_id, frames
        raise TimeoutError(f"prompt {prompt_id} did not finish")

    def close(self) -> None:
        self.ws.close()

