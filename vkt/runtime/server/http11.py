"""HTTP/1.1 request grammar (RFC 9110/9112), strict: the request head, its body framing, chunk-size lines.

Strict where leniency lets two parsers disagree about where a request ends (request smuggling
behind a proxy): one Content-Length of digits only (repeats allowed only if identical), never
together with Transfer-Encoding, Transfer-Encoding only ``chunked``, header lines ``name: value``
with a token name and no line folding, CRLF line ends. Anything else is a 400 (501 for an unknown
transfer coding, 505 for another HTTP version) that names what was wrong; the connection is then
closed because where the next request would start is unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vkt.runtime.server.errors import (
    HeadersTooLargeError,
    NotImplementedByServerError,
    RequestError,
    VersionNotSupportedError,
)

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# field-value: visible characters (and obs-text) with single spaces/tabs inside, none at the ends.
HEADER_LINE = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?)[ \t]*")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(;[^\r\n]*)?")
MAX_HEADERS = 100


class Headers:
    """Header fields in arrival order with case-insensitive lookup (names as ``bytes.decode('latin-1')``)."""

    def __init__(self, fields: list[tuple[str, str]]):
        self.fields = fields
        self._by_name: dict[str, list[str]] = {}
        for k, v in fields:
            self._by_name.setdefault(k.lower(), []).append(v)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The field's value; repeated fields joined with ", " (RFC 9110 5.3)."""
        values = self._by_name.get(name.lower())
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._by_name.get(name.lower(), ()))

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._by_name


@dataclass(frozen=True)
class RequestHead:
    """A parsed request line and header section.

    Attributes:
        method, target: as sent (``target`` is origin-form, e.g. ``/v2/models/m/infer?x=1``).
        version: ``(1, 1)`` or ``(1, 0)``.
        headers: the fields.
        length: the body's Content-Length; 0 without a body; None when the body is chunked.
        chunked: ``Transfer-Encoding: chunked``.
        keep_alive: the connection may carry another request after this one.
        expect_continue: ``Expect: 100-continue`` (the client waits for a 100 before the body).
    """

    method: str
    target: str
    version: tuple[int, int]
    headers: Headers
    length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


def parse_head(head: bytes) -> RequestHead:
    """Parse a request head (request line + header lines, CRLF separated, without the final empty line)."""
    lines = head.split(b"\r\n")
    if any(b"\r" in x or b"\n" in x for x in lines):
        raise RequestError("a line of the request head ends in a bare CR or LF; HTTP/1.1 lines end in CRLF")
    m = REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise RequestError(f"malformed request line {_show(lines[0])}; expected 'METHOD /path HTTP/1.1'")
    method, target = m.group(1).decode("ascii"), m.group(2).decode("ascii")
    version = (int(m.group(3)), int(m.group(4)))
    if version[0] != 1:
        raise VersionNotSupportedError(f"HTTP/{version[0]}.{version[1]} is not supported; send HTTP/1.1 or HTTP/1.0")
    if not target.startswith("/"):
        raise RequestError(f"request target {_show(m.group(2))} must be a path starting with '/'")
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadersTooLargeError(f"the request has {len(lines) - 1} header lines; this server accepts at most {MAX_HEADERS}")
    fields = []
    for line in lines[1:]:
        h = HEADER_LINE.fullmatch(line)
        if h is None:
            if line[:1] in (b" ", b"\t"):
                raise RequestError(f"header line {_show(line)} is folded onto the previous one (obsolete in HTTP/1.1)")
            raise RequestError(f"malformed header line {_show(line)}; expected 'Name: value' with a token name")
        fields.append((h.group(1).decode("latin-1"), h.group(2).decode("latin-1")))
    headers = Headers(fields)
    length, chunked = _framing(headers, version)
    if len(headers.get_all("Host")) > 1:
        raise RequestError("the request has more than one Host header")
    tokens = {t.strip().lower() for t in (headers.get("Connection") or "").split(",")}
    keep_alive = "close" not in tokens and (version >= (1, 1) or "keep-alive" in tokens)
    expect = (headers.get("Expect") or "").strip().lower()
    if expect and expect != "100-continue":
        raise RequestError(f"Expect {_show(expect.encode())} is not supported; only '100-continue' is")
    return RequestHead(method, target, version, headers, length, chunked, keep_alive, expect == "100-continue" and version >= (1, 1))


def _framing(headers: Headers, version: tuple[int, int]) -> tuple[int | None, bool]:
    """``(content_length, chunked)`` from the headers; refuses every ambiguous combination."""
    te = headers.get_all("Transfer-Encoding")
    cl = headers.get_all("Content-Length")
    if te:
        if cl:
            raise RequestError("the request has both Transfer-Encoding and Content-Length; send one")
        if version < (1, 1):
            raise RequestError("Transfer-Encoding needs HTTP/1.1")
        codings = [c.strip().lower() for v in te for c in v.split(",")]
        if codings != ["chunked"]:
            raise NotImplementedByServerError(f"Transfer-Encoding {', '.join(te)!r} is not supported; send "
                                              "'chunked' alone or a Content-Length")
        return None, True
    if not cl:
        return 0, False
    values = {c.strip() for v in cl for c in v.split(",")}
    if len(values) != 1:
        raise RequestError(f"conflicting Content-Length values {sorted(values)}; send exactly one")
    value = values.pop()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise RequestError(f"Content-Length must be decimal digits, got {value[:40]!r}")
    return int(value), False


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (hex, optional extensions), e.g. ``b"1a;name=x"`` -> 26."""
    m = CHUNK_SIZE.fullmatch(line)
    if m is None:
        raise RequestError(f"malformed chunk-size line {_show(line)} in the chunked body; expected hex digits")
    return int(m.group(1), 16)


def _show(raw: bytes, n: int = 60) -> str:
    s = raw[:n].decode("latin-1")
    return repr(s if len(raw) <= n else s + "…")
