"""HTTP transport: the connection handler, the threaded server with its limits, and bounded body reading.

One thread per connection (keep-alive); each request is parsed by http.server, dispatched to the
InferenceServer's routes, and answered with a JSON body (errors as ``{"error": ...}``). The limits
that keep one client from hurting the others live here: the body size cap (413, checked before
reading, also on ``Expect: 100-continue``), a per-connection socket timeout plus an overall
deadline for the body (slow or stalled clients), a cap on open connections (503), and a brief
lingering close so a client still uploading reads its 413 instead of a connection reset.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from vkt import __version__
from vkt.errors import VktError
from vkt.log import get_logger
from vkt.runtime.server.errors import (
    LengthRequiredError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    UnavailableError,
    UnsupportedMediaError,
    error_body,
    status_of,
)

log = get_logger(__name__)


@dataclass
class Request:
    """What a route handler sees: the path parameters, the headers and a bounded body reader."""

    handler: BaseHTTPRequestHandler
    params: dict[str, str]
    model: str = ""  # set once the model name is known to be served (a metrics label)
    body_read: bool = False

    @property
    def headers(self) -> Any:
        return self.handler.headers

    def body(self, limit: int, deadline_s: float) -> bytes:
        """The request body, decompressed if the client sent gzip/deflate; 411/413/408/415 as due.

        The whole body must arrive within ``deadline_s``: the socket timeout alone would let a
        client trickling a byte at a time hold its thread indefinitely.
        """
        deadline = time.monotonic() + deadline_s
        h = self.handler
        self.body_read = True
        if h.headers.get("Transfer-Encoding"):
            h.close_connection = True
            raise LengthRequiredError("chunked Transfer-Encoding is not supported; send the body with a Content-Length header")
        raw = h.headers.get("Content-Length")
        if raw is None:
            h.close_connection = True
            raise LengthRequiredError(f"{h.command} {urlsplit(h.path).path} needs a Content-Length header")
        try:
            n = int(raw)
            if n < 0:
                raise ValueError
        except ValueError:
            h.close_connection = True
            raise RequestError(f"Content-Length must be a non-negative integer, got {raw!r}") from None
        if n > limit:
            h.close_connection = True  # the body stays unread: this connection cannot carry another request
            h.linger = True  # ... but drain a little before closing, so the client reads the 413 rather than a reset
            raise PayloadTooLargeError(f"request body is {n} bytes; this server accepts at most {limit} bytes "
                                       f"({limit / 2**20:.3g} MiB, vkt serve --max-body-mb)")
        body = self._read(n, deadline)
        if len(body) != n:
            h.close_connection = True
            raise RequestError(f"the body ended after {len(body)} of {n} bytes (Content-Length)")
        enc = (h.headers.get("Content-Encoding") or "identity").strip().lower()
        if enc == "identity":
            return body
        if enc not in ("gzip", "deflate"):
            raise UnsupportedMediaError(f"Content-Encoding {enc!r} is not supported; expected gzip, deflate or identity")
        d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)  # deflate here means zlib-wrapped, as HTTP defines it
        try:
            out = d.decompress(body, limit + 1)  # bounded: a small bomb cannot expand past the limit
        except zlib.error as e:
            raise RequestError(f"the {enc} body does not decompress: {e}") from None
        if len(out) > limit:
            raise PayloadTooLargeError(f"the {enc} body decompresses to more than {limit} bytes, this server's limit")
        if not d.eof:
            raise RequestError(f"the {enc} body is truncated")
        return out

    def _read(self, n: int, deadline: float) -> bytes:
        h = self.handler
        chunks, got = [], 0
        try:
            while got < n:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = h.rfile.read1(min(n - got, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except TimeoutError:
            h.close_connection = True
            raise RequestTimeoutError(f"the client sent {got} of {n} body bytes, then stalled past the socket "
                                      f"timeout ({h.timeout} s) or the request's deadline") from None
        return b"".join(chunks)


Response = tuple[int, bytes, dict[str, str]]  # status, body, extra headers (Content-Type defaults to JSON)


def json_response(obj: Any, status: int = 200) -> Response:
    return status, json.dumps(obj, separators=(",", ":")).encode(), {}


def clip(s: str, n: int = 100) -> str:
    return s if len(s) <= n else s[:n] + "…"


class HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a deep backlog, a connection cap and a registry of open connections."""

    daemon_threads = True  # stop() drains and closes connections itself
    block_on_close = False
    request_queue_size = 1024  # socketserver's default of 5 resets connections under a burst of clients

    def __init__(self, addr: tuple[str, int], handler: type, max_connections: int):
        self.max_connections = max_connections
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6  # e.g. --host ::1
        super().__init__(addr, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._lock:
            full = len(self._conns) >= self.max_connections
            if not full:
                self._conns.add(request)
        if full:
            body = error_body(f"too many open connections (max {self.max_connections}); retry later")
            head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
            try:
                request.settimeout(1.0)
                request.sendall(head + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._conns.discard(request)

    def close_connections(self) -> None:
        """Wake every connection thread (idle keep-alive ones block in recv) so that it exits."""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error on connection from %s", client_address)


class Handler(BaseHTTPRequestHandler):
    """One connection: parses requests (keep-alive), dispatches them to the server's routes, answers JSON."""

    protocol_version = "HTTP/1.1"  # keep-alive: tritonclient reuses connections
    disable_nagle_algorithm = True  # keep-alive replies otherwise wait on delayed ACKs: 351 -> 2,771 req/s (app.py)
    server_version = f"vkt/{__version__}"
    sys_version = ""
    app: Any  # the InferenceServer: match(), begin()/end(), draining, metrics, config
    timeout: float
    linger = False

    def handle_expect_100(self) -> bool:
        """Answer 413 before the client uploads an oversized body (curl sends Expect for bodies > 1 MB)."""
        limit = self.app.config.max_body_bytes
        n = self.headers.get("Content-Length", "")
        if n.isdigit() and int(n) > limit:
            self.close_connection = True
            self._send(413, error_body(f"request body is {n} bytes; this server accepts at most {limit} bytes"), {})
            return False
        return super().handle_expect_100()

    def finish(self) -> None:
        super().finish()
        if self.linger:
            # Closing with unread data makes the kernel send RST, which can destroy the 413 we just
            # sent before the client reads it. Half-close, then discard input briefly (bounded).
            try:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(0.2)
                end = time.monotonic() + 1.0
                while time.monotonic() < end and self.connection.recv(1 << 16):
                    pass
            except OSError:
                pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        app = self.app
        t0 = time.perf_counter()
        req = Request(self, {})
        route_label = "unmatched"
        extra: dict[str, str] = {}
        app.begin()
        try:
            try:
                route, req.params = app.match(method, urlsplit(self.path).path)
                route_label = route.label
                if app.draining:
                    self.close_connection = True
                    if route_label not in ("live", "ready", "model_ready"):  # probes still get their answer
                        raise UnavailableError("the server is shutting down; send the request to another replica")
                status, body, extra = route.fn(req)
            except VktError as e:
                status, body = status_of(e), error_body(str(e))
                if status == 500:  # the backend failed on valid input: worth a line; 503/504 are load, not faults
                    log.warning("%s %s -> 500: %s", method, clip(self.path), e)
                elif status > 500:
                    log.debug("%s %s -> %d: %s", method, clip(self.path), status, e)
            except Exception as e:  # a bug: answer 500, keep serving
                log.exception("%s %s failed", method, clip(self.path))
                status, body = 500, error_body(f"internal error ({type(e).__name__}: {e})")
            if status == 503:
                extra = {**extra, "Retry-After": "1"}
            if self.headers.get("Content-Length", "0") not in ("0", "") and not req.body_read:
                self.close_connection = True  # an unread body would be parsed as the next request
            self._send(status, body, extra)
        except OSError:
            self.close_connection = True  # the client went away mid-response
            status = 499  # nginx's "client closed request": recorded, never sent
        finally:
            app.end()
            app.metrics.request(route_label, req.model, status, time.perf_counter() - t0)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, oversized headers, unknown method) as JSON too."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        msg = message or phrase
        if code == 501:
            msg = f"method {self.command!r} is not supported; use GET or POST"
        try:
            self._send(code, error_body(msg), {})
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)

