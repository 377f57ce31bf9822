"""HTTP transport: connections with deadlines, bounded body reading, and the threaded server with its connection caps.

One thread per connection (keep-alive). Each request head is read under a deadline that starts
with its first byte (a client trickling a byte at a time cannot hold the thread: the socket
timeout alone restarts with every byte), parsed by the strict grammar of http11.py, dispatched to
the InferenceServer's routes and answered with a JSON body (errors as ``{"error": ...}``). Every
answer, refusals of malformed requests included, has a status line and is counted in /metrics.
Limits that keep one client from hurting the others: the body size cap (413, checked before
reading; ``Expect: 100-continue`` is answered only when the body is wanted), a deadline for the
body, a cap on open connections in all (503) and per client address (so one host's slow
connections cannot lock out the rest), and a brief lingering close so a client still uploading
reads its 413 instead of a connection reset.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from vkt import __version__
from vkt.errors import VktError
from vkt.log import get_logger
from vkt.runtime.server.errors import (
    HeadersTooLargeError,
    LengthRequiredError,
    NotImplementedByServerError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    UnavailableError,
    UnsupportedMediaError,
    error_body,
    status_of,
)
from vkt.runtime.server.http11 import Headers, RequestHead, parse_chunk_size, parse_head

log = get_logger(__name__)
SERVER = f"vkt/{__version__}"
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}  # others: 501
RECV = 1 << 16


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


class Connection:
    """A client socket with a read buffer; every read is bounded by the socket timeout and a deadline."""

    def __init__(self, sock: socket.socket, socket_timeout_s: float):
        self.sock = sock
        self.timeout = socket_timeout_s
        self.buf = bytearray()

    def _recv(self, deadline: float, size: int = RECV) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(min(self.timeout, left))
        return self.sock.recv(size)

    def read_head(self, max_bytes: int, head_timeout_s: float) -> bytes | None:
        """The next request head (without its final CRLF CRLF); None if the client closed or idled out first.

        Raises RequestTimeoutError (the head started but did not finish in time) or HeadersTooLargeError.
        """
        deadline = None
        while True:
            while self.buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request line
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                if end > max_bytes:
                    raise HeadersTooLargeError(f"the request head is over {max_bytes} bytes, this server's limit")
                head = bytes(self.buf[:end])
                del self.buf[:end + 4]
                return head
            if len(self.buf) > max_bytes:
                raise HeadersTooLargeError(f"the request head is over {max_bytes} bytes, this server's limit")
            if self.buf and deadline is None:
                deadline = time.monotonic() + head_timeout_s
            try:
                data = self._recv(deadline if deadline is not None else time.monotonic() + self.timeout)
            except TimeoutError:
                if deadline is None:
                    return None  # idle keep-alive connection: close quietly
                raise RequestTimeoutError(f"the request head did not arrive within {head_timeout_s:g} s "
                                          f"({len(self.buf)} bytes came)") from None
            if not data:
                if self.buf:
                    raise RequestError(f"the connection closed in the middle of the request head ({len(self.buf)} bytes)")
                return None
            self.buf += data

    def read_exact(self, n: int, deadline: float) -> bytearray:
        """``n`` bytes; fewer if the client closes first. TimeoutError past ``deadline``."""
        out = bytearray(n)
        got = min(n, len(self.buf))
        out[:got] = self.buf[:got]
        del self.buf[:got]
        view = memoryview(out)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(min(self.timeout, left))
            k = self.sock.recv_into(view[got:], min(n - got, 1 << 20))
            if not k:
                return out[:got]
            got += k
        return out

    def read_line(self, limit: int, deadline: float) -> bytes:
        """One CRLF-terminated line (without it), at most ``limit`` bytes."""
        while True:
            end = self.buf.find(b"\r\n")
            if 0 <= end <= limit:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if end > limit or len(self.buf) > limit:
                raise RequestError(f"a line of the chunked body is longer than {limit} bytes")
            data = self._recv(deadline)
            if not data:
                raise RequestError("the connection closed in the middle of the chunked body")
            self.buf += data


@dataclass
class Request:
    """What a route handler sees: the path parameters, the headers and a bounded body reader."""

    head: RequestHead
    conn: Connection
    params: dict[str, str]
    model: str = ""  # set once the model name is known to be served (a metrics label)
    body_read: bool = False
    close: bool = False  # close the connection after the response
    linger: bool = False  # ... and drain unread input briefly first (the client may still be uploading)
    sent_continue: bool = field(default=False, repr=False)

    @property
    def headers(self) -> Headers:
        return self.head.headers

    @property
    def path(self) -> str:
        return urlsplit(self.head.target).path

    def body(self, limit: int, deadline_s: float) -> bytes:
        """The request body (Content-Length or chunked), decompressed if the client sent gzip/deflate.

        411/413/408/415 as due; the whole body must arrive within ``deadline_s``.
        """
        deadline = time.monotonic() + deadline_s
        h = self.head
        self.body_read = True
        if h.chunked:
            body = self._read_chunked(limit, deadline)
        else:
            n = h.length or 0
            if n == 0 and h.method in ("POST", "PUT", "PATCH") and "Content-Length" not in h.headers:
                raise LengthRequiredError(f"{h.method} {self.path} needs a body with a Content-Length header "
                                          "(or Transfer-Encoding: chunked)")
            if n > limit:
                self.close = self.linger = True  # unread body: drain a little so the client reads the 413, not a reset
                raise PayloadTooLargeError(f"request body is {n} bytes; this server accepts at most {limit} bytes "
                                           f"({limit / 2**20:.3g} MiB, vkt serve --max-body-mb)")
            self._continue()
            try:
                body = self.conn.read_exact(n, deadline)
            except TimeoutError:
                self.close = True
                raise RequestTimeoutError(f"the body did not arrive within the request's deadline ({deadline_s:g} s) "
                                          f"or stalled past the socket timeout ({self.conn.timeout:g} s)") from None
            if len(body) != n:
                self.close = True
                raise RequestError(f"the body ended after {len(body)} of {n} bytes (Content-Length)")
        return self._decode(body, limit)

    def _continue(self) -> None:
        if self.head.expect_continue and not self.sent_continue:
            self.sent_continue = True
            self.conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_chunked(self, limit: int, deadline: float) -> bytearray:
        self._continue()
        body = bytearray()
        self.close = True  # until the body has been read to its end
        try:
            while True:
                size = parse_chunk_size(self.conn.read_line(1024, deadline))
                if size == 0:
                    while self.conn.read_line(8 << 10, deadline):  # trailer fields: read and dropped
                        pass
                    break
                if len(body) + size > limit:
                    self.linger = True
                    raise PayloadTooLargeError(f"the chunked body is over {limit} bytes; this server accepts at most "
                                               f"{limit} bytes ({limit / 2**20:.3g} MiB, vkt serve --max-body-mb)")
                chunk = self.conn.read_exact(size, deadline)
                if len(chunk) != size:
                    raise RequestError("the connection closed in the middle of a chunk")
                body += chunk
                if self.conn.read_line(0, deadline) != b"":
                    raise RequestError("a chunk is longer than its chunk-size line says")
        except TimeoutError:
            raise RequestTimeoutError("the chunked body did not arrive within the request's deadline "
                                      "or stalled past the socket timeout") from None
        self.close = not self.head.keep_alive
        return body

    def _decode(self, body: bytes, limit: int) -> bytes:
        enc = (self.headers.get("Content-Encoding") or "identity").strip().lower()
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
        req = Request(head, conn, {}, close=not head.keep_alive)
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
                req.close = True  # an unread body would be parsed as the next request
            self.linger = req.linger
            conn.sock.sendall(response_bytes(status, body, dict(extra), req.close, head_only=head.method == "HEAD"))
        except OSError:
            req.close = True  # the client went away mid-response
            status = 499  # nginx's "client closed request": recorded, never sent
        finally:
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
