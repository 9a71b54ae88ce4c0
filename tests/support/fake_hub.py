"""A stand-in for the Hugging Face Hub on 127.0.0.1: serves given files the way ``hf_hub_download`` expects
(HEAD with commit, etag and size; GET streamed in chunks, optionally slowly). Nothing leaves the machine.

    with FakeHub({"org/repo/file.bin": (b"...", 0.01)}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url   # before huggingface_hub is imported (or in a child's env)
"""
from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 << 10
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentHub:
    """A loopback port that takes connections and never answers (a hub behind a dead route)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # the kernel completes handshakes; nothing ever reads or replies
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "SilentHub":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


class FakeHub:
    def __init__(self, files: dict[str, tuple[bytes, float]], port: int = 0):
        self.files = files  # "org/repo/filename" -> (content, seconds between chunks)
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _file(self) -> tuple[bytes, float] | None:
                hub.requests.append(f"{self.command} {self.path}")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None
                return hub.files.get("/".join(parts[:2] + parts[4:]))

            def _headers(self, found: tuple[bytes, float] | None) -> None:
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(found[0]).hexdigest()}"')
                self.send_header("Content-Length", str(len(found[0])))
                self.end_headers()

            def do_HEAD(self) -> None:
                self._headers(self._file())

            def do_GET(self) -> None:
                found = self._file()
                self._headers(found)
                if found is None:
                    return
                content, delay = found
                stop = threading.Event()
                try:
                    for start in range(0, len(content), CHUNK):
                        self.wfile.write(content[start:start + CHUNK])
                        self.wfile.flush()
                        if delay:
                            stop.wait(delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (cancel): fine

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
