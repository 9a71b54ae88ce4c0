"""Run a real ComfyUI server (from ``.comfyui/``, see scripts/setup_comfyui.sh) for tests, the demo and benchmarks.

The repository root is the custom-node pack: it is symlinked into ``<base>/custom_nodes/<pack>``
of a throw-away base directory, so the server loads this working tree as it is.

    with ComfyServer() as server:
        server.models_dir.joinpath("x.safetensors").write_bytes(...)
        result = server.run({"1": {"class_type": ..., "inputs": {...}}})
        assert result.ok, result.error

Every network call has a timeout and only 127.0.0.1 is used. No pytest dependency.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import requests

from paths import REPO_ROOT

if TYPE_CHECKING:
    import websocket

log = logging.getLogger(__name__)

# Which ComfyUI, run by which Python: PEZ_COMFYUI_DIR / PEZ_COMFYUI_PYTHON (`make test-newest` sets
# them for its second pass), else the checkout's .comfyui/ (scripts/setup_comfyui.sh) and .venv/.
COMFY_DIR = Path(os.environ.get("PEZ_COMFYUI_DIR") or REPO_ROOT / ".comfyui").resolve()
DEFAULT_PYTHON = Path(os.environ.get("PEZ_COMFYUI_PYTHON") or REPO_ROOT / ".venv" / "bin" / "python")
PACK_NAME = "pez_hard_prompts"
HOST = "127.0.0.1"
HTTP_TIMEOUT = 30.0
TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
_STATUS_OF = {"execution_success": "success", "execution_error": "error", "execution_interrupted": "interrupted"}

Graph = Mapping[str, Mapping[str, Any]]


class ComfyError(RuntimeError):
    """The server failed to start, died, or answered unexpectedly."""


class PromptRejected(ComfyError):
    """``POST /prompt`` refused the graph (HTTP 400); ``body`` is the decoded JSON answer."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        super().__init__(f"prompt rejected (HTTP {status}): {json.dumps(body)[:4000]}")


@dataclass
class RunResult:
    """Outcome of one prompt: ``status`` is "success", "error" or "interrupted"."""

    prompt_id: str
    status: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, Any] | None = None  # the /history entry: prompt, outputs, status, meta

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def error(self) -> dict[str, Any] | None:
        """The ``execution_error`` payload (exception_message, traceback, node_type, ...)."""
        for msg in self.messages:
            if msg.get("type") == "execution_error":
                return cast("dict[str, Any]", msg.get("data"))
        return None

    @property
    def outputs(self) -> dict[str, Any]:
        """UI outputs by node id, from the history (only ``ui`` results are stored there)."""
        return cast("dict[str, Any]", (self.history or {}).get("outputs", {}))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m.get("type") == kind]


def comfyui_version(comfy_dir: Path = COMFY_DIR) -> str:
    """The version of the ComfyUI in ``comfy_dir`` (from its comfyui_version.py)."""
    text = (Path(comfy_dir) / "comfyui_version.py").read_text()
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    if match is None:
        raise ComfyError(f"no __version__ in {comfy_dir}/comfyui_version.py")
    return match.group(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _die_with_parent() -> None:  # runs in the child before exec (Linux only, best effort)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not fatal: stop() still ends the server
        pass


class ComfyServer:
    """One ComfyUI process on a free port with a private, temporary base directory."""

    def __init__(
        self,
        *,
        comfy_dir: Path = COMFY_DIR,
        python: Path | str = DEFAULT_PYTHON,
        pack_dir: Path = REPO_ROOT,
        pack_name: str = PACK_NAME,
        base_dir: Path | None = None,
        extra_files: Mapping[str, Path | bytes] | None = None,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 180.0,
        keep_base_dir: bool = False,
    ) -> None:
        self.comfy_dir = Path(comfy_dir)
        self.python = str(python)
        self.pack_dir = Path(pack_dir).resolve()
        self.pack_name = pack_name
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._own_base = base_dir is None
        self.keep_base_dir = keep_base_dir
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="pez-comfy-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.client_id = uuid.uuid4().hex
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._final_log: str | None = None
        self._http = requests.Session()
        self._ws: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._messages: dict[str, list[dict[str, Any]]] = {}
        for rel, content in (extra_files or {}).items():
            self.add_file(rel, content)

    # -- files ----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    def model_dir(self, kind: str = "pez") -> Path:
        """``<base>/models/<kind>``, created on demand (usable before or after start)."""
        path = self.base_dir / "models" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def models_dir(self) -> Path:
        """``<base>/models/pez``, where this pack looks for checkpoints."""
        return self.model_dir("pez")

    @property
    def input_dir(self) -> Path:
        path = self.base_dir / "input"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_file(self, rel_path: str, content: Path | bytes) -> Path:
        """Place a file at ``<base>/<rel_path>``: bytes are written, a Path is copied (not linked:
        ComfyUI 0.33 resolves links and rejects an input file that lies outside ``input/``)."""
        if Path(rel_path).is_absolute() or ".." in Path(rel_path).parts:
            raise ValueError(f"{rel_path!r} is not a path inside the base directory")
        dest = self.base_dir / rel_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        if isinstance(content, bytes):
            dest.write_bytes(content)
        else:
            shutil.copyfile(content, dest)
        return dest

    def log_text(self, tail: int | None = None) -> str:
        """The server's stdout+stderr so far (last ``tail`` characters if given)."""
        if self._final_log is not None:
            text = self._final_log
        else:
            try:
                text = self.log_path.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
        return text[-tail:] if tail else text

    # -- life cycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise ComfyError("server not started")
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> ComfyServer:
        if self.running:
            return self
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyError(f"no ComfyUI in {self.comfy_dir}; run: bash scripts/setup_comfyui.sh")
        self.base_dir.mkdir(parents=True, exist_ok=True)  # again: stop() may have removed it
        self._final_log = None
        self._http = requests.Session()
        self._http.trust_env = False  # never send 127.0.0.1 traffic through a proxy
        link = self.base_dir / "custom_nodes" / self.pack_name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(self.pack_dir, target_is_directory=True)
        for attempt in range(3):  # the free port can be taken between probe and bind
            self.port = free_port()
            self._launch()
            try:
                self._wait_ready()
                break
            except ComfyError:
                in_use = "address already in use" in self.log_text(tail=5000).lower()
                self._terminate()
                if not in_use or attempt == 2:
                    raise
                log.warning("port %s was taken, retrying", self.port)
        self._connect_ws()
        return self

    def _launch(self) -> None:
        db = self.base_dir / "comfyui.db"  # a file: in-memory SQLite logs thread errors
        cmd = [
            self.python, str(self.comfy_dir / "main.py"), "--cpu",
            "--listen", HOST, "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{db}",
            "--disable-auto-launch", "--disable-api-nodes",
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _terminate
        log.info("starting ComfyUI: %s", " ".join(cmd))
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def _wait_ready(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ComfyError(f"ComfyUI exited during start-up:\n{self.log_text(tail=5000)}")
            try:
                if self._http.get(f"{self.url}/system_stats", timeout=2).ok:
                    log.info("ComfyUI up on %s after %.1f s", self.url, time.monotonic() - t0)
                    if "No module named 'torchaudio'" in self.log_text():
                        log.info("(its log's torchaudio tracebacks are ComfyUI's own audio nodes, which need "
                                 "torchaudio; this pack does not)")
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise ComfyError(f"ComfyUI not ready after {self.startup_timeout:.0f} s:\n{self.log_text(tail=5000)}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL), wait for its port to close, and delete the
        base dir if this object created it (unless ``keep_base_dir``); ``log_text()`` still works."""
        self._stopping.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close(timeout=1)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._ws = self._reader = None
        self._terminate()
        self._http.close()
        if self._own_base and not self.keep_base_dir and self.base_dir.exists():
            self._final_log = self.log_text()
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI (pid %s) ignored SIGTERM, killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=15)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.port is not None:
            deadline = time.monotonic() + 15
            while _port_open(self.port) and time.monotonic() < deadline:
                time.sleep(0.1)

    def __enter__(self) -> ComfyServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- websocket ------------------------------------------------------------------------
    def _connect_ws(self) -> None:
        import websocket  # here, not at the top: the GPU tests load conftest where websocket-client is absent

        ws_url = f"ws://{HOST}:{self.port}/ws?clientId={self.client_id}"
        self._ws = websocket.create_connection(ws_url, timeout=10, http_no_proxy=[HOST, "localhost"])
        self._ws.settimeout(0.5)
        self._stopping.clear()
        self._reader = threading.Thread(target=self._read_ws, name="comfy-ws", daemon=True)
        self._reader.start()

    def _read_ws(self) -> None:
        import websocket

        assert self._ws is not None
        while not self._stopping.is_set():
            try:
                frame = self._ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as exc:  # noqa: BLE001 - closed socket or dead server
                if not self._stopping.is_set():
                    log.warning("websocket closed: %r", exc)
                return
            if not isinstance(frame, str):
                continue  # binary frames carry preview images
            try:
                msg = json.loads(frame)
            except json.JSONDecodeError:
                continue
            data = msg.get("data")
            prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
            if prompt_id:
                with self._cond:
                    self._messages.setdefault(prompt_id, []).append(msg)
                    self._cond.notify_all()

    def messages(self, prompt_id: str) -> list[dict[str, Any]]:
        """Websocket messages received so far for ``prompt_id``."""
        with self._cond:
            return list(self._messages.get(prompt_id, []))

    # -- HTTP API -------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return self._http.request(method, f"{self.url}{path}", **kwargs)

    def get_json(self, path: str) -> Any:
        resp = self.request("GET", path)
        if not resp.ok:
            raise ComfyError(f"GET {path}: HTTP {resp.status_code}: {resp.text[:2000]}")
        return resp.json()

    def system_stats(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.get_json("/system_stats"))

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return cast("dict[str, Any]", self.get_json(f"/object_info/{node_class}" if node_class else "/object_info"))

    def queue(self, graph: Graph, *, extra_data: Mapping[str, Any] | None = None) -> str:
        """Queue an API-format graph; return its prompt_id. Raises PromptRejected on HTTP 400."""
        if not self.running or self._ws is None:
            raise ComfyError("server not running")
        payload: dict[str, Any] = {"prompt": graph, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        resp = self.request("POST", "/prompt", json=payload)
        if resp.status_code == 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise PromptRejected(resp.status_code, body)
        if not resp.ok:
            raise ComfyError(f"POST /prompt: HTTP {resp.status_code}: {resp.text[:2000]}")
        return str(resp.json()["prompt_id"])

    def wait(self, prompt_id: str, timeout: float = 120.0) -> RunResult:
        """Collect websocket messages of ``prompt_id`` until it succeeds, fails or is interrupted.

        Also waits for its ``/history`` entry (ComfyUI sends ``execution_success`` *before* it
        stores the history) and falls back to ``/history`` if a websocket message was missed.
        Raises TimeoutError (with the messages so far) or ComfyError if the server died.
        """
        deadline = time.monotonic() + timeout
        next_history = time.monotonic() + 2.0
        terminal: str | None = None
        while True:
            with self._cond:
                msgs = list(self._messages.get(prompt_id, []))
                terminal = terminal or next((m["type"] for m in msgs if m["type"] in TERMINAL_EVENTS), None)
                if terminal is None:
                    self._cond.wait(timeout=0.5)
            now = time.monotonic()
            if terminal is not None or now >= next_history:
                next_history = now + 2.0
                try:
                    entry = self.history(prompt_id)
                except requests.RequestException as exc:
                    if self._proc is not None and self._proc.poll() is not None:
                        raise ComfyError(f"ComfyUI died running {prompt_id}:\n{self.log_text(tail=5000)}") from exc
                    raise
                status = (entry or {}).get("status") or {}
                if entry is not None and (status.get("completed") or status.get("status_str") == "error"):
                    if terminal is None:  # missed on the websocket: take it from the history
                        hist = [{"type": t, "data": d} for t, d in status.get("messages", [])]
                        msgs += [m for m in hist if m["type"] in TERMINAL_EVENTS]
                        terminal = next((m["type"] for m in msgs if m["type"] in TERMINAL_EVENTS), "execution_error")
                    return RunResult(prompt_id, _STATUS_OF[terminal], msgs, entry)
                if terminal is not None:
                    time.sleep(0.05)
            if not self.running:
                raise ComfyError(f"ComfyUI died running {prompt_id}:\n{self.log_text(tail=5000)}")
            if now >= deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout} s; messages: {msgs[-20:]}")

    def run(self, graph: Graph, timeout: float = 120.0) -> RunResult:
        """``queue`` then ``wait``."""
        return self.wait(self.queue(graph), timeout=timeout)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The ``/history`` entry of ``prompt_id`` (prompt, outputs, status), or None if absent."""
        return cast("dict[str, Any] | None", self.get_json(f"/history/{prompt_id}").get(prompt_id))

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Cancel the running prompt (only ``prompt_id`` if given)."""
        resp = self.request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})
        if not resp.ok:
            raise ComfyError(f"POST /interrupt: HTTP {resp.status_code}: {resp.text[:2000]}")

    def post_setting(self, setting_id: str, value: Any) -> None:
        resp = self.request("POST", f"/settings/{setting_id}", json=value)
        if not resp.ok:
            raise ComfyError(f"POST /settings/{setting_id}: HTTP {resp.status_code}: {resp.text[:2000]}")


# --- workflows: UI format → API format -------------------------------------------------------
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute"}  # nodes the graph editor never sends to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def inputs_in_order(info: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """(name, spec) of a node class's inputs in the order the graph editor creates widgets."""
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, info["input"][section][name]) for section in ("required", "optional")
            for name in order.get(section, [])]


def is_widget(spec: list[Any]) -> bool:
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def widget_values_per_input(spec: list[Any]) -> int:
    """Saved widget values one widget input takes: its value, plus the seed's "control after generate"
    value, plus the image upload button's value."""
    options = spec[1] if len(spec) > 1 else {}
    return 1 + bool(options.get("control_after_generate")) + bool(options.get("image_upload"))


def input_type(spec: list[Any]) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


_SAVED_BEFORE = object()  # no saved value: the widget is newer than the workflow


def widget_default(spec: list[Any]) -> Any:
    """What the graph editor gives a widget that has no saved value: its default (a combo's first option)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
    return choices[0] if choices else None


def workflow_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """UI format → API format, as the graph editor's "queue prompt" does it. A workflow saved before a node
    gained widgets has fewer values: the new widgets (always appended last) keep their defaults."""
    links = {link[0]: link for link in workflow["links"]}
    graph: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        values = iter(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        for name, spec in inputs_in_order(object_info[node["type"]]):
            if is_widget(spec):
                inputs[name] = next(values, _SAVED_BEFORE)
                if inputs[name] is _SAVED_BEFORE:
                    inputs[name] = widget_default(spec)
                for _ in range(widget_values_per_input(spec) - 1):
                    next(values, None)
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                inputs[entry["name"]] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph
