"""vkt serve: tritonclient works against it unchanged, batching batches, bad input gets a 4xx and the server stays up."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vkt.errors import BackendError
from vkt.runtime import OrtRunner, make_runner
from vkt.runtime.server import InferenceServer, ServedModel, ServerConfig, models_from_bundles
from vkt.runtime.server.errors import RequestError
from vkt.runtime.server.protocol import encode_infer_request, parse_infer_request
from server_tools import CountingRunner

th = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'vkt[test]')")



@pytest.fixture(scope="module")
def bundle(served_toy_bundle):
    return served_toy_bundle


@pytest.fixture(scope="module")
def server(bundle):
    cfg = ServerConfig(port=0, max_body_bytes=1 << 20, socket_timeout_s=1.0, timeout_s=10.0)
    with InferenceServer(models_from_bundles([bundle]), cfg) as srv:
        yield srv
        assert th.InferenceServerClient(srv.url[7:]).is_server_live()  # still up after every test in the module


@pytest.fixture(scope="module")
def reference(toy_onnx):
    with OrtRunner(toy_onnx) as r:
        yield r


def _server(bundle, delay_s: float = 0.0, **cfg) -> tuple[InferenceServer, CountingRunner]:
    runner = CountingRunner(make_runner(bundle), delay_s)
    config = ServerConfig(**{"port": 0, "warmup": False, **cfg})
    return InferenceServer([ServedModel("toy", runner)], config), runner


def _image(seed: int, batch: int = 1, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 10.0) -> tuple[int, dict, bytes]:
    host, port = url[7:].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request(method, path, body, headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), data
    finally:
        c.close()


def _infer_raw(url: str, model: str, x: np.ndarray, binary: bool = True) -> tuple[int, bytes]:
    body, hl = encode_infer_request({"image": x}, binary=binary)
    headers = {"Content-Type": "application/octet-stream"} | ({"Inference-Header-Content-Length": str(hl)} if hl else {})
    status, _, data = _request(url, "POST", f"/v2/models/{model}/infer", body, headers)
    return status, data


def _triton_infer(client, model: str, x: np.ndarray, binary: bool = True, **kw):
    inp = th.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = th.InferRequestedOutput("features", binary_data=binary)
    return client.infer(model, [inp], outputs=[out], **kw)


# ---- tritonclient, unchanged ------------------------------------------------------------------
def test_tritonclient_health_metadata_config(server):
    c = th.InferenceServerClient(server.url[7:])
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("toy")
    assert not c.is_model_ready("nope")
    assert c.get_server_metadata()["name"] == "vkt"
    meta = c.get_model_metadata("toy")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert meta["outputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8, -1, -1]}]
    cfg = c.get_model_config("toy")
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [3, -1, -1]
    assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64
    assert [m["name"] for m in c.get_model_repository_index()] == ["toy"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_infer_matches_ort(server, reference, binary):
    c = th.InferenceServerClient(server.url[7:])
    x = _image(0, batch=2)
    want = reference.infer({"image": x})["features"]
    res = _triton_infer(c, "toy", x, binary, request_id="r1")
    np.testing.assert_array_equal(res.as_numpy("features"), want)
    assert res.get_response()["id"] == "r1" and res.get_response()["model_version"] == "1"
    # the versioned URL and a gzip-compressed request body give the same answer
    res = _triton_infer(c, "toy", x, binary, model_version="1", request_compression_algorithm="gzip")
    np.testing.assert_array_equal(res.as_numpy("features"), want)


# ---- dynamic batching -------------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_split_back(bundle, reference):
    srv, runner = _server(bundle, delay_s=0.05, max_queue_delay_us=100_000)
    # 6 requests of 32x32 batch together; the 2 of 48x48 cannot join them (other shape) and batch apart.
    xs = [_image(i, size=32) for i in range(6)] + [_image(10 + i, size=48) for i in range(2)]
    results: dict[int, np.ndarray] = {}
    with srv:
        def send(i: int) -> None:
            c = th.InferenceServerClient(srv.url[7:])
            results[i] = _triton_infer(c, "toy", xs[i]).as_numpy("features")

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # A request is counted when its handling ends, after its response is written: a client holding its answer
        # may read the statistics a moment before its own request is in them (seen once in CI: 7 of 8). Wait for it.
        deadline = time.monotonic() + 5
        while True:
            stats = th.InferenceServerClient(srv.url[7:]).get_inference_statistics("toy")["model_stats"][0]
            if stats["inference_stats"]["success"]["count"] >= len(xs) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        metrics = _request(srv.url, "GET", "/metrics")[2].decode()
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(results[i], reference.infer({"image": x})["features"])
    assert sum(runner.batches) == len(xs) and max(runner.batches) > 1, runner.batches
    count = _metric(metrics, 'vkt_batch_size_count{model="toy"}')
    assert _metric(metrics, 'vkt_batch_size_sum{model="toy"}') == len(xs) and count == len(runner.batches) < len(xs)
    # Triton's statistics extension says the same (tritonclient.get_inference_statistics)
    assert stats["inference_count"] == len(xs) and stats["execution_count"] == len(runner.batches)
    assert stats["inference_stats"]["success"]["count"] == len(xs) and stats["inference_stats"]["queue"]["ns"] > 0
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == len(runner.batches)


def _metric(page: str, series: str) -> float:
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics:\n{page[:2000]}")


def test_backend_failure_is_a_500_for_that_batch_only(bundle):
    srv, runner = _server(bundle)
    real = runner._infer

    def flaky(feed):
        if next(iter(feed.values())).shape[-1] == 48:
            raise BackendError("onnxruntime failed to run: simulated")
        return real(feed)

    runner._infer = flaky
    with srv:
        status, data = _infer_raw(srv.url, "toy", _image(0, size=48))
        assert status == 500 and "simulated" in json.loads(data)["error"]
        assert _infer_raw(srv.url, "toy", _image(0, size=32))[0] == 200


def test_full_queue_answers_503_and_timeout_504(bundle):
    srv, runner = _server(bundle, delay_s=0.3, max_batch_size=1, queue_size=1, timeout_s=5.0)
    statuses: list[int] = []
    with srv:
        def send(i: int) -> None:
            statuses.append(_infer_raw(srv.url, "toy", _image(i))[0])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(set(statuses)) == [200, 503], statuses
        # a request whose own timeout (Triton's parameters.timeout, µs) is shorter than the model call
        req = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32",
                                      "data": [0.0] * 768}], "parameters": {"timeout": 50_000}}).encode()
        status, _, body = _request(srv.url, "POST", "/v2/models/toy/infer", req)
        assert status == 504 and "timeout" in json.loads(body)["error"]
        assert _infer_raw(srv.url, "toy", _image(0))[0] == 200  # still serving


# ---- bad input: a clear 4xx, never a crash -----------------------------------------------------
def test_bad_requests_get_json_errors(server):
    url = server.url
    good = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.5] * 768}]})
    cases = [
        # (method, path, body, headers, status, words in the error)
        ("POST", "/v2/models/toy/infer", b"", {"Content-Length": str(8 << 20)}, 413, ["8388608 bytes", "at most 1048576"]),
        ("POST", "/v2/models/toy/infer", b"", {"Content-Length": str(8 << 20), "Expect": "100-continue"}, 413, ["at most"]),
        ("POST", "/v2/models/toy/infer", b'{"inputs": [', {}, 400, ["malformed JSON"]),
        ("POST", "/v2/models/toy/infer", b"[" * 100_000, {}, 400, ["nests too deeply"]),
        ("POST", "/v2/models/nope/infer", good.encode(), {}, 404, ["unknown model 'nope'", "toy"]),
        ("POST", "/v2/models/%2e%2e%2fetc/infer", good.encode(), {}, 404, ["unknown model '../etc'"]),
        ("GET", "/v2/models/../etc/config", None, {}, 404, ["no endpoint"]),
        ("GET", "/v2/models/toy/versions/2", None, {}, 404, ["no version '2'"]),
        ("GET", "/v2/models/toy/infer", None, {}, 405, ["use POST"]),
        ("POST", "/v2/models/toy/infer", good.replace('"FP32"', '"INT64"').replace("0.5", "1").encode(), {}, 400,
         ["expects datatype FP32", "got INT64"]),
        ("POST", "/v2/models/toy/infer", good.replace("[1, 3, 16, 16]", "[3, 16, 16]").encode(), {}, 400,
         ["expected rank 4", "got rank 3"]),
        ("POST", "/v2/models/toy/infer", good.replace("[1, 3, 16, 16]", "[1, 3, 8, 32]").encode(), {}, 400,
         ["fit no shape profile", "height in [16, 256]"]),
        ("POST", "/v2/models/toy/infer", good.replace("[1, 3, 16, 16]", "[1, 3, 16, 17]").encode(), {}, 400,
         ["holds 768 values", "needs 816"]),
        ("POST", "/v2/models/toy/infer", good.replace('"image"', '"img"').encode(), {}, 400, ["missing inputs ['image']"]),
        ("POST", "/v2/models/toy/infer", good.encode(), {"Inference-Header-Content-Length": "99999"}, 400,
         ["Inference-Header-Content-Length"]),
        ("POST", "/v2/models/toy/infer", good.encode(), {"Content-Encoding": "br"}, 415, ["'br'"]),
        ("DELETE", "/v2/models/toy", None, {}, 405, ["use GET"]),
        ("GET", "/v2/nothing/here", None, {}, 404, ["no endpoint"]),
    ]
    for method, path, body, headers, status, words in cases:
        got, hdrs, data = _request(url, method, path, body, headers)
        assert got == status, (path, headers, got, data[:300])
        err = json.loads(data)["error"]
        assert all(w in err for w in words), (err, words)
    # binary tensor extension: size mismatch, then bytes nobody claims
    body, hl = encode_infer_request({"image": _image(0, size=16)})
    for blob, words in ((body[:-4], ["binary data ends"]), (body + b"xxxx", ["4 bytes follow"])):
        got, _, data = _request(url, "POST", "/v2/models/toy/infer", blob, {"Inference-Header-Content-Length": str(hl)})
        assert got == 400 and all(w in json.loads(data)["error"] for w in words), data
    # ... and the server is still fine
    assert _infer_raw(url, "toy", _image(1))[0] == 200
    page = _request(url, "GET", "/metrics")[2].decode()
    assert 'vkt_requests_total{route="infer",model="",code="404"}' in page  # unknown names never become labels
    assert "etc" not in page and "nope" not in page
    assert 'vkt_queue_depth{model="toy"} 0' in page


@pytest.mark.parametrize("tensor, words", [
    ({"datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}, None),  # nested and ints are fine for FP32
    ({"datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}, "ragged"),
    ({"datatype": "INT32", "shape": [2], "data": [1.5, 2]}, "needs integers"),
    ({"datatype": "UINT8", "shape": [2], "data": [1, 300]}, "do not fit UINT8"),
    ({"datatype": "INT64", "shape": [2], "data": [1, 2**64]}, "do not fit INT64"),
    ({"datatype": "BOOL", "shape": [2], "data": [1, 0]}, "needs true/false"),
    ({"datatype": "BYTES", "shape": [1], "data": ["a"]}, "BYTES"),
    ({"datatype": "FP8", "shape": [1], "data": [1]}, "unknown datatype 'FP8'"),
    ({"datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
    ({"datatype": "FP32", "shape": [1], "parameters": {"shared_memory_region": "r"}}, "shared-memory extension"),
])
def test_json_tensor_parsing(tensor, words):
    """The protocol layer alone: every JSON tensor form Triton accepts, and a named 400 for the rest."""
    body = json.dumps({"inputs": [{"name": "x", **tensor}]}).encode()
    if words is None:
        np.testing.assert_array_equal(parse_infer_request(body).inputs["x"], [[1, 2], [3, 4]])
    else:
        with pytest.raises(RequestError, match=words):
            parse_infer_request(body)


def test_binary_tensors_round_trip_every_datatype():
    from vkt.runtime.server.protocol import DATATYPES, InferRequest, decode_infer_response, encode_infer_response

    rng = np.random.default_rng(0)
    feed = {f"t_{dt}": (rng.standard_normal((2, 3)) * 50).astype(dt) for dt in DATATYPES.values()}
    for binary in (True, False):
        body, hl = encode_infer_request(feed, binary=binary)
        parsed = parse_infer_request(body, hl).inputs
        out, out_hl = encode_infer_response("m", "1", parsed, InferRequest(parsed, binary_default=binary))
        for k, v in decode_infer_response(out, out_hl).items():
            np.testing.assert_array_equal(v, feed[k])
            assert v.dtype == feed[k].dtype
    # JSON floats are written with 5 (FP16) / 9 (FP32) digits: still bit-exact, signed zero included
    f16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    f32 = rng.integers(0, 1 << 32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for a in (f16[np.isfinite(f16)], f32[np.isfinite(f32)], np.float32([-0.0, np.nan, -np.inf])):
        out, out_hl = encode_infer_response("m", "1", {"o": a}, InferRequest({}))
        back = decode_infer_response(out, out_hl)["o"]
        np.testing.assert_array_equal(back.view(f"u{a.itemsize}"), a.view(f"u{a.itemsize}"))
    body, hl = encode_infer_request({"b": np.array([True, False])})
    body = body[:-2] + bytes([2, 0])  # a BOOL byte that is neither 0 nor 1
    with pytest.raises(RequestError, match="bytes 0 or 1, got 2"):
        parse_infer_request(body, hl)


def _read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(1 << 16):
        out += chunk
    return out


def test_stalled_client_does_not_block_others(server):
    host, port = server.url[7:].rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)), timeout=5)
    try:
        stalled.sendall(b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n")  # then nothing
        t0 = time.monotonic()
        assert _infer_raw(server.url, "toy", _image(0))[0] == 200
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):  # the staller is still connected: the request above did not wait for it
            stalled.recv(1)
        stalled.settimeout(5)
        answer = _read_to_eof(stalled)  # then the server answers 408 and closes it after its 1 s socket timeout
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request head did not arrive" in answer, answer
        assert time.monotonic() - t0 < 4
    finally:
        stalled.close()


def test_metrics_page_is_prometheus_text(server):
    _infer_raw(server.url, "toy", _image(0))
    status, headers, data = _request(server.url, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')
    lines = data.decode().splitlines()
    assert all(sample.match(x) for x in lines if not x.startswith("#")), [x for x in lines if not sample.match(x)][:3]
    for series in ('vkt_requests_total{route="infer",model="toy",code="200"}', 'vkt_request_duration_seconds_bucket',
                   'vkt_batch_size_bucket{model="toy",le="+Inf"}', 'vkt_queue_depth{model="toy"}', "vkt_inflight_requests"):
        assert series in data.decode(), series


def test_task_endpoints_plug_in_beside_v2(bundle):
    """Where image-in/detections-out endpoints will go: a route that reuses the model's batcher."""
    from vkt.runtime.server import json_response

    srv = InferenceServer(models_from_bundles([bundle]), ServerConfig(port=0, warmup=False))

    def mean_feature(req):
        model = srv.model_for(req)  # 404 for unknown names, like the v2 routes
        out = srv.batchers[model.name].infer({"image": _image(0, size=16)}, timeout_s=5)
        return json_response({"mean": float(out["features"].mean())})

    srv.add_route("POST", "/v2/models/{model}/mean", mean_feature, "mean")
    with srv:
        status, _, data = _request(srv.url, "POST", "/v2/models/toy/mean", b"")
        assert status == 200 and 0 < json.loads(data)["mean"] < 1
        assert _request(srv.url, "POST", "/v2/models/nope/mean", b"")[0] == 404


# ---- shutdown -----------------------------------------------------------------------------------
def _wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_stop_drains_in_flight_requests(bundle):
    srv, runner = _server(bundle, delay_s=0.5)
    srv.start()
    url, got = srv.url, []
    host, port = url[7:].rsplit(":", 1)
    kept = [http.client.HTTPConnection(host, int(port), timeout=5) for _ in range(2)]
    for c in kept:  # two keep-alive connections, open before the shutdown begins
        c.request("GET", "/v2/health/live")
        c.getresponse().read()
    inflight = threading.Thread(target=lambda: got.append(_infer_raw(url, "toy", _image(0))[0]))
    inflight.start()
    _wait_for(lambda: runner.batches)  # the request is in the model now
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    _wait_for(lambda: srv.draining)
    kept[0].request("GET", "/v2/health/ready")
    r = kept[0].getresponse()
    assert r.status == 400 and "shutting down" in json.loads(r.read())["error"]  # KServe: not ready is a 4xx
    body, hl = encode_infer_request({"image": _image(1)})
    kept[1].request("POST", "/v2/models/toy/infer", body, {"Inference-Header-Content-Length": str(hl)})
    r = kept[1].getresponse()
    assert r.status == 503 and r.getheader("Connection") == "close" and r.getheader("Retry-After") == "1"
    stopper.join(10)
    inflight.join(10)
    assert got == [200]  # drained, not dropped
    with pytest.raises(OSError):
        _request(url, "GET", "/v2/health/live", timeout=2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serves_and_exits_0_on_signal(bundle, sig):
    proc = subprocess.Popen([sys.executable, "-m", "vkt", "serve", str(bundle), "--port", "0", "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "vkt serve: toy on http://127.0.0.1:PORT"
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ")[-1].strip()
        assert _request(url, "GET", "/v2/health/ready")[0] == 200
        assert _infer_raw(url, "toy", _image(0), binary=False)[0] == 200
        proc.send_signal(sig)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
