"""The running ComfyUI server, for what a node sends to the browser: live progress and texts on nodes."""
from __future__ import annotations

from typing import Any


def prompt_server() -> Any:
    """ComfyUI's PromptServer, or None outside a server (e.g. nodes imported by a script)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def send_node_text(node: Any, text: str) -> None:
    """A text shown on the node (ComfyUI's progress-text channel)."""
    server = prompt_server()
    if server is not None and node is not None:
        server.send_progress_text(text, str(node))
