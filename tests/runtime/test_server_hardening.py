"""vkt serve on a hostile network: strict HTTP framing, deadlines, connection caps, bounded memory, honest overload."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time

import cv2
import numpy as np
import pytest

from vkt import __version__
from vkt.errors import BundleError, VktError
from vkt.runtime import make_runner
from vkt.runtime.server import InferenceServer, ServedModel, ServerConfig, models_from_bundles
from vkt.runtime.server import image_body
from vkt.runtime.server.admission import MemoryBudget
from server_tools import CountingRunner
from vkt.runtime.server.errors import PayloadTooLargeError, UnavailableError, UnsupportedMediaError

GOOD = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.5] * 768}]}).encode()


@pytest.fixture(scope="module")
def bundle(served_toy_bundle):
    return served_toy_bundle


@pytest.fixture(scope="module")
def server(bundle):
    cfg = ServerConfig(port=0, warmup=False, max_body_bytes=16 << 20, socket_timeout_s=0.5, head_timeout_s=1.0)
    with InferenceServer(models_from_bundles([bundle]), cfg) as srv:
        yield srv


def exchange(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(host, 0)) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
        return out


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]  # a status line, always
    return int(answer.split(b" ", 2)[1])


def counter(srv: InferenceServer, route: str, code: int) -> int:
    return srv.metrics.requests.get((("route", route), ("model", ""), ("code", str(code))), 0)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").encode() + body


# ---- HTTP framing: refused with a status line, counted, connection closed ----------------------------
@pytest.mark.parametrize("raw, code, words", [
    (b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
     400, "conflicting Content-Length"),
    (b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400, "decimal digits"),
    (b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n0123456789", 400, "decimal digits"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "malformed header line"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400, "folded"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX A: 1\r\n\r\n", 400, "malformed header line"),
    (b"GET /v2/health/live\r\n\r\n", 400, "malformed request line"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "malformed request line"),  # TLS to a plain port
    (b"GET /v2/health/live HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0"),
    (b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
     400, "both Transfer-Encoding and Content-Length"),
    (b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "not supported"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "more than one Host"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Bare: a\rb\r\n\r\n", 400, "bare CR"),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431, "over 32768 bytes"),
], ids=["two-content-lengths", "plus-sign", "underscores", "no-colon", "folded", "space-in-name", "http-0.9", "tls",
        "http-2", "te-and-cl", "te-gzip", "two-hosts", "bare-cr", "huge-head"])
def test_malformed_requests_get_a_status_line_and_are_counted(server, raw, code, words):
    before = counter(server, "http", code)
    answer = exchange(server.port, raw)
    assert status_of(answer) == code, answer[:300]
    assert words in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert b"\r\nConnection: close\r\n" in answer
    assert counter(server, "http", code) == before + 1


def test_chunk_bytes_are_never_parsed_as_the_next_request(server):
    """Transfer-Encoding on a route that reads no body: the connection closes instead of reading chunk data as a request."""
    smuggled = b"GET /v2/models/toy/config HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           + f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n")
    answer = exchange(server.port, raw)
    assert answer.count(b"HTTP/1.1 ") == 1 and status_of(answer) == 200 and b"Connection: close" in answer


def test_chunked_body_is_read_like_a_content_length_one(server):
    chunks = [GOOD[:100], GOOD[100:1000], GOOD[1000:]]
    body = b"".join(f"{len(c):x};ext=1\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    chunked = exchange(server.port, post("/v2/models/toy/infer", body, "Transfer-Encoding: chunked\r\n"))
    plain = exchange(server.port, post("/v2/models/toy/infer", GOOD, f"Content-Length: {len(GOOD)}\r\n"))
    assert status_of(chunked) == 200 and status_of(plain) == 200
    assert chunked.split(b"\r\n\r\n", 1)[1] == plain.split(b"\r\n\r\n", 1)[1]
    # a chunked body over the limit: 413 before it is all read
    big = b"".join(b"100000\r\n" + b"a" * 0x100000 + b"\r\n" for _ in range(17)) + b"0\r\n\r\n"
    assert status_of(exchange(server.port, post("/v2/models/toy/infer", big, "Transfer-Encoding: chunked\r\n"))) == 413


def test_server_header_has_no_trailing_space(server):
    answer = exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert f"\r\nServer: vkt/{__version__}\r\n".encode() in answer


# ---- slow clients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("trickle", [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200, b"\r\n" * 100],
                         ids=["header-bytes", "empty-lines"])
def test_head_trickled_a_byte_at_a_time_gets_408_at_its_deadline(server, trickle):
    """Each byte comes well within the 0.5 s socket timeout; the whole head must still arrive within 1 s."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        got = b""
        for b in trickle:
            try:
                s.sendall(bytes([b]))
            except OSError:  # the server closed: the deadline passed
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                got += s.recv(1 << 16)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if got:
                break
        s.settimeout(5)
        try:
            while chunk := s.recv(1 << 16):
                got += chunk
        except ConnectionResetError:
            pass
    assert status_of(got) == 408 and b"did not arrive within 1 s" in got, got[:200]


def test_one_client_address_cannot_take_every_connection(bundle):
    cfg = ServerConfig(port=0, warmup=False, max_connections_per_client=2, max_connections=16, socket_timeout_s=5.0)
    with InferenceServer(models_from_bundles([bundle]), cfg) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2)]
        try:
            for s in held:  # both connections are being served (keep-alive, idle)
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(1 << 16).startswith(b"HTTP/1.1 200 ")
            third = exchange(srv.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(third) == 503 and b"per client" in third and b"Retry-After: 1" in third
            other = exchange(srv.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                             host="127.0.0.2")  # another client address is still served
            assert status_of(other) == 200
            assert counter(srv, "connection_limit", 503) == 1
        finally:
            for s in held:
                s.close()


def test_bodies_share_a_memory_budget(bundle):
    """Two 800 kB uploads against a 1 MiB budget: the second waits for room, then gets 503 unread; later it fits."""
    body = GOOD + b" " * (800_000 - len(GOOD))  # trailing whitespace: still one JSON document
    head = f"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    cfg = ServerConfig(port=0, warmup=False, max_body_bytes=16 << 20, body_budget_bytes=1 << 20)
    with InferenceServer(models_from_bundles([bundle]), cfg) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as first:
            first.sendall(head.encode() + body[:1000])  # the server holds 800 kB of the budget while it reads
            end = time.monotonic() + 10
            while srv.body_budget.used == 0 and time.monotonic() < end:
                time.sleep(0.01)
            second = exchange(srv.port, head.encode() + body)
            assert status_of(second) == 503 and b"request bodies hold" in second and b"--body-budget-mb" in second
            first.sendall(body[1000:])
            answer = b""
            while chunk := first.recv(1 << 16):
                answer += chunk
            assert status_of(answer) == 200
        assert status_of(exchange(srv.port, head.encode() + body)) == 200  # released: it fits now
        assert srv.body_budget.used == 0


def test_a_slow_upload_holds_only_what_it_sent_of_the_budget(bundle):
    """8 MiB declared, 1 kB sent: the upload holds what it sent plus one 1 MiB read step, so 500 kB beside it is served."""
    small = GOOD + b" " * (500_000 - len(GOOD))
    cfg = ServerConfig(port=0, warmup=False, max_body_bytes=16 << 20, body_budget_bytes=3 << 20)
    with InferenceServer(models_from_bundles([bundle]), cfg) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as slow:
            slow.sendall(f"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
                         + b" " * 1000)
            end = time.monotonic() + 10
            while srv.body_budget.used == 0 and time.monotonic() < end:
                time.sleep(0.01)
            assert srv.body_budget.used <= (1 << 20) + 1000  # what it sent + one read step, not 8 MiB
            assert status_of(exchange(srv.port, post("/v2/models/toy/infer", small, f"Content-Length: {len(small)}\r\n"))) == 200


def test_a_gzip_body_takes_its_decompressed_size_from_the_budget(bundle):
    """800 kB of JSON gzipped to ~1 kB, beside an upload holding 800 kB of a 1 MiB budget: the decompressed copy does not
    fit, so 503 (it used to count only the 1 kB on the wire); alone, the same request is served and gives it all back."""
    import gzip

    body = GOOD + b" " * (800_000 - len(GOOD))
    packed = gzip.compress(body)
    assert len(packed) < 10_000
    zipped = post("/v2/models/toy/infer", packed, f"Content-Length: {len(packed)}\r\nContent-Encoding: gzip\r\n")
    cfg = ServerConfig(port=0, warmup=False, max_body_bytes=16 << 20, body_budget_bytes=1 << 20)
    with InferenceServer(models_from_bundles([bundle]), cfg) as srv:
        srv.body_budget.wait_s = 0.2
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as first:
            first.sendall(f"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body[:1000])
            end = time.monotonic() + 10
            while srv.body_budget.used == 0 and time.monotonic() < end:
                time.sleep(0.01)
            answer = exchange(srv.port, zipped)
            assert status_of(answer) == 503 and b"request bodies hold" in answer
        end = time.monotonic() + 10
        while srv.body_budget.used and time.monotonic() < end:  # the first connection's hold goes when it closes
            time.sleep(0.01)
        assert status_of(exchange(srv.port, zipped)) == 200
        assert srv.body_budget.used == 0


# ---- JSON bodies -----------------------------------------------------------------------------------
def test_json_at_the_model_limit_nested_like_its_shape_is_accepted():
    """The pre-parse bound counts values, not arrays: the toy's largest input, nested 4 deep, still parses."""
    from vkt.runtime.server.protocol import parse_infer_request

    x = np.zeros((8, 3, 256, 256), np.float32)
    body = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]})
    assert parse_infer_request(body.encode(), max_values=x.size).inputs["image"].shape == x.shape


@pytest.mark.parametrize("body, code, words", [
    (GOOD.replace(b"0.5,", b"NaN,", 1), 400, "NaN is not a JSON number"),
    (GOOD.replace(b"0.5,", b"-Infinity,", 1), 400, "-Infinity is not a JSON number"),
    (GOOD.replace(b"0.5,", b"9" * 5000 + b",", 1), 400, "malformed JSON"),
    (GOOD.replace(b"[1, 3, 16, 16]", json.dumps([1] * 65).encode()), 400, "65 dimensions"),
    # a small shape with a huge 'data' list: refused before the list is built (the toy takes <= 8x3x256x256 values)
    (GOOD.replace(b"[1, 3, 16, 16]", b"[1]").replace(b"0.5, " * 767, b"0.5," * 1_700_000), 413,
     "shapes declare 1 and the model's inputs take at most 1572864"),
    (GOOD.replace(b"[1, 3, 16, 16]", b"[1, 3, 4, 4]").replace(b"0.5, " * 767, b"0.5," * 100_000), 413,
     "values but its shapes declare 48 and"),
], ids=["nan", "infinity", "5000-digits", "65-dims", "data-past-the-model", "data-past-the-shapes"])
def test_json_infer_bodies_are_checked_before_they_cost(server, body, code, words):
    answer = exchange(server.port, post("/v2/models/toy/infer", body, f"Content-Length: {len(body)}\r\n"))
    assert status_of(answer) == code, answer[:300]
    assert words in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


# ---- honest overload ---------------------------------------------------------------------------------
def test_overload_is_503_with_retry_after_not_a_late_504(bundle):
    """0.3 s per call, one at a time, 1.2 s deadline, a 64-deep queue: 8 at once cannot all finish in time."""
    cfg = ServerConfig(port=0, warmup=False, max_batch_size=1, queue_size=64, timeout_s=1.2)
    srv = InferenceServer([ServedModel("toy", CountingRunner(make_runner(bundle), 0.3))], cfg)
    with srv:
        assert status_of(exchange(srv.port, post("/v2/models/toy/infer", GOOD, f"Content-Length: {len(GOOD)}\r\n"))) == 200
        answers: list[bytes] = []
        threads = [threading.Thread(target=lambda: answers.append(
            exchange(srv.port, post("/v2/models/toy/infer", GOOD, f"Content-Length: {len(GOOD)}\r\n")))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    codes = sorted(status_of(a) for a in answers)
    assert set(codes) == {200, 503}, codes  # no 504: what could not finish in time was refused at once
    refused = [a for a in answers if status_of(a) == 503]
    assert all(b"\r\nRetry-After: " in a and b"would take about" in a for a in refused)


def test_admission_by_expected_wait_hand_computed(monkeypatch):
    """Pace = seconds between completions / cost completed; expected = (cost in flight + own cost) * pace."""
    from vkt.runtime.server import admission as adm

    clock = [0.0]
    monkeypatch.setattr(adm.time, "monotonic", lambda: clock[0])
    a = adm.Admission("m", capacity=64)
    with a.admit(10.0, cost=2.0):  # idle: always admitted; done after 4 s -> 2 s per unit of cost
        clock[0] = 4.0
    assert a.pace == 2.0
    with a.admit(10.0, cost=1.0), a.admit(10.0, cost=1.0):  # 2 units in flight
        assert a.expected_s(1.0) == 6.0  # (2 + 1) * 2 s
        a.check(12.0, cost=1.0)  # 6 s <= half of 12 s: admitted
        with pytest.raises(UnavailableError, match="would take about 6 s") as e:
            a.check(10.0, cost=1.0)  # 6 s > half of 10 s
        assert e.value.retry_after_s == 1  # ceil(6 - 5)
        with pytest.raises(UnavailableError):
            a.check(12.0)  # a typical request (the average cost completed, 2 units): (2 + 2) * 2 = 8 s > 6 s
        clock[0] = 5.0
    assert a.in_flight == 0 and a.cost_in_flight == 0
    clock[0] = 1000.0
    with a.admit(0.001, cost=100.0):  # idle again: admitted however slow the pace says it is, so the pace is relearnt
        pass
    with pytest.raises(UnavailableError, match="--queue-size 1"):
        b = adm.Admission("m", capacity=1)
        with b.admit(10.0), b.admit(10.0):
            pass


# ---- images: size from the header before any decoding ----------------------------------------------------
def _jpeg_claiming(w: int, h: int) -> bytes:
    """A real 16x16 JPEG whose frame header claims w x h, with a stray byte before its first table (libjpeg skips it)."""
    _, enc = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(enc.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data[:2] + b"\x00" + data[2:])


def _tiff_claiming(w: int, h: int, sample_format: int = 1, bits: int = 8) -> bytes:
    tags = [(256, 4, w), (257, 4, h), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
            (278, 4, h), (279, 4, w * h), (339, 3, sample_format)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, typ, 1, v) for t, typ, v in tags) + b"\0" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _webp_claiming(w: int, h: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


@pytest.mark.parametrize("data", [_jpeg_claiming(20000, 20000), _tiff_claiming(20000, 20000), _webp_claiming(16000, 16000)],
                         ids=["jpeg-stray-byte", "tiff", "webp"])
def test_image_bombs_are_refused_before_decoding(monkeypatch, data):
    calls = []
    monkeypatch.setattr(image_body.cv2, "imdecode", lambda *a: calls.append(a) or np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(PayloadTooLargeError, match="pixels; this server accepts at most 1000000"):
        image_body.decode_image(data, max_pixels=1_000_000)
    assert calls == []  # OpenCV never saw it


@pytest.mark.parametrize("data, name", [
    (_tiff_claiming(8, 8, sample_format=3, bits=32), "floating-point TIFF"),
    (cv2.imencode(".pfm", np.zeros((8, 8, 3), np.float32))[1].tobytes(), "PFM"),
    (cv2.imencode(".hdr", np.zeros((8, 8, 3), np.float32))[1].tobytes(), "Radiance HDR"),
    (cv2.imencode(".ras", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "Sun Raster"),
    (cv2.imencode(".gif", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "GIF"),
    (cv2.imencode(".pam", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "PAM"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00", "AVIF"),
    (b"\x01\x02\x03 not an image", "not an image in an accepted format"),
])
def test_formats_off_the_allow_list_are_refused_by_name(data, name):
    with pytest.raises(UnsupportedMediaError, match=name):
        image_body.decode_image(data, max_pixels=10**8)


@pytest.mark.parametrize("ext, img", [
    (".png", np.zeros((23, 37, 3), np.uint8)), (".png", np.zeros((23, 37), np.uint16)),
    (".png", np.zeros((23, 37, 4), np.uint8)), (".jpg", np.zeros((23, 37, 3), np.uint8)),
    (".jpg", np.zeros((23, 37), np.uint8)), (".bmp", np.zeros((23, 37, 3), np.uint8)),
    (".tiff", np.zeros((23, 37, 3), np.uint8)), (".tiff", np.zeros((23, 37), np.uint16)),
    (".webp", np.zeros((23, 37, 3), np.uint8)), (".ppm", np.zeros((23, 37, 3), np.uint8)),
    (".pgm", np.zeros((23, 37), np.uint8)), (".pbm", np.zeros((23, 37), np.uint8)),
], ids=lambda v: v if isinstance(v, str) else f"{v.dtype}x{v.shape[2] if v.ndim == 3 else 1}")
def test_header_sizes_agree_with_the_decoder(ext, img):
    """For every accepted format, the size read from the header is the size OpenCV decodes (the peer)."""
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # 101: lossless (VP8L); lossy below
    for p in ([params, [cv2.IMWRITE_WEBP_QUALITY, 80]] if ext == ".webp" else [params]):
        data = cv2.imencode(ext, img, p)[1].tobytes()
        info = image_body.image_info(data)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert (info.height, info.width) == decoded.shape[:2] == (23, 37)
        assert info.decode_bytes >= decoded.nbytes


def test_decode_budget_refuses_a_decode_that_would_overrun_it():
    budget = MemoryBudget(100, wait_s=0.05)
    with budget.hold(80):
        with pytest.raises(UnavailableError, match="budget"):
            with budget.hold(30):
                pass
        with budget.hold(20):  # fits beside the first
            assert budget.used == 100
    with budget.hold(500):  # alone, even one over the budget goes through (it passed the pixel limit)
        assert budget.used == 500
    assert budget.used == 0


# ---- smaller: config, links out of a bundle, a failed bind ----------------------------------------------
def test_config_does_not_reveal_the_bundle_path(server, bundle):
    answer = exchange(server.port, b"GET /v2/models/toy/config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    cfg = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert cfg["parameters"]["vkt_bundle"] == {"string_value": "toy"}
    assert str(bundle.parent).encode() not in answer


def test_model_file_linked_outside_the_bundle_is_refused(toy_bundle, tmp_path):
    from vkt.bundle import Bundle

    b = Bundle.load(toy_bundle)
    model = b.path("fp32 onnx")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(model.read_bytes())  # same bytes: the manifest's sha256 still matches
    model.unlink()
    os.symlink(outside, model)
    with pytest.raises(BundleError, match="links outside the bundle folder"):
        models_from_bundles([toy_bundle])


def test_failed_bind_does_not_claim_a_drain(bundle):
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("vkt")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = ServerConfig(port=taken.getsockname()[1], warmup=False)
        try:
            with pytest.raises(VktError, match="cannot listen on 127.0.0.1"):
                InferenceServer(models_from_bundles([bundle]), cfg).run()
        finally:
            log.removeHandler(handler)
            log.setLevel(level)
    assert not [r for r in records if "draining" in r], records
