"""A loopback HTTP server that lets ffmpeg range-read one object through the storage client.

ffmpeg gets `http://127.0.0.1:PORT/<random token>/<name>`; each request (ffmpeg seeks with `Range`
headers) becomes a ranged GET by the SDK client, so the object is never downloaded whole first and
no credential, signature or SAS token ever appears on ffmpeg's command line or in its error messages.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

RangeReader = Callable[[int, int], Iterator[bytes]]
"""read(start, end) yields the bytes start..end (inclusive) of the object."""

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    path_token: str
    size: int
    read: RangeReader


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        if not self.path.startswith(f"/{self.server.path_token}/"):
            self.send_error(404)
            return
        size = self.server.size
        start, end, status = 0, size - 1, 200
        header = self.headers.get("Range")
        if header:
            match = _RANGE_RE.match(header.strip())
            if not match or (not match.group(1) and not match.group(2)):
                self.send_error(416)
                return
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(match.group(2)), 0)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(max(end - start + 1, 0)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body or end < start:
            return
        chunks = self.server.read(start, end)
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # ffmpeg seeks by dropping the connection and asking for another range
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve_object(name: str, size: int, read: RangeReader) -> Iterator[str]:
    """Serve one object on 127.0.0.1 for the duration of the context; yields its URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.path_token = secrets.token_urlsafe(18)
    server.size = size
    server.read = read
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://127.0.0.1:{port}/{server.path_token}/{quote(name.rsplit('/', 1)[-1])}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
