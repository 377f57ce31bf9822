"""POST /v2/models/<sd>/generate: the PNG equals Txt2Img's image in-process; bad prompts and sizes get a 400."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest

from vkt.runtime.server import InferenceServer, ServerConfig, models_from_bundles
from vkt.runtime.server.tasks import TaskLimits, add_task_routes

pytestmark = pytest.mark.torch

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny random SD pipeline (vkt.models.sd.tiny) exported to a bundle, 64 px, max 2 images per call."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from vkt.models.sd import SDProfile, export_sd
    from vkt.models.sd.tiny import tiny_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine two run the tiny export much slower
    try:
        root = tmp_path_factory.mktemp("sd")
        tiny_pipeline(root / "tokenizer", size=64).save_pretrained(str(root / "pipe"))
        report = export_sd(root / "pipe", root / "tiny-sd", profile=SDProfile(max_batch=2, min_size=32, opt_size=64, max_size=64))
    finally:
        torch.set_num_threads(before)
    return report.bundle


@pytest.fixture(scope="module")
def server(bundle):
    srv = InferenceServer(models_from_bundles([bundle]), ServerConfig(port=0, warmup=False, timeout_s=60))
    routes = add_task_routes(srv, limits=TaskLimits(max_steps=8))
    assert sorted(routes.generate) == ["tiny-sd"] and not routes.detect
    with srv:
        yield srv


def post(srv, path: str, body: bytes) -> tuple[int, bytes, dict]:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    try:
        c.request("POST", path, body, {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def test_generate_png_equals_txt2img(server, bundle):
    import cv2

    from vkt.runtime.txt2img import Txt2Img

    args = {"prompt": "a photo of the cats", "negative_prompt": "ugly photo", "steps": 3, "guidance_scale": 7.5,
            "seed": 7, "height": 64, "width": 64}
    status, body, headers = post(server, "/v2/models/tiny-sd/generate", json.dumps(args).encode())
    assert status == 200, body
    assert headers["content-type"] == "image/png" and headers["x-vkt-seed"] == "7"
    got = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with Txt2Img(bundle, progress_bar=False) as pipe:
        want = pipe(args["prompt"], negative_prompt=args["negative_prompt"], steps=3, guidance_scale=7.5, seed=7,
                    height=64, width=64)[0]
    assert got.shape == (64, 64, 3) and got.std() > 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("body, match", [
    (b"{not json", "malformed JSON in the body"),
    (b'{"steps": 2}', "'prompt' is required"),
    (b'{"prompt": "x", "stepz": 2}', "unknown keys ['stepz']"),
    (b'{"prompt": "x", "steps": 9}', "'steps' must be in [1, 8]"),
    (b'{"prompt": "x", "steps": "2"}', "'steps' must be an integer, got '2'"),
    (b'{"prompt": 3}', "'prompt' must be a string"),
    (b'{"prompt": "x", "steps": 1, "height": 60}', "height=60 is not divisible by 8"),
    (b'{"prompt": "x", "steps": 1, "width": 1024}', "outside the bundle's UNet profile"),
    (b'{"prompt": "x", "steps": 1, "seed": -1}', "seed must be a non-negative integer"),
])
def test_generate_bad_requests(server, body, match):
    status, out, _ = post(server, "/v2/models/tiny-sd/generate", body)
    assert status == 400 and match in json.loads(out)["error"], (status, out)
    status, out, _ = post(server, "/v2/models/tiny-sd-unet/generate", b"{}")
    assert status == 404 and "has no /generate endpoint" in json.loads(out)["error"]
