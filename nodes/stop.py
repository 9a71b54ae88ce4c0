""""Stop & use best": end a running PEZ optimisation early and keep the best prompt so far.

``POST /pez/stop`` with ``{"node_id": "<execution id>"}`` only sets a flag; the node's progress
callback (``LiveProgress``) reads it at its next sync and returns True, and pez_core then stops and
returns the best prompts found so far, which the node outputs as usual. Cancel (``/interrupt``)
keeps its meaning: no result. A flag belongs to the prompt that was running when it was set, so a
late click never stops a later run.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any

from .server import prompt_server

log = logging.getLogger(__name__)

ROUTE = "/pez/stop"
MAX_BODY_BYTES = 4096  # {"node_id": "12:5"} is a few bytes; a bigger body is refused unread
MAX_NODE_ID_CHARS = 256  # execution ids are short ("12", "5:3:12"); a long one would be kept and logged
_lock = threading.Lock()
_requests: dict[str, Any] = {}  # execution id of the node -> prompt id it was asked to stop in


def request_stop(node_id: str) -> str | None:
    """Ask the running PEZ node ``node_id`` to stop; None if asked, else why not."""
    server = prompt_server()
    prompt_id = getattr(server, "last_prompt_id", None)
    running = getattr(server, "last_node_id", None)
    if running is None or str(running).split(":")[-1] != node_id.split(":")[-1]:
        return f"node {node_id} is not running (running now: {running or 'nothing'})"
    with _lock:
        _requests.clear()  # only the running node can be asked: older requests are stale and would pile up
        _requests[node_id] = prompt_id
        _requests[str(running)] = prompt_id  # the server's own id for it (display vs execution id)
    log.info("stop & use best requested for node %.80s (prompt %s)", node_id, prompt_id)
    return None


def stop_requested(node_id: str | None) -> bool:
    """True (once) if the user asked ``node_id`` to stop during the prompt that runs now."""
    if node_id is None or not _requests:
        return False
    with _lock:
        asked_in = _requests.pop(node_id, None)
    return asked_in is not None and asked_in == getattr(prompt_server(), "last_prompt_id", None)


def register_routes() -> None:
    server = prompt_server()
    if server is None or getattr(server, "routes", None) is None:
        return
    from aiohttp import web

    async def stop(request: web.Request) -> web.Response:
        too_big = web.json_response({"error": f"the request body is over {MAX_BODY_BYTES} bytes; "
                                              'send {"node_id": "<id of the running PEZ node>"}'}, status=413)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return too_big
        raw = b""  # a chunked body has no length: read at most one byte over the limit
        while len(raw) <= MAX_BODY_BYTES and (chunk := await request.content.read(MAX_BODY_BYTES + 1 - len(raw))):
            raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return too_big
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        node_id = body.get("node_id") if isinstance(body, dict) else None
        if not isinstance(node_id, (str, int)) or not str(node_id).strip():
            return web.json_response({"error": 'send {"node_id": "<id of the running PEZ node>"}'}, status=400)
        if len(str(node_id)) > MAX_NODE_ID_CHARS:
            return web.json_response({"error": f"node_id has {len(str(node_id))} characters, over the limit of "
                                               f"{MAX_NODE_ID_CHARS}; send the id of the running PEZ node"},
                                     status=400)
        why_not = request_stop(str(node_id).strip())
        if why_not is not None:
            return web.json_response({"stopping": False, "error": why_not}, status=409)
        return web.json_response({"stopping": True})

    server.routes.post(ROUTE)(stop)


register_routes()
