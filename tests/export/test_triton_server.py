"""The repository `vkt triton --pipeline` writes, loaded into a real Triton server (nvidia-pytriton's tritonserver, CPU):
real photos over HTTP and gRPC give the boxes `vkt serve` gives for the same bundle.

The server is provisioned by ``python benchmarks/tritonserver.py`` (pinned wheel, sha256 checked); without it
these tests skip with that command as the reason.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vkt.cli.main import main

th = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'vkt[test]')")
tg = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (pip install 'vkt[test]')")
skimage = pytest.importorskip("skimage", reason="needs scikit-image's sample photos (pip install 'vkt[models]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

DATA = Path(skimage.__file__).parent / "data"
PHOTOS = ("page.png", "text.png", "rocket.jpg", "astronaut.png")  # grey scans, a JPEG photo, an RGB photo

_spec = importlib.util.spec_from_file_location("vkt_bench_tritonserver",
                                               Path(__file__).parents[2] / "benchmarks" / "tritonserver.py")
ts = sys.modules.setdefault("vkt_bench_tritonserver", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(ts)


@pytest.fixture(scope="module")
def dist():
    try:
        return ts.find()
    except ts.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, dist, ppocr_det_bundle):
    """The PP-OCRv5 detector's bundle and a repository with it twice: 'det' (--backend python, which this server can
    run) and 'det_ort' (the default --backend onnxruntime, which needs Triton's onnxruntime backend), both --pipeline."""
    bundle, r = ppocr_det_bundle, tmp_path_factory.mktemp("triton_server") / "repo"
    assert main(["triton", str(bundle), "-o", str(r), "--name", "det", "--backend", "python", "--threads", "1",
                 "--pipeline"]) == 0
    assert main(["triton", str(bundle), "-o", str(r), "--name", "det_ort", "--pipeline"]) == 0
    return bundle, r


@pytest.fixture(scope="module")
def triton(repo, dist, tmp_path_factory):
    try:
        server = ts.start(dist, repo[1], ["det", "det_pipeline"], tmp_path_factory.mktemp("log") / "tritonserver.log")
    except ts.Unavailable as e:
        pytest.fail(str(e))  # provisioned but not running: a real failure, not a skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(repo):
    """`vkt serve` on the same bundle (a black box: a subprocess on a free port); yields /detect's URL."""
    proc = subprocess.Popen([sys.executable, "-m", "vkt", "serve", str(repo[0]), "--port", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # "vkt serve: NAME on http://127.0.0.1:PORT"
    if " on http://" not in line:
        proc.kill()
        pytest.fail(f"vkt serve did not start (exit {proc.wait()}): {line!r}")
    name, url = line.split(": ", 1)[1].rsplit(" on ", 1)
    yield f"{url.strip()}/v2/models/{name}/detect"
    proc.terminate()
    proc.wait(30)


def _serve_detect(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _triton_detect(mod, url: str, body: bytes, model: str = "det_pipeline") -> dict[str, np.ndarray]:
    client = mod.InferenceServerClient(url)
    try:
        x = mod.InferInput("IMAGE", [len(body)], "UINT8")
        x.set_data_from_numpy(np.frombuffer(body, np.uint8))
        r = client.infer(model, [x])
        return {n: r.as_numpy(n) for n in ("DETECTIONS", "POLYGONS", "SCORES")}
    finally:
        client.close()


@pytest.mark.parametrize("photo", PHOTOS)
def test_triton_http_and_grpc_answer_vkt_serves_boxes(triton, served, photo):
    body = (DATA / photo).read_bytes()
    want = _serve_detect(served, body)
    got_http = _triton_detect(th, triton.http, body)
    got_grpc = _triton_detect(tg, triton.grpc, body)
    for got in (got_http, got_grpc):
        # the same polygons, scores and image size as /detect's JSON (each adds keys of its own: input_size; model_name)
        doc = json.loads(got["DETECTIONS"][0])
        assert (doc["image_size"], doc["detections"]) == (want["image_size"], want["detections"])
        n = len(want["detections"])
        assert got["POLYGONS"].shape == (n, 4, 2) and got["SCORES"].shape == (n,)
        # the tensors are the unrounded values behind the JSON's 2-decimal polygons and 5-decimal scores
        np.testing.assert_allclose(got["POLYGONS"], [d["polygon"] for d in want["detections"]], atol=0.0051)
        np.testing.assert_allclose(got["SCORES"], [d["score"] for d in want["detections"]], atol=6e-6)
    np.testing.assert_array_equal(got_http["POLYGONS"], got_grpc["POLYGONS"])
    # real boxes, not an agreement on nothing: the scanned page has 45 lines of text, text.png a few blurred words
    assert len(want["detections"]) >= {"page.png": 40, "text.png": 3}.get(photo, 0)


def test_core_model_batches_as_onnxruntime_does(triton, repo):
    """The --backend python core model under Triton's dynamic batcher: a batch of 2 equals onnxruntime here."""
    from vkt.runtime import OrtRunner

    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    client = th.InferenceServerClient(triton.http)
    try:
        cfg = client.get_model_config("det")  # Triton's view of the config vkt wrote
        assert cfg["backend"] == "python" and cfg["max_batch_size"] == 8 and "dynamic_batching" in cfg
        inp = th.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer("det", [inp]).as_numpy(cfg["output"][0]["name"])
    finally:
        client.close()
    with OrtRunner(repo[1] / "det" / "1" / "model.onnx", threads=1) as r:
        want = r.infer({"x": x})[cfg["output"][0]["name"]]
    np.testing.assert_array_equal(got, want)


def test_bad_image_is_a_client_error_over_http_and_grpc(triton):
    with pytest.raises(InferenceServerException, match="is not an image in an accepted format") as e:
        _triton_detect(th, triton.http, b"not an image at all")
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="is not an image in an accepted format") as e:
        _triton_detect(tg, triton.grpc, b"not an image at all")
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert urllib.request.urlopen(f"http://{triton.http}/v2/health/ready", timeout=10).status == 200  # still up


def test_onnxruntime_platform_needs_tritons_onnxruntime_backend(triton):
    """What docs/TRITON.md says: the default repository's core model needs the onnxruntime backend, which this build
    lacks; its pipeline model (Python backend) loads, and answers a request with the core model's state."""
    client = th.InferenceServerClient(triton.http)
    try:
        with pytest.raises(InferenceServerException, match="unable to find backend library for backend 'onnxruntime'"):
            client.load_model("det_ort")
        client.load_model("det_ort_pipeline")
        assert client.is_model_ready("det_ort_pipeline")
    finally:
        client.close()
    with pytest.raises(InferenceServerException, match="core model 'det_ort' failed.*not ready") as e:
        _triton_detect(th, triton.http, (DATA / "text.png").read_bytes(), model="det_ort_pipeline")
    assert e.value.status() == "500"  # the server's side, not the client's
