"""HTTP transport: the threaded server with its connection caps, and the handler that reads, routes and answers requests.

One thread per connection (keep-alive). Each request head is read under a deadline that starts
with its first byte (a client trickling a byte at a time cannot hold the thread: the socket
timeout alone restarts with every byte), parsed by the strict grammar of http11.py, dispatched to
the InferenceServer's routes and answered with a JSON body (errors as ``{"error": ...}``). Every
answer, refusals of malformed requests included, has a status line and is counted in /metrics.
Limits that keep one client from hurting the others: the body size cap, the body's deadline and
a memory budget shared by the bodies in flight (connection.py: 413 or 503 before reading;
``Expect: 100-continue`` answered only when the body is wanted), a cap on open connections in all (503) and per client address (so one host's slow
connections cannot lock out the rest), and a brief lingering close so a client still uploading
reads its 413 instead of a connection reset.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from vkt import __version__
from vkt.errors import VktError
from vkt.log import get_logger
from vkt.runtime.server.connection import RECV, Connection, Request
from vkt.runtime.server.errors import NotImplementedByServerError, RequestError, UnavailableError, error_body, status_of
from vkt.runtime.server.http11 import RequestHead, parse_head

log = get_logger(__name__)
SERVER = f"vkt/{__version__}"
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}  # others: 501
__all__ = ["Connection", "HTTPServer", "Handler", "Request", "Response", "TransportLimits", "clip", "json_response"]


@dataclass(frozen=True)
class TransportLimits:
    """Per-connection limits.

    Args:
        socket_timeout_s: a connection silent this long is closed (idle keep-alive, stalled reads).
        head_timeout_s: the whole request head must arrive within this many seconds of its first byte (408 after).
        max_head_bytes: request line + headers; 431 above it.
        max_connections: open connections in all (one thread each); more get 503 and are closed.
        max_connections_per_client: open connections from one client address; more get 503.
    """

    socket_timeout_s: float = 10.0
    head_timeout_s: float = 10.0
    max_head_bytes: int = 32 << 10
    max_connections: int = 256
    max_connections_per_client: int = 64


Response = tuple[int, bytes, dict[str, str]]  # status, body, extra headers (Content-Type defaults to JSON)


def json_response(obj: Any, status: int = 200) -> Response:
    return status, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(), {}


def clip(s: str, n: int = 100) -> str:
    return s if len(s) <= n else s[:n] + "…"


_date_cache: list = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


def response_bytes(status: int, body: bytes, headers: dict[str, str], close: bool, head_only: bool = False) -> bytes:
    """The status line, headers and body of one response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}", f"Server: {SERVER}", f"Date: {http_date()}",
             f"Content-Type: {headers.pop('Content-Type', 'application/json')}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or not body else head + body


class HTTPServer(socketserver.ThreadingTCPServer):
    """Threaded TCP server with a deep backlog and caps on open connections, in all and per client address."""

    daemon_threads = True  # stop() drains and closes connections itself
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # socketserver's default of 5 resets connections under a burst of clients

    def __init__(self, addr: tuple[str, int], handler: type, limits: TransportLimits, on_refused: Any = None):
        self.limits = limits
        self.on_refused = on_refused  # callback(status) for connections refused here (metrics)
        self._conns: dict[socket.socket, str] = {}
        self._per_client: Counter[str] = Counter()
        self._lock = threading.Lock()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6  # e.g. --host ::1
        super().__init__(addr, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        ip = client_address[0]
        lim = self.limits
        with self._lock:
            if len(self._conns) >= lim.max_connections:
                why = f"too many open connections (max {lim.max_connections}); retry later"
            elif self._per_client[ip] >= lim.max_connections_per_client:
                why = (f"too many open connections from {ip} (max {lim.max_connections_per_client} per client, "
                       "vkt serve --max-connections-per-client); retry later")
            else:
                why = ""
                self._conns[request] = ip
                self._per_client[ip] += 1
        if why:
            try:
                request.settimeout(1.0)
                request.sendall(response_bytes(503, error_body(why), {"Retry-After": "1"}, close=True))
            except OSError:
                pass
            if self.on_refused is not None:
                self.on_refused(503)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                ip = self._conns.pop(request, None)
                if ip is not None:
                    self._per_client[ip] -= 1
                    if not self._per_client[ip]:
                        del self._per_client[ip]

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


class Handler(socketserver.BaseRequestHandler):
    """One connection: reads request heads under a deadline, dispatches them (keep-alive), answers JSON."""

    app: Any  # the InferenceServer: match(), begin()/end(), draining, metrics, config
    limits: TransportLimits
    linger = False

    def setup(self) -> None:
        # Keep-alive replies otherwise wait on delayed ACKs: 351 -> 2,771 req/s (app.py).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        conn = Connection(self.request, self.limits.socket_timeout_s)
        while True:
            t0 = time.perf_counter()
            try:
                raw = conn.read_head(self.limits.max_head_bytes, self.limits.head_timeout_s)
                if raw is None:
                    return
                head = parse_head(raw)
            except RequestError as e:  # malformed or late head: answer, count, and close (framing is lost)
                self._refuse(status_of(e), str(e), t0)
                return
            except OSError:
                return
            if not self._dispatch(conn, head, t0):
                return

    def _refuse(self, status: int, message: str, t0: float) -> None:
        self.linger = True  # the client may still be sending the rest of its request
        try:
            self.request.sendall(response_bytes(status, error_body(message), {}, close=True))
        except OSError:
            status = 499
        self.app.metrics.request("http", "", status, time.perf_counter() - t0)

    def _dispatch(self, conn: Connection, head: RequestHead, t0: float) -> bool:
        """Route and answer one request; True if the connection may carry another."""
        app = self.app
        req = Request(head, conn, {}, close=not head.keep_alive, budget=getattr(app, "body_budget", None))
        route_label = "unmatched"
        extra: dict[str, str] = {}
        status = 500
        app.begin()
        try:
            try:
                if head.method not in METHODS:
                    raise NotImplementedByServerError(f"method {clip(head.method, 20)!r} is not supported; use GET or POST")
                route, req.params = app.match(head.method, req.path)
                route_label = route.label
                if app.draining:
                    req.close = True
                    if route_label not in ("live", "ready", "model_ready"):  # probes still get their answer
                        raise UnavailableError("the server is shutting down; send the request to another replica")
                status, body, extra = route.fn(req)
            except VktError as e:
                status, body = status_of(e), error_body(str(e))
                if status == 503:
                    extra = {"Retry-After": str(max(1, round(getattr(e, "retry_after_s", 1.0))))}
                if status == 500:  # the backend failed on valid input: worth a line; 503/504 are load, not faults
                    log.warning("%s %s -> 500: %s", head.method, clip(head.target), e)
                elif status > 500:
                    log.debug("%s %s -> %d: %s", head.method, clip(head.target), status, e)
            except Exception as e:  # a bug: answer 500, keep serving
                log.exception("%s %s failed", head.method, clip(head.target))
                status, body = 500, error_body(f"internal error ({type(e).__name__}: {e})")
            if head.has_body and not req.body_read:
                # An unread body would be parsed as the next request: close, but drain it briefly first so
                # that a client still sending it reads this answer instead of a connection reset.
                req.close = req.linger = True
            self.linger = req.linger
            conn.sock.sendall(response_bytes(status, body, dict(extra), req.close, head_only=head.method == "HEAD"))
        except OSError:
            req.close = True  # the client went away mid-response
            status = 499  # nginx's "client closed request": recorded, never sent
        finally:
            req.release()
            app.end()
            app.metrics.request(route_label, req.model, status, time.perf_counter() - t0)
        return not req.close

    def finish(self) -> None:
        if self.linger:
            # Closing with unread data makes the kernel send RST, which can destroy the answer we just
            # sent before the client reads it. Half-close, then discard input briefly (bounded).
            try:
                self.request.shutdown(socket.SHUT_WR)
                self.request.settimeout(0.2)
                end = time.monotonic() + 1.0
                while time.monotonic() < end and self.request.recv(RECV):
                    pass
            except OSError:
                pass
