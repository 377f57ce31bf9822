"""OvRunner: parity with onnxruntime FP32 on every family, profile-bounded shapes, threads, what precision runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from vkt.errors import BackendError, BundleError, ModelError, ShapeError
from vkt.runtime import make_runner

ov = pytest.importorskip("openvino")  # the test extra installs it; the not-installed test below runs without it


def runtime_precisions(compiled, layer: str = "Convolution") -> list[str]:
    """What OpenVINO executes each ``layer`` in, read from the compiled model's runtime graph."""
    ops = compiled.get_runtime_model().get_ordered_ops()
    return [op.get_rt_info()["runtimePrecision"].astype(str) for op in ops
            if op.get_rt_info()["layerType"].astype(str) == layer]


def rand_feeds(n: int, shape=(1, 3, 48, 64), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random(shape, np.float32)} for _ in range(n)]


# ---- toy conv net -------------------------------------------------------------------------------
def test_fp32_matches_onnxruntime_at_sizes_across_the_profile(toy_bundle):
    feeds = [rand_feeds(1, (2, 3, 48, 80))[0], rand_feeds(1, (1, 3, 16, 256), seed=1)[0],
             rand_feeds(1, (8, 3, 256, 16), seed=2)[0]]
    with make_runner(toy_bundle, "ort") as ort_r, make_runner(toy_bundle, "ov") as ov_r:
        for feed in feeds:  # three shapes through one compiled model and one request
            want, got = ort_r.infer(feed)["features"], ov_r.infer(feed)["features"]
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        # the dynamic axes are bounded by the bundle's profile (conftest: batch 1..8, sides 16..256)
        assert str(ov_r.compiled.input("image").get_partial_shape()) == "[1..8,3,16..256,16..256]"


def test_fp32_runs_in_f32_not_bf16(toy_bundle):
    """OpenVINO's CPU plugin picks bf16 by default where the CPU has it: FP32 must still run f32."""
    with make_runner(toy_bundle, "ov") as r:
        assert r.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        precs = runtime_precisions(r.compiled)
        assert len(precs) == 6 and set(precs) == {"f32"}  # the toy's 6 convs
        assert r.describe()["compute"] == {"Convolution": {"f32": 6}}
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return
    from vkt.runtime.openvino import OvRunner  # the check above can fail: bf16, when asked, shows up here

    with OvRunner(Path(toy_bundle) / "model.onnx", inference_precision="bf16") as r:
        assert "bf16" in runtime_precisions(r.compiled)


def test_shape_outside_the_profile_is_a_shape_error_before_openvino(toy_bundle):
    bad = {"image": np.zeros((1, 3, 512, 64), np.float32)}  # height 512 > the profile's 256
    with make_runner(toy_bundle, "ov") as r:
        with pytest.raises(ShapeError, match="fit no shape profile"):
            r.infer(bad)
        with pytest.raises(BackendError, match="OpenVINO failed to run"):  # what OpenVINO itself would say
            r.infer(bad, check=False)
        assert r.infer(rand_feeds(1)[0])["features"].shape == (1, 8, 48, 64)  # the request still works


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_are_honoured(toy_bundle, threads):
    with make_runner(toy_bundle, "ov", threads=threads) as r:
        assert r.compiled.get_property("INFERENCE_NUM_THREADS") == threads
        d = r.describe()
        assert (d["backend"], d["device"], d["precision"], d["threads"]) == ("ov", "CPU", "fp32", threads)


def test_ov_takes_the_plain_graph_not_the_one_placed_for_onnxruntime(toy_bundle):
    """An SD bundle holds onnxruntime-only fused graphs (placement "ort") beside the plain ones."""
    from vkt.bundle import Bundle

    Bundle.load(toy_bundle).add_file(b"an onnxruntime-only graph", "model.ort.onnx", role="fp32 onnx",
                                     meta={"placement": "ort"})
    with pytest.raises(ModelError):  # onnxruntime takes that (here unreadable) graph...
        make_runner(toy_bundle, "ort").activate()
    with make_runner(toy_bundle, "ov") as r:  # ...OpenVINO the plain one
        assert r.infer(rand_feeds(1)[0])["features"].shape == (1, 8, 48, 64)


def test_fp16_graph_runs_close_to_fp32(toy_bundle, toy_model):
    from vkt.bundle import Bundle
    from vkt.export.fp16 import convert_fp16

    Bundle.load(toy_bundle).add_file(convert_fp16(toy_model[0]).SerializeToString(), "model.fp16.onnx", role="fp16 onnx")
    feed = rand_feeds(1)[0]
    with make_runner(toy_bundle, "ort") as ref, make_runner(toy_bundle, "ov", "fp16") as r:
        assert r.describe()["precision"] == "fp16"
        np.testing.assert_allclose(r.infer(feed)["features"], ref.infer(feed)["features"], atol=5e-3, rtol=0)


# ---- INT8 ---------------------------------------------------------------------------------------
@pytest.fixture()
def int8_toy(toy_bundle):
    from vkt.calibration import Int8Config, quantize_bundle

    quantize_bundle(toy_bundle, rand_feeds(4, seed=3), Int8Config(targets=("ort", "trt")), eval_samples=0, show_progress=False)
    return toy_bundle


def test_int8_qdq_graph_runs_integer_convolutions(int8_toy):
    from vkt.bundle import Bundle
    from vkt.runtime.openvino import OvRunner

    b = Bundle.load(int8_toy)
    qdq = b.root / b.entry("int8 qdq onnx", placement="ort").path
    feed = rand_feeds(1, (2, 3, 48, 80), seed=4)[0]
    with make_runner(b, "ort") as fp32, make_runner(b, "ort", "int8") as ort8, OvRunner(qdq, spec=b.spec()) as ov8:
        precs = runtime_precisions(ov8.compiled)
        assert len(precs) == 6 and set(precs) <= {"u8", "i8"}, precs  # every conv runs on integers
        assert sum(ov8.describe()["compute"]["Convolution"].get(p, 0) for p in ("u8", "i8")) == 6
        ref, got, ort_got = fp32.infer(feed)["features"], ov8.infer(feed)["features"], ort8.infer(feed)["features"]
    # the same Q/DQ graph: OpenVINO's INT8 error vs FP32 is of onnxruntime's size (and not zero: it did quantize)
    err, ort_err = np.abs(got - ref).mean(), np.abs(ort_got - ref).mean()
    assert 0 < err <= 1.5 * ort_err + 1e-4, (err, ort_err)


def test_int8_needs_a_graph_placed_for_openvino(int8_toy):
    """Old bundles hold ort/trt placements only: a clear error naming the fix; with the openvino placement it runs."""
    from vkt.calibration import Int8Config, quantize_bundle

    with pytest.raises(BackendError, match=r"placed for ort, trt\): add one with `vkt quantize .*--target openvino`"):
        make_runner(int8_toy, "ov", "int8")
    section = quantize_bundle(int8_toy, rand_feeds(4, seed=3), Int8Config(targets=("openvino",)), eval_samples=0,
                              show_progress=False)
    assert section["placements"]["openvino"]["openvino_compute"] == {"Convolution": {"u8": 6}}  # the manifest's record
    with make_runner(int8_toy, "ov", "int8") as r:
        assert Path(r.model).name == "model.int8.openvino.onnx"
        assert runtime_precisions(r.compiled) == ["u8"] * 6  # every conv on integers, read from OpenVINO's runtime graph
        assert r.executed_precisions() == {"Convolution": {"u8": 6}}
        assert r.describe()["precision"] == "int8"


def test_bundle_without_any_int8_graph(toy_bundle):
    with pytest.raises(BundleError, match="has no 'int8 qdq onnx'"):
        make_runner(toy_bundle, "ov", "int8")


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(threads=0), "threads must be a positive integer"),
    (dict(threads=True), "threads must be a positive integer"),
    (dict(inference_precision="f64"), "inference_precision must be one of"),
    (dict(device=""), "device must be"),
])
def test_bad_options(toy_onnx, kw, match):
    from vkt.runtime.openvino import OvRunner

    with pytest.raises(BackendError, match=match):
        OvRunner(toy_onnx, **kw)


def test_missing_file_and_unknown_device(toy_onnx, tmp_path):
    from vkt.runtime.openvino import OvRunner

    with pytest.raises(ModelError, match="not found"):
        OvRunner(tmp_path / "nope.onnx")
    with pytest.raises(BackendError, match=r"no device 'NOSUCH'.*available: .*CPU"):
        OvRunner(toy_onnx, device="NOSUCH").activate()
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="OpenVINO cannot read"):
        OvRunner(tmp_path / "junk.onnx").activate()


BLOCK_OPENVINO = textwrap.dedent("""
    import sys

    class Block:  # as if openvino were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "openvino" or name.startswith("openvino."):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, Block())
""")


def test_openvino_not_installed_names_the_extra(toy_bundle):
    code = BLOCK_OPENVINO + textwrap.dedent(f"""
        from vkt.errors import BackendError
        from vkt.runtime import make_runner
        r = make_runner({str(toy_bundle)!r}, "ov")  # building the runner imports nothing
        try:
            r.activate()
        except BackendError as e:
            print("BackendError:", e)
        from vkt.cli.main import main
        sys.exit(main(["bench", {str(toy_bundle)!r}, "-t", "ov", "--iters", "1"]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ("BackendError: the OpenVINO backend needs the openvino package: pip install 'vkt[openvino]'"
            in p.stdout), p.stdout + p.stderr
    assert p.returncode == 2
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "pip install 'vkt[openvino]'" in errors[0], p.stderr


# ---- the families' models -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def textdet_bundle(tmp_path_factory) -> Path:
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    return ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("ov-textdet") / "det.vkt")


def test_ppocrv5_text_detector_matches_onnxruntime(textdet_bundle):
    import skimage

    from vkt.eval.textdet import hmean_between
    from vkt.runtime.image import read_image
    from vkt.runtime.textdet import TextDetector

    page = read_image(Path(skimage.__file__).parent / "data" / "page.png")
    with TextDetector(textdet_bundle, threads=2) as a, TextDetector(textdet_bundle, backend="ov", threads=2) as b:
        batch, _ = a.pre([page])  # the bundle's own resize rule (short side 736), and a random map at another size
        feeds = [{a.input_name: batch}, {a.input_name: np.random.default_rng(0).standard_normal((2, 3, 224, 320), np.float32)}]
        for f in feeds:
            want, got = a.runner.infer(f)[a.output_name], b.runner.infer(f)[b.output_name]
            assert got.shape == want.shape
            assert np.abs(got - want).max() < 1e-4  # probability maps
        ours, theirs = a([page])[0], b([page])[0]
        assert len(ours.polygons) > 20
        assert hmean_between([theirs.polygons], [ours.polygons]) == 1.0
        assert b.runner.describe()["compute"] == {"Convolution": {"f32": 62}, "Deconvolution": {"f32": 2}}


@pytest.mark.torch
def test_tiny_detr_matches_onnxruntime(tmp_path_factory, torch1):
    pytest.importorskip("transformers")
    from vkt.cli.main import main
    from vkt.models.detr import tiny_detr

    root = tmp_path_factory.mktemp("ov-detr")
    tiny_detr(num_labels=3, num_queries=10).save_pretrained(root / "ckpt")
    assert main(["export", "detr", str(root / "ckpt"), "-o", str(root / "d.vkt"), "--postprocess", "--top-k", "10",
                 "--shortest-edge", "160", "--longest-edge", "224"]) == 0
    rng = np.random.default_rng(0)
    with make_runner(root / "d.vkt", "ort") as a, make_runner(root / "d.vkt", "ov") as b:
        for h, w in ((160, 213), (96, 224)):
            feed = {"pixel_values": rng.standard_normal((2, 3, h, w)).astype(np.float32),
                    "orig_sizes": np.array([[h, w], [2 * h, 2 * w]], np.float32)}
            want, got = a.infer(feed), b.infer(feed)
            assert set(got) == {"scores", "labels", "boxes"}
            np.testing.assert_array_equal(got["labels"], want["labels"])
            np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3, rtol=1e-5)


@pytest.mark.torch
def test_tiny_stable_diffusion_matches_onnxruntime(tmp_path_factory, torch1):
    pytest.importorskip("diffusers")
    from vkt.bundle import Bundle
    from vkt.models.sd.export import SDProfile, export_sd
    from vkt.models.sd.tiny import tiny_pipeline
    from vkt.runtime.txt2img import Txt2Img

    root = tmp_path_factory.mktemp("ov-sd")
    export_sd(tiny_pipeline(root / "tok", size=32), root / "sd.vkt", ort_fused=False,
              profile=SDProfile(max_batch=2, min_size=32, opt_size=32, max_size=64))
    b = Bundle.load(root / "sd.vkt")
    rng = np.random.default_rng(0)
    for comp in b.components:
        feed = b.spec(comp).opt_feed(rng=rng)
        with make_runner(b, "ort", component=comp) as a, make_runner(b, "ov", component=comp) as o:
            want, got = a.infer(feed), o.infer(feed)
            for k in want:
                assert got[k].dtype == want[k].dtype
                assert np.abs(got[k] - want[k]).max() <= 1e-5 * max(1.0, np.abs(want[k]).max()), (comp, k)
    with Txt2Img(b, progress_bar=False) as p:
        want = np.asarray(p(["a photo of a cat"], height=32, width=64, steps=3, seed=0))
    # all on OpenVINO, one component on it, and "auto" choosing per component by timing
    for backend in ("ov", "unet=ov", {"text_encoder": "ov", "vae_decoder": "ov"}, "auto"):
        with Txt2Img(b, backend=backend, progress_bar=False) as q:
            got = np.asarray(q(["a photo of a cat"], height=32, width=64, steps=3, seed=0))
            kinds = {c: type(r).__name__ for c, r in q.runners.items()}
            assert all(kinds[c] == ("OvRunner" if q.backends[c] == "ov" else "OrtRunner") for c in kinds), kinds
        if backend == "unet=ov":
            assert q.backends == {"text_encoder": "ort", "unet": "ov", "vae_decoder": "ort"} and q.backend == "ov"
        if backend == "auto":
            assert set(q.backend_choice) == set(kinds) and all(s["chosen"] == q.backends[c] for c, s in q.backend_choice.items())
        assert got.shape == want.shape == (1, 32, 64, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2, backend


@pytest.mark.torch
def test_tiny_detr_raw_heads_and_the_detector_pipeline_match_onnxruntime(tmp_path_factory, torch1):
    """The raw-head graph (logits / pred_boxes, decoded in numpy) and Detector end to end, per-component choice
    and "auto" included: OpenVINO FP32 finds onnxruntime's boxes."""
    pytest.importorskip("transformers")
    from vkt.models.detr import tiny_detr
    from vkt.models.detr.export import export_bundle
    from vkt.runtime.detection import Detector

    root = tmp_path_factory.mktemp("ov-detr-raw")
    dest = export_bundle(tiny_detr(num_labels=3, num_queries=10), root / "raw.vkt", shortest_edge=160, longest_edge=224,
                         profile={"batch": (1, 1, 2), "height": (64, 160, 224), "width": (64, 213, 224)})
    rng = np.random.default_rng(0)
    feed = {"pixel_values": rng.standard_normal((2, 3, 160, 213)).astype(np.float32)}
    with make_runner(dest, "ort") as a, make_runner(dest, "ov") as b:
        want, got = a.infer(feed), b.infer(feed)
    assert set(got) == {"logits", "pred_boxes"} and got["logits"].shape == (2, 10, 4)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-4, rtol=1e-5)
    images = [rng.integers(0, 256, (120, 200, 3), np.uint8), rng.integers(0, 256, (90, 60, 3), np.uint8)]
    with Detector(dest, score_threshold=0.0) as ref:
        ref_dets = ref(images)
    for backend in ("ov", {"model": "ov"}, "model=ov", "auto"):
        with Detector(dest, backend=backend, score_threshold=0.0) as det:
            assert det.runner.backend == ("ov" if backend != "auto" else det.runner.selection["chosen"])
            for d, r in zip(det(images), ref_dets):
                np.testing.assert_array_equal(d.labels, r.labels)
                np.testing.assert_allclose(d.scores, r.scores, atol=1e-4, rtol=0)
                np.testing.assert_allclose(d.boxes, r.boxes, atol=1e-2, rtol=1e-5)


def test_ctrl_c_after_openvino_runners_exits_cleanly(tmp_path):
    """OpenVINO's CPU plugin sets the thread's alternate signal stack inside its own library: with a Core per runner,
    the plugin was unloaded after two runners and the next SIGINT crashed the process (SIGSEGV, rc -11). In a fresh
    interpreter: two runners side by side (as the gate times them), then a Ctrl-C must reach Python's handler."""
    code = (
        "import os, signal, sys, time\n"
        "import numpy as np\n"
        "from onnx import TensorProto, helper\n"
        "from vkt.runtime.openvino import OvRunner\n"
        "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 3, 8, 8])\n"
        "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 3, 8, 8])\n"
        "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y])\n"
        "blob = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]).SerializeToString()\n"
        "runners = [OvRunner(blob, threads=1), OvRunner(blob, threads=1)]\n"
        "for r in runners:\n"
        "    r.activate()\n"
        "for r in runners:\n"
        "    r.infer({'x': np.ones((1, 3, 8, 8), np.float32)})\n"
        "    r.deactivate()\n"
        "del runners, r\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert r.returncode == 0 and r.stdout.strip() == "interrupted", (r.returncode, r.stderr[-1500:])


# ---- the float layers of an INT8 graph: f32, or bf16 where the CPU has it ---------------------------
def test_float_precision_resolves_by_what_the_cpu_computes_natively(monkeypatch):
    import vkt.runtime.openvino as o

    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # OpenVINO's own account (peer)
    assert o.native_bf16() is native
    assert o.resolve_float_precision("auto") == ("bf16" if native else "f32")
    assert o.resolve_float_precision(None) == o.resolve_float_precision("f32") == "f32"
    monkeypatch.setattr(o, "native_bf16", lambda device="CPU": False)  # a CPU without bf16
    assert o.resolve_float_precision("auto") == "f32" and o.float_hint("bf16") == "f32" and o.float_hint(None) == "f32"
    with pytest.raises(BackendError, match="no native bf16 .* use --float-precision f32"):
        o.resolve_float_precision("bf16")
    monkeypatch.setattr(o, "native_bf16", lambda device="CPU": True)
    assert o.resolve_float_precision("bf16") == o.float_hint("bf16") == "bf16" and o.float_hint("f32") == "f32"
    with pytest.raises(BackendError, match="must be one of auto, f32, bf16"):
        o.resolve_float_precision("fp16")


def test_an_int8_graph_gated_in_bf16_runs_its_float_layers_in_bf16(toy_bundle):
    """quantize_bundle records what the openvino placement's float layers run in (auto: bf16 on a CPU with native
    bf16); make_runner runs them so, read back from OpenVINO's runtime graph: the convs kept float run bf16, the
    quantized ones u8. The gate scores its steps on such runners and records the precision."""
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.runtime.openvino import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bf16 for OpenVINO")
    import onnx

    b = Bundle.load(toy_bundle)
    first = next(n.name for n in onnx.load(str(b.path("fp32 onnx"))).graph.node if n.op_type == "Conv")
    section = quantize_bundle(toy_bundle, rand_feeds(4, seed=3), Int8Config(targets=("openvino",), float_precision="auto",
                                                                            exclude=(first,)),
                              eval_samples=0, show_progress=False)
    assert section["placements"]["openvino"]["float_precision"] == "bf16"
    assert Bundle.load(toy_bundle).entry("int8 qdq onnx", placement="openvino").meta["float_precision"] == "bf16"
    with make_runner(toy_bundle, "ov", "int8") as r:
        assert r.describe()["inference_precision"] == "bf16"
        assert r.executed_precisions() == {"Convolution": {"bf16": 1, "u8": 5}}
    with make_runner(toy_bundle, "ov", "fp32") as r:  # FP32 stays f32
        assert r.executed_precisions() == {"Convolution": {"f32": 6}}

    seen = []

    def metric(factory):  # what the gate scores on
        r = factory()
        seen.append(r.inference_precision)
        return 1.0

    gate = gate_bundle(toy_bundle, metric, GateConfig(max_drop=0.01, steps=(0,), ranking="prefix", placement="openvino",
                                                      min_speedup=0.0, float_precision="bf16"), show_progress=False)
    assert seen == ["f32", "bf16"]  # the FP32 baseline in f32, the INT8 step with its float layers in bf16
    assert gate["openvino_gate"]["float_precision"] == "bf16"
    assert gate["placements"]["openvino"]["float_precision"] == "bf16"
    with make_runner(toy_bundle, "ov", "int8") as r:
        assert r.describe()["inference_precision"] == "bf16"
