"""vkt.engines with TensorRT-RTX: real plans built on this CPU-only machine, recorded in bundles."""

from __future__ import annotations

import json
import logging

import pytest

from vkt.bundle import Bundle
from vkt.engines import BuildConfig, build, build_bundle_plan, build_engine
from vkt.errors import BackendError, BuildError, InputError, ModelError, SpecError
from vkt.runtime.gpu import probe
from vkt.specs import ExportSpec, Profile, TensorSpec

trt = pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx (pip install tensorrt-rtx): it builds plans without a GPU")
RTX = BuildConfig(module="tensorrt_rtx")


def test_build_engine_writes_a_real_plan(toy, tmp_path):
    path, spec = toy
    out = tmp_path / "plans" / "toy.plan"
    plan = build_engine(path, spec, RTX, output=out)
    assert isinstance(plan, bytes) and len(plan) > 10_000
    assert out.read_bytes() == plan
    assert [p.name for p in out.parent.iterdir()] == ["toy.plan"]  # atomic write: no temp file left behind


def test_bundle_plan_is_recorded_in_the_manifest(toy_bundle_dir):
    entry = build_bundle_plan(toy_bundle_dir, BuildConfig(module="tensorrt_rtx", compute_capabilities=("SM89",)))
    bundle = Bundle.load(toy_bundle_dir)  # verifies sha256 and size of every file, the plan included
    plans = bundle.files("plan")
    assert [e.path for e in plans] == [entry.path] == ["model.fp32.plan"]
    assert (toy_bundle_dir / entry.path).stat().st_size == entry.bytes > 10_000

    meta = json.loads((toy_bundle_dir / "manifest.json").read_text())["files"][-1]["meta"]
    assert meta["builder"] == {"module": "tensorrt_rtx", "package": "tensorrt-rtx", "version": trt.__version__}
    assert meta["precision"] == "fp32"
    assert meta["compute_capabilities"] == ["SM89"]
    assert meta["flags"] == {"strongly_typed": True, "version_compatible": False, "exclude_lean_runtime": False}
    assert meta["gpu"] is None  # built ahead of time on a CPU
    assert meta["build_seconds"] > 0
    assert meta["source"] == {"path": "model.onnx", "role": "fp32 onnx", "sha256": bundle.entry("fp32 onnx").sha256}
    assert meta["profiles"] == [{
        "axes": {"batch": [1, 1, 8], "height": [16, 64, 256], "width": [16, 64, 256]},
        "shapes": {"image": {"min": [1, 3, 16, 16], "opt": [1, 3, 64, 64], "max": [8, 3, 256, 256]}},
    }]


def test_every_spec_profile_becomes_an_engine_profile(toy):
    path, spec = toy
    two = spec.with_profiles({"batch": (1, 1, 1), "height": (16, 32, 64), "width": (16, 32, 64)},
                             {"batch": (2, 4, 8), "height": (64, 128, 256), "width": (64, 128, 256)})
    result = build(path, two, RTX)
    assert len(result.plan) > 10_000
    shapes = [p["shapes"]["image"] for p in result.meta["profiles"]]
    assert shapes == [{"min": [1, 3, 16, 16], "opt": [1, 3, 32, 32], "max": [1, 3, 64, 64]},
                      {"min": [2, 3, 64, 64], "opt": [4, 3, 128, 128], "max": [8, 3, 256, 256]}]


def test_timing_cache_is_a_reported_noop_under_rtx(toy, tmp_path):
    path, spec = toy
    cache = tmp_path / "timing.cache"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    lg = logging.getLogger("vkt.engines.builder")
    old = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        result = build(path, spec, BuildConfig(module="tensorrt_rtx", timing_cache=cache))
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old)
    assert len(result.plan) > 10_000
    assert result.meta["timing_cache"]["used"] is False
    assert "no-op" in result.meta["timing_cache"]["status"]
    assert not cache.exists()  # nothing pretends to be a cache
    assert any("no-op" in r.getMessage() for r in records)


def test_unbuildable_op_names_node_and_op(nonzero_onnx):
    spec = ExportSpec.from_onnx(nonzero_onnx, profiles=[{"n": (1, 4, 8)}])
    with pytest.raises(BuildError) as e:
        build_engine(nonzero_onnx, spec, RTX)
    assert "'find_nz'" in str(e.value) and "op NonZero" in str(e.value)


@pytest.mark.parametrize("junk", [b"garbage, not onnx\x00\x01\x02",  # protobuf refuses it
                                  b"this is not protobuf \x00\x01\x02\xff" * 10])  # decodes as an empty model
def test_corrupt_onnx_is_a_build_error(tmp_path, toy, junk):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(junk)
    with pytest.raises(BuildError, match="not a readable ONNX model"):
        build_engine(bad, toy[1], RTX)


def test_missing_or_empty_onnx_is_a_model_error(tmp_path, toy):
    with pytest.raises(ModelError, match="not found"):
        build_engine(tmp_path / "nope.onnx", toy[1], RTX)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        build_engine(tmp_path / "empty.onnx", toy[1], RTX)


def test_spec_must_match_the_graph(toy):
    path, spec = toy
    renamed = ExportSpec((TensorSpec("pixels", "float32", ("batch", 3, "height", "width")),), spec.outputs, spec.profiles)
    with pytest.raises(BuildError, match=r"\['image'\].*\['pixels'\]"):
        build_engine(path, renamed, RTX)
    wrong_c = ExportSpec((TensorSpec("image", "float32", ("batch", 4, "height", "width")),), spec.outputs, spec.profiles)
    with pytest.raises(BuildError, match="dim 1: the graph has size 3, the spec 4"):
        build_engine(path, wrong_c, RTX)
    ranged_c = ExportSpec((TensorSpec("image", "float32", ("batch", "c", "height", "width")),), spec.outputs,
                          (Profile({**spec.profiles[0].axes, "c": (1, 3, 4)}),))
    with pytest.raises(BuildError, match="dim 1 is fixed to 3"):
        build_engine(path, ranged_c, RTX)


def test_dynamic_graph_without_profile_is_a_spec_error(toy):
    path, spec = toy
    with pytest.raises(SpecError, match="no shape profile"):
        build_engine(path, spec.with_profiles(), RTX)


def test_compute_capabilities_are_checked(toy):
    path, spec = toy
    with pytest.raises(BuildError, match="cannot target \\['SM90'\\]"):
        build_engine(path, spec, BuildConfig(module="tensorrt_rtx", compute_capabilities=("SM90",)))
    meta = build(path, spec, BuildConfig(module="tensorrt_rtx", compute_capabilities=("8.6", "sm89"))).meta
    assert meta["compute_capabilities"] == ["SM86", "SM89"]


@pytest.mark.skipif(probe()[0] > 0, reason="checks the no-GPU message; this machine has a GPU")
def test_current_compute_capability_needs_a_gpu(toy):
    with pytest.raises(BackendError, match="'CURRENT' targets the GPU of the build machine"):
        build_engine(*toy, BuildConfig(module="tensorrt_rtx", compute_capabilities=("CURRENT",)))


def test_version_compatible_needs_exclude_lean_runtime_under_rtx(toy):
    # tensorrt-rtx from PyPI ships no lean runtime to embed; with EXCLUDE_LEAN_RUNTIME the build works.
    path, spec = toy
    meta = build(path, spec, BuildConfig(module="tensorrt_rtx", version_compatible=True, exclude_lean_runtime=True)).meta
    assert meta["flags"]["version_compatible"] and meta["flags"]["exclude_lean_runtime"]
    try:
        build(path, spec, BuildConfig(module="tensorrt_rtx", version_compatible=True))
    except BuildError as e:
        assert "exclude_lean_runtime" in str(e)


def test_precision_label_must_match_the_source_role(toy_bundle_dir):
    with pytest.raises(InputError, match="does not match the source 'fp32 onnx'"):
        build_bundle_plan(toy_bundle_dir, BuildConfig(module="tensorrt_rtx", precision="int8"))
    with pytest.raises(Exception, match="no 'int8 qdq onnx' file"):
        build_bundle_plan(toy_bundle_dir, RTX, source_role="int8 qdq onnx")


def test_explicit_int8_qdq_graph_builds_and_is_labelled_int8(qdq_onnx, tmp_path):
    from vkt.bundle import BundleWriter

    path, spec = qdq_onnx
    dest = tmp_path / "qdq.vkt"
    with BundleWriter(dest, family="generic", task="tensor") as w:
        w.add_component("model", spec)
        w.add_file(path, "model.int8.onnx", role="int8 qdq onnx")
    entry = build_bundle_plan(dest, RTX, source_role="int8 qdq onnx")
    assert entry.path == "model.int8.plan" and entry.bytes > 1_000
    assert entry.meta["precision"] == "int8" and entry.meta["source"]["role"] == "int8 qdq onnx"
    assert Bundle.load(dest).entry("plan").meta["precision"] == "int8"


def test_static_spec_pins_a_dynamic_graph(toy):
    path, spec = toy
    static = ExportSpec((TensorSpec("image", "float32", (2, 3, 32, 48)),), (TensorSpec("features", "float32", (2, 8, 32, 48)),))
    result = build(path, static, RTX)
    assert len(result.plan) > 10_000
    assert result.meta["profiles"] == [{"axes": {}, "shapes": {"image": {"min": [2, 3, 32, 48], "opt": [2, 3, 32, 48],
                                                                         "max": [2, 3, 32, 48]}}}]


def test_empty_initializer_notice_is_debug_not_a_warning(tmp_path):
    """A Resize with an empty roi initializer (as exporters write it) makes TensorRT-RTX's parser warn "Empty
    initializer ... Overriding data to nullptr": nothing a user can act on, so vkt logs it at debug only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    g = helper.make_graph([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="up", mode="nearest")], "r",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "resize.onnx"
    onnx.save(m, str(path))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    lg = logging.getLogger("vkt.engines")
    old = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.DEBUG)
    try:
        assert len(build(path, ExportSpec.from_onnx(path), RTX).plan) > 1000
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old)
    empty = [r for r in records if "Empty initializer" in r.getMessage()]
    assert empty and all(r.levelno == logging.DEBUG for r in empty)
