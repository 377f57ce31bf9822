"""One client connection's reads under deadlines, and the request a route sees: its head and its bounded body."""

from __future__ import annotations

import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from vkt.runtime.server.errors import (
    HeadersTooLargeError,
    LengthRequiredError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    UnavailableError,
    UnsupportedMediaError,
)
from vkt.runtime.server.http11 import Headers, RequestHead, parse_chunk_size

RECV = 1 << 16
RECV_BODY = 1 << 20
DECODE_STEP = 1 << 20  # a gzip/deflate body is decompressed (and its budget taken) this much at a time


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
        deadline = time.monotonic() + head_timeout_s if self.buf else None
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
            if deadline is None:  # the head starts with its first byte, empty lines before it included
                deadline = time.monotonic() + head_timeout_s
            self.buf += data

    def read_exact(self, n: int, deadline: float, reserve: Callable[[int], None] | None = None,
                   into: bytearray | None = None) -> bytearray:
        """``n`` more bytes appended to ``into`` (a new buffer by default); fewer if the client closes first.

        The buffer grows as bytes arrive (a client that declares 64 MiB and sends 1 kB costs 1 kB);
        ``reserve(k)`` is called before it grows by up to ``k`` bytes (the body budget; it may raise).
        TimeoutError past ``deadline``.
        """
        out = bytearray() if into is None else into
        end = len(out) + n
        reserved = 0  # bytes reserved ahead of what arrived, in steps of at most 1 MiB
        while len(out) < end:
            want = min(end - len(out), RECV_BODY)
            if reserve is not None and reserved < want:
                reserve(want - reserved)
                reserved = want
            if self.buf:
                take = min(want, len(self.buf))
                out += self.buf[:take]
                del self.buf[:take]
                reserved -= take
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(min(self.timeout, left))
            chunk = self.sock.recv(want)
            if not chunk:
                break
            out += chunk
            reserved -= len(chunk)
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
    budget: Any = None  # a MemoryBudget for bodies (admission.py); None: unbounded
    held: int = 0  # bytes of it this request holds, released by release()

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
                body = self.conn.read_exact(n, deadline, self._reserve)
            except TimeoutError:
                self.close = True
                raise RequestTimeoutError(f"the body did not arrive within the request's deadline ({deadline_s:g} s) "
                                          f"or stalled past the socket timeout ({self.conn.timeout:g} s)") from None
            if len(body) != n:
                self.close = True
                raise RequestError(f"the body ended after {len(body)} of {n} bytes (Content-Length)")
        return self._decode(body, limit)

    def _reserve(self, nbytes: int) -> None:
        """Take ``nbytes`` of the body budget before reading them (503, with the body unread, when it is spent)."""
        if self.budget is not None and nbytes:
            try:
                self.budget.acquire(nbytes)
            except UnavailableError:
                self.close = self.linger = True
                raise
            self.held += nbytes

    def release(self) -> None:
        """Give back what this request holds of the body budget (the server calls it once the answer is sent)."""
        if self.budget is not None and self.held:
            self.budget.release(self.held)
            self.held = 0

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
                got = len(body)
                self.conn.read_exact(size, deadline, self._reserve, into=body)
                if len(body) - got != size:
                    raise RequestError("the connection closed in the middle of a chunk")
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
        # In steps, each taken from the body budget before it is kept (the decompressed copy is memory too), and bounded:
        # a small bomb cannot expand past the limit.
        parts: list[bytes] = []
        size, data = 0, body
        try:
            while not d.eof and size <= limit:
                part = d.decompress(data, min(DECODE_STEP, limit + 1 - size))
                data = d.unconsumed_tail
                if not part:
                    break
                self._reserve(len(part))
                parts.append(part)
                size += len(part)
        except zlib.error as e:
            raise RequestError(f"the {enc} body does not decompress: {e}") from None
        if size > limit:
            raise PayloadTooLargeError(f"the {enc} body decompresses to more than {limit} bytes, this server's limit")
        if not d.eof:
            raise RequestError(f"the {enc} body is truncated")
        return b"".join(parts)
