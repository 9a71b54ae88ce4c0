""""Stop & use best": end a running PEZ optimisation early and keep the best prompt so far.

``POST /pez/stop`` with ``{"node_id": "<execution id>"}`` only sets a flag; the node's progress
callback (``LiveProgress``) reads it at its next sync and returns True, and pez_core then stops and
returns the best prompts found so far, which the node outputs as usual. Cancel (``/interrupt``)
keeps its meaning: no result. A flag belongs to the prompt that was running when it was set, so a
late click never stops a later run.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

ROUTE = "/pez/stop"
_lock = threading.Lock()
_requests: dict[str, Any] = {}  # execution id of the node -> prompt id it was asked to stop in


def _server() -> Any:
    try:
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server
        return None
    return getattr(PromptServer, "instance", None)


def request_stop(node_id: str) -> str | None:
    """Ask the running PEZ node ``node_id`` to stop; None if asked, else why not."""
    server = _server()
    prompt_id = getattr(server, "last_prompt_id", None)
    running = getattr(server, "last_node_id", None)
    if running is None or str(running).split(":")[-1] != node_id.split(":")[-1]:
        return f"node {node_id} is not running (running now: {running or 'nothing'})"
    with _lock:
        _requests[node_id] = prompt_id
        _requests[str(running)] = prompt_id  # the server's own id for it (display vs execution id)
    log.info("stop & use best requested for node %s (prompt %s)", node_id, prompt_id)
    return None


def stop_requested(node_id: str | None) -> bool:
    """True (once) if the user asked ``node_id`` to stop during the prompt that runs now."""
    if node_id is None or not _requests:
        return False
    with _lock:
        asked_in = _requests.pop(node_id, None)
    return asked_in is not None and asked_in == getattr(_server(), "last_prompt_id", None)


def register_routes() -> None:
    server = _server()
    if server is None or getattr(server, "routes", None) is None:
        return
    from aiohttp import web

    async def stop(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        node_id = body.get("node_id") if isinstance(body, dict) else None
        if not isinstance(node_id, (str, int)) or not str(node_id).strip():
            return web.json_response({"error": 'send {"node_id": "<id of the running PEZ node>"}'}, status=400)
        why_not = request_stop(str(node_id).strip())
        if why_not is not None:
            return web.json_response({"stopping": False, "error": why_not}, status=409)
        return web.json_response({"stopping": True})

    server.routes.post(ROUTE)(stop)


register_routes()
