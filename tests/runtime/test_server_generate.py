"""POST /v2/models/<sd>/generate: the PNG equals Txt2Img's image in-process; bad prompts and sizes get a 400."""

from __future__ import annotations

import http.client
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from vkt.runtime.server import InferenceServer, ServerConfig, models_from_bundles
from vkt.runtime.server.tasks import TaskLimits, add_task_routes

pytestmark = pytest.mark.torch

# The tiny SD pipeline and its exported bundle: the fixtures of the SD parity tests.
_spec = importlib.util.spec_from_file_location("_sd_parity", Path(__file__).parents[1] / "models" / "sd" / "test_sd_parity.py")
_sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sd)
torch1, tiny_pipe, bundle = _sd.torch1, _sd.tiny_pipe, _sd.bundle


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
    (b"{not json", "malformed JSON body"),
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
