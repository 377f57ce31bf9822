"""A backend per component: the choice's forms and errors, and "auto" timing onnxruntime against OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest

from vkt.errors import BackendError, InputError
from vkt.runtime.choose import open_runner, parse_backends

SD = ("text_encoder", "unet", "vae_decoder")


@pytest.mark.parametrize("choice, want", [
    ("ov", ("ov", "ov", "ov")),
    ("auto", ("auto", "auto", "auto")),
    ({"unet": "ov"}, ("ort", "ov", "ort")),
    ("unet=ov", ("ort", "ov", "ort")),
    (" unet = ov , text_encoder=auto ", ("auto", "ov", "ort")),
    ("ov,vae_decoder=ort", ("ov", "ov", "ort")),             # a bare name is the default of the others
    ("vae_decoder=ort,ov", ("ov", "ov", "ort")),             # in any position
])
def test_choice_forms(choice, want):
    assert parse_backends(choice, SD) == dict(zip(SD, want))


@pytest.mark.parametrize("choice, error, match", [
    ("openvino", BackendError, r"unknown backend 'openvino'; expected one of ort, ort-cuda, ort-trt, ov, trt, auto"),
    ("", BackendError, r"unknown backend ''"),
    ("unet=nope", BackendError, r"unknown backend 'nope' for component 'unet'"),
    ({"unet": 3}, BackendError, r"unknown backend 3 for component 'unet'"),
    ("unt=ov", InputError, r"unknown component 'unt'.*components are text_encoder, unet, vae_decoder"),
    ("unet=ov,unet=ort", InputError, r"names component 'unet' twice"),
    ("ov,ort", InputError, r"two defaults"),
    ("unet=ov,", InputError, r"empty item"),
    ("nope,unet=ov", BackendError, r"unknown backend 'nope' in 'nope,unet=ov'"),
    (["ov"], InputError, r"a mapping of component to backend, got list"),
])
def test_bad_choices_name_the_value(choice, error, match):
    with pytest.raises(error, match=match):
        parse_backends(choice, SD)


def test_auto_takes_the_faster_backend_and_computes_the_same(toy_bundle):
    pytest.importorskip("openvino")
    from vkt.runtime import make_runner

    feed = {"image": np.random.default_rng(1).random((2, 3, 40, 56), np.float32)}
    r = open_runner(toy_bundle, "auto", threads=1)
    try:
        sel = r.selection
        assert set(sel["ms"]) == {"ort", "ov"} and sel["skipped"] == {}
        assert sel["chosen"] == min(sel["ms"], key=sel["ms"].get) and r.backend == sel["chosen"]
        assert r.is_active and r.describe()["selection"] == sel
        with make_runner(toy_bundle, "ort", threads=1) as ref:
            np.testing.assert_allclose(r.infer(feed)["features"], ref.infer(feed)["features"], atol=1e-5, rtol=0)
    finally:
        r.deactivate()


def test_auto_leaves_out_a_backend_that_cannot_run_the_precision(toy_bundle):
    """INT8 from an old bundle: OpenVINO has no graph placed for it, so "auto" runs onnxruntime and says why."""
    pytest.importorskip("openvino")
    from vkt.calibration import Int8Config, quantize_bundle

    rng = np.random.default_rng(0)
    quantize_bundle(toy_bundle, [{"image": rng.random((1, 3, 32, 32), np.float32)} for _ in range(2)],
                    Int8Config(targets=("ort",)), eval_samples=0, show_progress=False)
    with open_runner(toy_bundle, "auto", precision="int8", threads=1) as r:
        assert r.backend == "ort" and r.selection["chosen"] == "ort" and list(r.selection["ms"]) == ["ort"]
        assert "no 'int8 qdq onnx' graph for OpenVINO" in r.selection["skipped"]["ov"]


def test_auto_with_no_backend_able_to_run_it(toy_bundle):
    with pytest.raises(BackendError, match=r"'auto' found no CPU backend able to run 'model' in int8: ort: .*ov: "):
        open_runner(toy_bundle, "auto", precision="int8")
