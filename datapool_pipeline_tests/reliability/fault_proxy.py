"""A fault-injecting HTTP proxy on 127.0.0.1, put in front of a storage emulator.

Every request is forwarded to the emulator unchanged (method, path, headers including Host, body), unless
a fault rule matches it first; the rule then answers it instead:

    proxy.add_fault(503, count=2, method="PUT", path=r"/datapool/commits/")   # 503 SlowDown twice
    proxy.add_fault("reset")                     # the next request: connection reset, not forwarded
    proxy.add_fault("reset-after", method="PUT") # forwarded (the emulator applies it), then reset
    proxy.add_fault(500, count=None, method="PUT")  # every PUT, until clear_faults()
    proxy.add_fault("forward")                   # the next request passes (to interleave faults)

Rules are tried in the order added; a rule with count=None never runs out. `path` is a regular expression
searched in the request path (with query); `body` one searched in the request body (GCS uploads name the
object in the body only). Error bodies are shaped for the emulated service (S3 XML, GCS JSON, Azure XML with
the x-ms-error-code header), so clients parse them as they would the real service's.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Flavor = Literal["s3", "gcs", "azure"]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect"}
# (S3 / Azure error code, message) per status.
_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
    429: ("Throttling", "Rate exceeded."),
}
_AZURE_CODES = {500: "InternalError", 503: "ServerBusy", 429: "ServerBusy"}


@dataclass
class Fault:
    action: int | str
    """An HTTP status to answer with, "reset" (reset without forwarding), "reset-after" (forward, then reset)
    or "forward" (forward untouched: a placeholder that lets one request through between faults)."""
    count: int | None
    method: str | None = None
    path: re.Pattern[str] | None = None
    body: re.Pattern[bytes] | None = None
    hits: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return (
            (self.count is None or self.hits < self.count)
            and (self.method is None or self.method == method)
            and (self.path is None or self.path.search(path) is not None)
            and (self.body is None or self.body.search(body) is not None)
        )


@dataclass
class Seen:
    method: str
    path: str
    action: int | str | None
    """The fault applied, or None if the request was forwarded untouched."""


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    flavor: Flavor = "s3"
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------------
    def add_fault(
        self, action: int | str, count: int | None = 1, *, method: str | None = None, path: str | None = None,
        body: str | None = None,
    ) -> Fault:
        if not (isinstance(action, int) or action in ("reset", "reset-after", "forward")):
            raise ValueError(f"unknown fault {action!r}")
        fault = Fault(action, count, method, re.compile(path) if path else None,
                      re.compile(body.encode()) if body else None)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def pending(self) -> int:
        """Faults (and placeholders) not yet delivered; rules without a count excluded."""
        with self._lock:
            return sum(f.count - f.hits for f in self.faults if f.count is not None)

    def injected(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.action not in (None, "forward")]

    def _take(self, method: str, path: str, body: bytes) -> int | str | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body):
                    fault.hits += 1
                    self.seen.append(Seen(method, path, fault.action))
                    return fault.action
            self.seen.append(Seen(method, path, None))
            return None

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        action = self.owner._take(self.command, self.path, body)
        if action == "reset":
            self._reset()
            return
        if isinstance(action, int):
            self._error(action)
            return
        status, reason, headers, payload = self._forward(body)
        if action == "reset-after":
            self._reset()
            return
        self.send_response_only(status, reason)
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        for name, value in headers:
            low = name.lower()
            if low in _HOP_BY_HOP or (low == "content-length" and not no_body):
                continue
            self.send_header(name, value)
        if not no_body:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not no_body:
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = b"" if self.command == "HEAD" else resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
        finally:
            conn.close()

    def _error(self, status: int) -> None:
        flavor = self.owner.flavor
        code, message = _ERRORS.get(status, ("InternalError", "Injected fault."))
        if flavor == "gcs":
            import json

            payload = json.dumps({"error": {"code": status, "message": message, "errors": [
                {"reason": "rateLimitExceeded" if status == 429 else "backendError", "message": message}]}}).encode()
            ctype = "application/json; charset=UTF-8"
        else:
            if flavor == "azure":
                code = _AZURE_CODES.get(status, "InternalError")
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                       f"<Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>").encode()
            ctype = "application/xml"
        self.send_response_only(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if flavor == "azure":
            self.send_header("x-ms-error-code", code)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle
