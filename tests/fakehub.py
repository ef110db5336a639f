"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub's snapshot_download calls,
serving a directory's files on 127.0.0.1, so the real download code runs without the network."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_handler(files: dict[str, bytes], seen_headers: list, fail: set[str]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, with_body: bool = True):
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET(with_body=False)

        def do_GET(self, with_body: bool = True):
            seen_headers.append(dict(self.headers))
            path = self.path.split("?")[0]
            if "/tree/" in path:
                tree = [{"type": "file", "path": n, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                        for n, c in files.items()]
                return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, with_body)
            if path.startswith("/api/models/") and "/revision/" in path:
                info = {"id": "org/tiny", "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, with_body)
            if "/resolve/" in path:
                name = path.split("/resolve/", 1)[1].split("/", 1)[1]
                if name in fail:
                    return self._send(500, b"server error", with_body=with_body)
                if name in files:
                    content = files[name]
                    headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(content).hexdigest()}"'}
                    return self._send(200, content, headers, with_body)
            return self._send(404, b"not found", with_body=with_body)

    return Handler


@contextlib.contextmanager
def fake_hub(source_dir: Path, extra: dict[str, bytes] | None = None, fail: set[str] = frozenset()):
    """Serve `source_dir`'s files (plus `extra`) as repo org/tiny; yields (endpoint, request headers seen)."""
    files = {p.name: p.read_bytes() for p in sorted(Path(source_dir).iterdir()) if p.is_file()}
    files.update(extra or {})
    seen: list[dict] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(files, seen, set(fail)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
